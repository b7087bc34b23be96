"""C-STORE requests answered straight from the association's P-DATA-TF PDUs: the listener's hot path.

pynetdicom turns each received PDU into objects, runs it through its state machine and DIMSE provider,
decodes the command set with pydicom, hands the message to the association's thread, builds an event,
encodes the response with pydicom and queues it back to the DUL thread: ~1 ms of CPU per C-STORE,
a third of a one-association ``storescu``'s time per instance here. The DUL thread offers each P-DATA-TF
PDU to ``DirectStore`` first (``reactor.EventDrivenDUL``); it takes the PDUs of a C-STORE request
(command, then data set fragments), stores the data set through ``store.store_request`` (the same
validation, staging, group commit, audit and statuses as pynetdicom's handler) and writes the response
PDU itself, in that thread. The data set fragments stay the received buffers until they are staged.

Only a plain case is taken, and only in state Sta6 with nothing of pynetdicom's under way (no partial
message, no queued PDU or event): a C-STORE-RQ whose command set is one PDV, on an accepted presentation
context, of a storage SOP class, with a data set, and no common extended negotiation. Anything else
(another command, a fragmented command set, a PDU mixing messages) goes to pynetdicom as before. A PDV
of another message before the last fragment of the one taken (PS3.8 9.3.1 forbids interleaving) is an
invalid PDU: the association is aborted, as pynetdicom would.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dicomd.audit.dimse import AssociationRecord, DimseAudit
from dicomd.dimse.command_set import TEXT_PAD, UID_PAD, decode_command, element, padded
from dicomd.dimse.negotiation import STORAGE_SOP_CLASSES
from dicomd.dimse.q_common import error_comment
from dicomd.dimse.reactor import P_DATA_TF, PDU_HEADER
from dicomd.dimse.store import StoreRequest, store_request

if TYPE_CHECKING:
    from pynetdicom.association import Association

    from dicomd.dimse.context import Gateway
    from dicomd.dimse.reactor import EventDrivenDUL

log = logging.getLogger("dicomd.dimse")

_PDV_ITEM = struct.Struct(">LBB")  # item length, presentation context ID, message control header
_US = struct.Struct("<H")
_UL = struct.Struct("<L")
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
C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
NO_DATA_SET = 0x0101
_STORAGE = frozenset(STORAGE_SOP_CLASSES)


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


def _us(value: bytes | None) -> int | None:
    return _US.unpack(value)[0] if value is not None and len(value) == _US.size else None


def _text(value: bytes | None) -> str:
    return value.decode("ascii", "replace").rstrip("\x00 ") if value else ""


def _ascii(text: str) -> bytes:
    return text.encode("ascii", "replace")


def encode_store_response(
    sop_class: str, sop_instance: str, message_id: int, status: int, comment: str | None
) -> bytes:
    """A C-STORE-RSP command set (PS3.7 9.3.1.2), group length first, elements in ascending order."""
    elements = [
        element(AFFECTED_SOP_CLASS, padded(_ascii(sop_class), UID_PAD)),
        element(COMMAND_FIELD, _US.pack(C_STORE_RSP)),
        element(MESSAGE_ID_BEING_RESPONDED_TO, _US.pack(message_id)),
        element(COMMAND_DATA_SET_TYPE, _US.pack(NO_DATA_SET)),
        element(STATUS, _US.pack(status)),
    ]
    if comment is not None:
        elements.append(element(ERROR_COMMENT, padded(_ascii(error_comment(comment)), TEXT_PAD)))
    elements.append(element(AFFECTED_SOP_INSTANCE, padded(_ascii(sop_instance), UID_PAD)))
    body = b"".join(elements)
    return element(0x0000, _UL.pack(len(body))) + body


def command_pdus(context_id: int, command: bytes, max_pdu: int) -> list[bytes]:
    """The P-DATA-TF PDUs of a command set, each within the peer's maximum PDU length (0: none)."""
    room = max_pdu - _PDV_ITEM.size if max_pdu else len(command)
    room = max(room, 1)
    pdus = []
    for start in range(0, len(command), room):
        fragment = command[start : start + room]
        control = COMMAND | (LAST if start + room >= len(command) else 0)
        item = _PDV_ITEM.pack(len(fragment) + 2, context_id, control) + fragment
        pdus.append(PDU_HEADER.pack(P_DATA_TF, 0, len(item)) + item)
    return pdus


def _fragments_of(message: _Message, items: list[tuple[int, int, memoryview]]) -> bool:
    """Whether PDV items are all data set fragments of the message under way."""
    return all(context_id == message.context_id and not control & COMMAND for context_id, control, _ in items)


@dataclass
class _Message:
    """A C-STORE request taken, its data set arriving."""

    context_id: int
    message_id: int
    request: StoreRequest
    fragments: list[memoryview] = field(default_factory=list)


class DirectStore:
    """One association's direct C-STORE path (module docstring): ``reactor.PDataInterceptor``."""

    def __init__(
        self, assoc: Association, record: AssociationRecord, *, gateway: Gateway, audit: DimseAudit
    ) -> None:
        self.assoc = assoc
        self.record = record
        self.gateway = gateway
        self.audit = audit
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
            if message is None or not _fragments_of(message, items):
                return False  # not a plain C-STORE: pynetdicom judges it
            self._message = message
        elif items is None or not _fragments_of(message, items):
            return self._abort(dul, "interleaved another message with a C-STORE's data set")
        for position, (_, control, fragment) in enumerate(items):
            message.fragments.append(fragment)
            if control & LAST:
                self._message = None
                if position != len(items) - 1:  # the next message in the same PDU
                    return self._abort(dul, "sent a PDV after a C-STORE's last fragment")
                self._answer(dul, message)
        return True

    def _abort(self, dul: EventDrivenDUL, what: str) -> bool:
        """An invalid PDU (PS3.8 9.3.1 forbids interleaving messages): pynetdicom aborts the association."""
        log.warning("a DICOM peer %s: aborted", what)
        self._message = None
        dul.event_queue.put("Evt19")
        return True

    def _may_start(self, dul: EventDrivenDUL) -> bool:
        """Only when pynetdicom has nothing of this association under way."""
        assoc: Any = self.assoc
        return bool(
            dul.state_machine.current_state == "Sta6"
            and assoc.dimse.message is None
            and dul.event_queue.empty()
            and dul._recv_pdu.empty()
            and not assoc._sent_release
        )

    def _start(self, context_id: int, command: memoryview) -> _Message | None:
        """The message a command PDV starts, if it is a C-STORE request this path takes."""
        fields = decode_command(command)
        if fields is None or _us(fields.get(COMMAND_FIELD)) != C_STORE_RQ:
            return None
        message_id = _us(fields.get(MESSAGE_ID))
        data_set_type = _us(fields.get(COMMAND_DATA_SET_TYPE))
        if message_id is None or data_set_type is None or data_set_type == NO_DATA_SET:
            return None
        assoc: Any = self.assoc
        context = assoc._accepted_cx.get(context_id)
        # routed by the context's abstract syntax, as pynetdicom routes a request to its service class
        if context is None or str(context.abstract_syntax) not in _STORAGE:
            return None
        if assoc.acceptor.accepted_common_extended:
            return None  # pynetdicom maps the SOP class to its negotiated service class
        request = StoreRequest(
            _text(fields.get(AFFECTED_SOP_CLASS)),
            _text(fields.get(AFFECTED_SOP_INSTANCE)),
            str(context.transfer_syntax[0]),
        )
        return _Message(context_id, message_id, request)

    def _answer(self, dul: EventDrivenDUL, message: _Message) -> None:
        """Store the data set and send the response (in the DUL thread, as pynetdicom's DT-1 would)."""
        request = message.request
        try:
            status, comment = store_request(self.gateway, self.audit, self.record, request, message.fragments)
        finally:
            message.fragments.clear()
        if dul.state_machine.current_state != "Sta6" or dul.socket is None:
            return  # aborted meanwhile
        command = encode_store_response(
            request.sop_class, request.sop_instance, message.message_id, status, comment
        )
        max_pdu = int(self.assoc.requestor.maximum_length or 0)
        for pdu in command_pdus(message.context_id, command, max_pdu):
            dul.socket.send(pdu)
