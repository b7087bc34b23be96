"""Requests answered straight from the association's P-DATA-TF PDUs: the listener's hot path.

pynetdicom turns each received PDU into objects, runs it through its state machine and DIMSE provider,
decodes the command set with pydicom, hands the message to the association's thread, builds an event,
encodes each response with pydicom and queues it back to the DUL thread: ~1 ms of CPU per C-STORE,
a third of a one-association ``storescu``'s time per instance here, and most of a C-FIND's latency. The
DUL thread offers each P-DATA-TF PDU to ``DirectPath`` first (``reactor.EventDrivenDUL``); it takes the
PDUs of a request it answers itself (command, then data set fragments) and answers it in that thread,
writing the response PDUs itself: a C-STORE (dimse/direct_store.py) and a C-FIND (dimse/direct_find.py),
with the same handling, statuses and audit as pynetdicom's handlers. The data set fragments stay the
received buffers until they are used.

Only a plain case is taken, and only in state Sta6 with nothing of pynetdicom's under way (no partial
message, no queued PDU or event): a request whose command set is one PDV, on an accepted presentation
context of the operation's SOP classes, with a data set, and no common extended negotiation. Anything else
(another command, a fragmented command set, a PDU mixing messages) goes to pynetdicom as before. A PDV
of another message before the last fragment of the one taken (PS3.8 9.3.1 forbids interleaving) is an
invalid PDU: the association is aborted, as pynetdicom would.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from typing import TYPE_CHECKING, Any, Protocol

from pynetdicom.dsutils import decode

from dicomd.audit.dimse import AssociationRecord, DimseAudit
from dicomd.dimse.command_set import decode_command
from dicomd.dimse.q_syntax import EXPLICIT_LE, IMPLICIT_LE
from dicomd.dimse.reactor import P_DATA_TF, PDU_HEADER

if TYPE_CHECKING:
    from pydicom.dataset import Dataset
    from pynetdicom.association import Association
    from pynetdicom.presentation import PresentationContext

    from dicomd.dimse.context import Gateway
    from dicomd.dimse.reactor import EventDrivenDUL

log = logging.getLogger("dicomd.dimse")

_PDV_ITEM = struct.Struct(">LBB")  # item length, presentation context ID, message control header
_US = struct.Struct("<H")
COMMAND = 0x01  # message control header: a command fragment (else a data set fragment)
LAST = 0x02  # message control header: the last fragment of the command or data set

# command set elements (group 0000, PS3.7 E.1)
AFFECTED_SOP_CLASS = 0x0002
COMMAND_FIELD = 0x0100
MESSAGE_ID = 0x0110
MESSAGE_ID_BEING_RESPONDED_TO = 0x0120
COMMAND_DATA_SET_TYPE = 0x0800
STATUS = 0x0900
ERROR_COMMENT = 0x0902
AFFECTED_SOP_INSTANCE = 0x1000
NO_DATA_SET = 0x0101
DATA_SET_PRESENT = 0x0001  # (any other value says so; pynetdicom writes this one)


# the identifier syntaxes the direct paths decode (implicit VR?); others are left to pynetdicom
IDENTIFIER_SYNTAXES = {IMPLICIT_LE: True, EXPLICIT_LE: False}


class RequestIdentifier:
    """A request's identifier, decoded when first asked for (as pynetdicom's ``event.identifier``)."""

    def __init__(self, raw: bytes, implicit: bool) -> None:
        self.raw = raw
        self.implicit = implicit
        self._decoded: Dataset | None = None

    def __call__(self) -> Dataset:
        if self._decoded is None:
            ds = decode(BytesIO(self.raw), self.implicit, True, False)
            ds.set_original_encoding(self.implicit, True)
            self._decoded = ds
        return self._decoded


def pdv_items(pdu: bytes | bytearray | memoryview) -> list[tuple[int, int, memoryview]] | None:
    """The (context ID, control header, value) of each PDV item of a P-DATA-TF PDU (header included);
    None when the items do not add up to the PDU (pynetdicom then judges it)."""
    view = memoryview(pdu)
    items = []
    position = PDU_HEADER.size
    end = len(view)
    while position < end:
        if position + _PDV_ITEM.size > end:
            return None
        length, context_id, control = _PDV_ITEM.unpack_from(view, position)
        if length < 2 or position + 4 + length > end:
            return None
        items.append((context_id, control, view[position + _PDV_ITEM.size : position + 4 + length]))
        position += 4 + length
    return items or None


def us(value: bytes | None) -> int | None:
    """A command set's US value (None when absent or not two bytes)."""
    return _US.unpack(value)[0] if value is not None and len(value) == _US.size else None


def text(value: bytes | None) -> str:
    """A command set's text value, without its padding."""
    return value.decode("ascii", "replace").rstrip("\x00 ") if value else ""


# the largest fragment sent, whatever the peer's maximum PDU length (0: none): one PDU per instance would
# copy it whole, make its write one long blocking call, and overflow the PDU length field beyond 4 GiB
MAX_FRAGMENT = 1 << 20


def iter_message_pdus(
    context_id: int, data: bytes | memoryview, max_pdu: int, *, command: bool
) -> Iterator[bytes]:
    """The P-DATA-TF PDUs of a command set or a data set, each within the peer's maximum PDU length
    (0: none) and with fragments of at most 1 MiB, fragmented as pynetdicom fragments them; made one at a
    time (a data set may be large)."""
    room = min(max_pdu - _PDV_ITEM.size, MAX_FRAGMENT) if max_pdu else MAX_FRAGMENT
    room = max(room, 1)
    kind = COMMAND if command else 0
    view = memoryview(data)
    for start in range(0, len(data), room):
        fragment = view[start : start + room]
        control = kind | (LAST if start + room >= len(data) else 0)
        item_header = _PDV_ITEM.pack(len(fragment) + 2, context_id, control)
        yield PDU_HEADER.pack(P_DATA_TF, 0, len(item_header) + len(fragment)) + item_header + fragment


def message_pdus(context_id: int, data: bytes, max_pdu: int, *, command: bool) -> list[bytes]:
    """``iter_message_pdus`` as a list."""
    return list(iter_message_pdus(context_id, data, max_pdu, command=command))


def command_pdus(context_id: int, command: bytes, max_pdu: int) -> list[bytes]:
    """The P-DATA-TF PDUs of a command set."""
    return message_pdus(context_id, command, max_pdu, command=True)


@dataclass(frozen=True)
class Request:
    """A request the direct path took, as its answer sees it."""

    assoc: Any  # pynetdicom's Association
    record: AssociationRecord
    context_id: int
    message_id: int
    fields: dict[int, bytes]  # the command set: element number -> value
    context: PresentationContext

    @property
    def max_pdu(self) -> int:
        """The largest PDU the peer takes (0: no limit)."""
        return int(self.assoc.requestor.maximum_length or 0)


class Operation(Protocol):
    """What answers one kind of request: built from the request's command, then given its data set."""

    def answer(self, dul: EventDrivenDUL, request: Request, data_set: list[memoryview]) -> None:
        """Answer the request (in the DUL thread), writing the response PDUs to ``dul.socket``."""
        ...


# a request's operation, from its command set and context: None leaves the request to pynetdicom
Starter = Callable[["Request", "Gateway", DimseAudit], "Operation | None"]


def interleaved(items: list[tuple[int, int, memoryview]], context_id: int) -> bool:
    """Whether PDV items are not all data set fragments on ``context_id``."""
    return not all(cid == context_id and not control & COMMAND for cid, control, _ in items)


@dataclass
class _Message:
    """A request taken, its data set arriving."""

    request: Request
    operation: Operation
    fragments: list[memoryview] = field(default_factory=list)


class DirectPath:
    """One association's direct path (module docstring): ``reactor.PDataInterceptor``."""

    # idle between requests is the peer's: pynetdicom's network timeout applies (while a request is
    # answered, the DUL's ``answering`` holds the timer)
    holds_idle_timer = False

    def __init__(
        self,
        assoc: Association,
        record: AssociationRecord,
        *,
        gateway: Gateway,
        audit: DimseAudit,
        starters: dict[int, Starter],
    ) -> None:
        self.assoc = assoc
        self.record = record
        self.gateway = gateway
        self.audit = audit
        self.starters = starters  # command field -> the starter of its operation
        self._message: _Message | None = None

    def take(self, dul: EventDrivenDUL, pdu: bytearray) -> bool:
        items = pdv_items(pdu)
        message = self._message
        if message is None:
            if items is None or not self._may_start(dul):
                return False
            context_id, control, command = items[0]
            message = self._start(context_id, command) if control == COMMAND | LAST else None
            items = items[1:]
            if message is None or interleaved(items, message.request.context_id):
                return False  # not a plain request this path takes: pynetdicom judges it
            self._message = message
        elif items is None or interleaved(items, message.request.context_id):
            return self._abort(dul, "interleaved another message with a request's data set")
        for position, (_, control, fragment) in enumerate(items):
            message.fragments.append(fragment)
            if control & LAST:
                self._message = None
                if position != len(items) - 1:  # the next message in the same PDU
                    return self._abort(dul, "sent a PDV after a request's last fragment")
                self._answer(dul, message)
        return True

    def _abort(self, dul: EventDrivenDUL, what: str) -> bool:
        """An invalid PDU (PS3.8 9.3.1 forbids interleaving messages): pynetdicom aborts the association."""
        log.warning("a DICOM peer %s: aborted", what)
        self._message = None
        dul.event_queue.put("Evt19")
        return True

    def _may_start(self, dul: EventDrivenDUL) -> bool:
        """Only when pynetdicom has nothing of this association under way: nothing received that it has
        not acted on, no request it serves, nothing it is to send (a response written here between the
        fragments of one of its messages would break the stream)."""
        assoc: Any = self.assoc
        return bool(
            dul.state_machine.current_state == "Sta6"
            and assoc.dimse.message is None
            and dul.event_queue.empty()
            and dul._recv_pdu.empty()
            and dul.to_provider_queue.empty()
            and assoc.dimse.msg_queue.empty()
            and not getattr(assoc, "serving", False)
            and not assoc._sent_release
        )

    def _start(self, context_id: int, command: memoryview) -> _Message | None:
        """The message a command PDV starts, if it is a request this path takes."""
        fields = decode_command(command)
        if fields is None:
            return None
        starter = self.starters.get(us(fields.get(COMMAND_FIELD)) or 0)
        message_id = us(fields.get(MESSAGE_ID))
        data_set_type = us(fields.get(COMMAND_DATA_SET_TYPE))
        if starter is None or message_id is None or data_set_type is None or data_set_type == NO_DATA_SET:
            return None
        assoc: Any = self.assoc
        context = assoc._accepted_cx.get(context_id)
        if context is None or assoc.acceptor.accepted_common_extended:
            return None  # (pynetdicom maps SOP classes to their negotiated service classes)
        request = Request(assoc, self.record, context_id, message_id, fields, context)
        operation = starter(request, self.gateway, self.audit)
        return None if operation is None else _Message(request, operation)

    def _answer(self, dul: EventDrivenDUL, message: _Message) -> None:
        dul.answering = True  # (the reactor restarts the idle timer once this returns)
        try:
            message.operation.answer(dul, message.request, message.fragments)
        finally:
            dul.answering = False
            message.fragments.clear()


C_CANCEL_RQ = 0x0FFF
_A_ABORT = 0x07
# PDUs a peer may send while its request is answered before the association is aborted: without an
# asynchronous operations window (never negotiated here) it may send only a C-CANCEL (and a release or an
# abort); each other PDU waits, decoded, for pynetdicom until the answer ends
MAX_PDUS_WHILE_ANSWERED = 16


def is_cancel_of(pdu: bytearray, message_id: int) -> bool:
    """Whether a PDU is a C-CANCEL-RQ (one PDV, its whole command set) for request ``message_id``."""
    items = pdv_items(pdu) if pdu[0] == P_DATA_TF else None
    if items is None or len(items) != 1 or items[0][1] != COMMAND | LAST:
        return False
    fields = decode_command(items[0][2])
    return (
        fields is not None
        and us(fields.get(COMMAND_FIELD)) == C_CANCEL_RQ
        and us(fields.get(MESSAGE_ID_BEING_RESPONDED_TO)) == message_id
    )


@dataclass
class PeerWatch:
    """What the peer sent while a request is answered in the DUL thread (read between its responses): a
    C-CANCEL-RQ for the request, or the end of the association; anything else is handed to pynetdicom,
    which acts on it once the request is answered (an A-RELEASE-RQ too: as with pynetdicom's services,
    the answer is completed first, PS3.8 state Sta8 allows it)."""

    dul: EventDrivenDUL
    message_id: int
    cancelled: bool = False
    gone: bool = False  # it aborted or closed, or sent too much: no more responses
    _handed: int = 0

    def is_cancelled(self) -> bool:
        while not (self.cancelled or self.gone) and self.dul.peer_sent():
            self.note(self.dul.read_pdu())
        return self.cancelled

    def note(self, pdu: bytearray | None) -> None:
        """A PDU read from the peer while its request is answered (None: it could not be read)."""
        if pdu is None:
            self.gone = True  # (its event is queued: pynetdicom ends the association)
        elif is_cancel_of(pdu, self.message_id):
            self.cancelled = True
        elif self._handed >= MAX_PDUS_WHILE_ANSWERED:
            log.warning("a DICOM peer sent too many PDUs while its request was answered: aborted")
            self.dul.event_queue.put("Evt19")  # as an invalid PDU: pynetdicom aborts the association
            self.gone = True
        else:
            self._handed += 1
            self.dul.hand_over(pdu)
            self.gone = pdu[0] == _A_ABORT


def send_pdus(dul: EventDrivenDUL, pdus: list[bytes]) -> bool:
    """Write PDUs to the association's socket; False when it was aborted meanwhile or the write failed
    (the connection is then shut: see EventDrivenDUL.write)."""
    if dul.state_machine.current_state != "Sta6":
        return False
    return dul.write(b"".join(pdus) if len(pdus) > 1 else pdus[0])
