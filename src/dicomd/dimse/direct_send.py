"""C-STORE sub-operations of a C-MOVE sent straight on the destination association's socket.

pynetdicom's ``send_c_store`` builds a DIMSE message, queues its P-DATA primitives to the DUL thread,
which runs them through its state machine and writes them; the response PDU is decoded by pydicom, turned
into a primitive and queued back: ~1.6 ms of CPU per sub-operation, the C-MOVE's limit. For an instance
sent as stored (``passthrough.StoredDataSet`` on a context of its own syntax), ``send_stored`` writes the
request's PDUs itself (command set by ``command_set``, data set as stored, fragmented to the peer's
maximum PDU length) and takes the response off the DUL thread as it arrives (``ResponseCatcher``, the
DUL's ``interceptor``): the C-STORE-RSP for that message, in one PDV or several; anything else goes to
pynetdicom as before.
``install()`` has ``reactor.EventDrivenAssociation.send_c_store`` try it first; anything else (another
data set, the acceptor's association of a C-GET, a context that needs a conversion) is pynetdicom's.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset

from dicomd.dimse.command_set import decode_command, encode_command, text_value, uid_value, us_value
from dicomd.dimse.direct import (
    AFFECTED_SOP_CLASS,
    AFFECTED_SOP_INSTANCE,
    COMMAND,
    COMMAND_DATA_SET_TYPE,
    COMMAND_FIELD,
    DATA_SET_PRESENT,
    ERROR_COMMENT,
    LAST,
    MESSAGE_ID,
    MESSAGE_ID_BEING_RESPONDED_TO,
    STATUS,
    iter_message_pdus,
    message_pdus,
    pdv_items,
    text,
    us,
)
from dicomd.dimse.passthrough import StoredDataSet
from dicomd.dimse.reactor import EventDrivenAssociation, EventDrivenDUL

if TYPE_CHECKING:
    from pynetdicom.association import Association

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
PRIORITY = 0x0700
MOVE_ORIGINATOR_AE = 0x1030
MOVE_ORIGINATOR_MESSAGE_ID = 0x1031
ONE_WRITE = 1 << 18  # a request up to this size goes in one write
_WAIT_STEP = 0.05  # how often a wait for a response looks whether the association ended


def encode_store_request(
    sop_class: str,
    sop_instance: str,
    message_id: int,
    priority: int,
    originator_ae: str | None,
    originator_id: int | None,
) -> bytes:
    """A C-STORE-RQ command set (PS3.7 9.3.1.1)."""
    elements = [
        (AFFECTED_SOP_CLASS, uid_value(sop_class)),
        (COMMAND_FIELD, us_value(C_STORE_RQ)),
        (MESSAGE_ID, us_value(message_id)),
        (PRIORITY, us_value(priority)),
        (COMMAND_DATA_SET_TYPE, us_value(DATA_SET_PRESENT)),
        (AFFECTED_SOP_INSTANCE, uid_value(sop_instance)),
    ]
    if originator_ae is not None:
        elements.append((MOVE_ORIGINATOR_AE, text_value(originator_ae)))
    if originator_id is not None:
        elements.append((MOVE_ORIGINATOR_MESSAGE_ID, us_value(originator_id)))
    return encode_command(elements)


class ResponseCatcher:
    """A DUL interceptor that takes the C-STORE-RSP to one request (``reactor.PDataInterceptor``): PDUs of
    command fragments are kept until the command set is whole; if it is not that response, they are
    handed to pynetdicom in the order they came."""

    holds_idle_timer = True  # as pynetdicom's reactor, paused in send_c_store, ignores its idle timer

    def __init__(self, message_id: int) -> None:
        self.message_id = message_id
        self.fields: dict[int, bytes] | None = None
        self.arrived = threading.Event()
        self._held: list[bytearray] = []  # PDUs of a command set under way
        self._command: list[memoryview] = []

    def take(self, dul: EventDrivenDUL, pdu: bytearray) -> bool:
        items = pdv_items(pdu)
        if self.arrived.is_set() or items is None or not all(control & COMMAND for _, control, _ in items):
            return self._give_back(dul, pdu)
        for position, (_, control, fragment) in enumerate(items):
            self._command.append(fragment)
            if control & LAST:
                if position != len(items) - 1:  # (a data set follows in the same PDU: not a response)
                    return self._give_back(dul, pdu)
                self._held.append(pdu)
                return self._completed(dul)
        self._held.append(pdu)
        return True

    def _completed(self, dul: EventDrivenDUL) -> bool:
        fields = decode_command(b"".join(self._command))
        if (
            fields is None
            or us(fields.get(COMMAND_FIELD)) != C_STORE_RSP
            or us(fields.get(MESSAGE_ID_BEING_RESPONDED_TO)) != self.message_id
            or us(fields.get(STATUS)) is None
        ):
            return self._give_back(dul, None)
        self._held.clear()
        self._command.clear()
        self.fields = fields
        self.arrived.set()
        return True

    def _give_back(self, dul: EventDrivenDUL, pdu: bytearray | None) -> bool:
        """Not the response: what was held, then ``pdu``, go to pynetdicom (False: it decodes ``pdu``)."""
        held, self._held, self._command = self._held, [], []
        if not held:
            return False
        for earlier in held:
            dul.hand_over(earlier)
        if pdu is not None:
            dul.hand_over(pdu)
        return True


def _may_send(assoc: Any, dul: Any) -> bool:
    """Only on a requestor's association with nothing of pynetdicom's under way, nor another interceptor."""
    return bool(
        assoc.is_requestor
        and assoc.is_established
        and isinstance(dul, EventDrivenDUL)
        and dul.interceptor is None
        and dul.state_machine.current_state == "Sta6"
        and assoc.dimse.message is None
        and dul.event_queue.empty()
        and dul.to_provider_queue.empty()
        and dul._recv_pdu.empty()
    )


def send_stored(
    assoc: Association,
    dataset: StoredDataSet,
    msg_id: int,
    priority: int,
    originator_aet: str | None,
    originator_id: int | None,
) -> Dataset | None:
    """Send a stored instance as a C-STORE on ``assoc`` and wait for its response: the status data set as
    pynetdicom's ``send_c_store`` returns it; None when this path does not take it (pynetdicom then
    sends it)."""
    sent = send_data_set(
        assoc,
        SubOperation(
            str(dataset.SOPClassUID),
            str(dataset.SOPInstanceUID),
            str(dataset.file_meta.TransferSyntaxUID),
            dataset.__dict__["stored_bytes"],
        ),
        msg_id,
        priority,
        originator_aet,
        originator_id,
    )
    if sent is None:
        return None
    status = Dataset()
    if sent.status is not None:
        status.Status = sent.status
        if sent.comment is not None:
            status.ErrorComment = sent.comment
    return status


@dataclass(frozen=True, slots=True)
class SubOperation:
    """An instance to send as stored: its data set (the stored file after its File Meta Information)."""

    sop_class: str
    sop_instance: str
    transfer_syntax: str
    data_set: bytes | memoryview


@dataclass(frozen=True, slots=True)
class Sent:
    """A C-STORE sub-operation's outcome: the response's status (None: no response, the association
    failed or timed out) and error comment."""

    status: int | None
    comment: str | None = None


def send_data_set(
    assoc: Association,
    instance: SubOperation,
    msg_id: int,
    priority: int,
    originator_aet: str | None,
    originator_id: int | None,
) -> Sent | None:
    """Send ``instance`` as a C-STORE on ``assoc`` (on a context of its own syntax) and wait for the
    response; None when this path does not take it (see ``_may_send``, or no such context)."""
    association: Any = assoc
    dul = association.dul
    syntax = instance.transfer_syntax
    if not _may_send(association, dul):
        return None
    try:
        context = association._get_valid_context(instance.sop_class, syntax, "scu", allow_conversion=False)
    except ValueError:
        return None
    if str(context.transfer_syntax[0]) != syntax:
        return None
    max_pdu = int(association.acceptor.maximum_length or 0)
    command = encode_store_request(
        instance.sop_class, instance.sop_instance, msg_id, priority, originator_aet, originator_id
    )
    data = instance.data_set
    request = b"".join(message_pdus(context.context_id, command, max_pdu, command=True))
    pdus = iter_message_pdus(context.context_id, data, max_pdu, command=False)
    catcher = ResponseCatcher(msg_id)
    # (the association's reactor is not paused, as pynetdicom pauses it: the response never reaches the
    # message queue it takes requests from, and pausing it cost two thread switches per sub-operation; the
    # catcher holds its idle timer instead)
    dul.interceptor = catcher
    try:
        with dul.write_lock:  # the whole message: nothing of the DUL thread's between its PDUs
            if len(data) <= ONE_WRITE:
                sent = dul.write(request + b"".join(pdus))
            else:  # a PDU at a time: no copy of a large instance in memory
                sent = dul.write(request) and all(dul.write(pdu) for pdu in pdus)
        if not sent:
            return Sent(None)  # (the connection is shut: the move's remaining sub-operations fail)
        if not _wait(association, catcher):
            association._handle_no_response()
            return Sent(None)
    finally:
        dul.interceptor = None
    fields = catcher.fields or {}
    comment = fields.get(ERROR_COMMENT)
    return Sent(us(fields.get(STATUS)), None if comment is None else text(comment))


def _wait(assoc: Any, catcher: ResponseCatcher) -> bool:
    """Whether the response arrived before the DIMSE timeout, or the association ended."""
    timeout = assoc.dimse_timeout
    deadline = None if timeout is None else time.monotonic() + float(timeout)
    while not catcher.arrived.wait(_WAIT_STEP):
        if not assoc.is_established or not assoc.dul.is_alive():
            return False
        if deadline is not None and time.monotonic() > deadline:
            return False
    return True


def install() -> None:
    """Have the listener's requestor associations send stored instances this way (idempotent)."""
    EventDrivenAssociation.stored_sender = staticmethod(send_stored)
