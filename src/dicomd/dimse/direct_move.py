"""The direct path's C-MOVE (dimse/direct.py): a C-MOVE-RQ on a Query/Retrieve MOVE context is carried out
in the requesting association's DUL thread instead of pynetdicom's C-MOVE service.

pynetdicom's service builds each pending response as a primitive and a pydicom data set of its command
set, queues it through its DIMSE provider and state machine, and hands each sub-operation a pydicom data
set: ~1 ms of CPU per instance, a C-MOVE ran at half Orthanc's rate. Here the selection (retrieve.select,
the QIDO engine), the destination (a configured peer, associated by pynetdicom with the contexts of
retrieve.storage_contexts) and the statuses are the same; each instance sent as stored goes out by
direct_send.send_data_set from its stored bytes (no data set object), one that needs a conversion through
retrieve.load_for_sending and pynetdicom's send_c_store as before; each response's command set is written
here (``encode_move_response``), identical to what pynetdicom's service sends for the same request (tested
side by side). Each sub-operation names the AE that asked for the move as its Move Originator (PS3.7
9.3.1.1; pynetdicom's service would name this one: retrieve.handle_move corrects it there too). A
C-CANCEL-RQ is read between sub-operations. An identifier that cannot be processed is answered without
associating with the destination first (pynetdicom's service connects before its handler can refuse).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pynetdicom import build_context, evt
from pynetdicom.dsutils import encode
from pynetdicom.status import STATUS_FAILURE, STATUS_SUCCESS, STATUS_WARNING, STORAGE_SERVICE_CLASS_STATUS

from dicomd.audit.dimse import DimseAudit
from dicomd.dimse.client import tune_requested_socket
from dicomd.dimse.command_set import encode_command, text_value, uid_value, us_value
from dicomd.dimse.direct import (
    AFFECTED_SOP_CLASS,
    COMMAND_DATA_SET_TYPE,
    COMMAND_FIELD,
    DATA_SET_PRESENT,
    ERROR_COMMENT,
    IDENTIFIER_SYNTAXES,
    MESSAGE_ID_BEING_RESPONDED_TO,
    NO_DATA_SET,
    STATUS,
    PeerWatch,
    Request,
    RequestIdentifier,
    message_pdus,
    send_pdus,
    text,
)
from dicomd.dimse.direct_send import SubOperation, send_data_set
from dicomd.dimse.operations import query_keys
from dicomd.dimse.passthrough import data_set_of, stored_data_set
from dicomd.dimse.q_common import (
    CANCELLED,
    MOVE_DESTINATION_UNKNOWN,
    MOVE_MODELS,
    SUCCESS,
    error_comment,
)
from dicomd.dimse.q_syntax import choose_syntax
from dicomd.dimse.retrieve import (
    VERIFICATION,
    accepted_syntaxes,
    is_failed_marker,
    load_for_sending,
    log_unparsable,
    reactor_resumed,
    read_stored,
    select,
    storage_contexts,
)

if TYPE_CHECKING:
    from pynetdicom.association import Association

    from dicomd.dimse.context import Gateway
    from dicomd.dimse.reactor import EventDrivenDUL
    from dicomd.index.types import StoredInstance

log = logging.getLogger("dicomd.dimse")

C_MOVE_RQ = 0x0021
C_MOVE_RSP = 0x8021
MOVE_DESTINATION = 0x0600
REMAINING, COMPLETED, FAILED, WARNING = 0x1020, 0x1021, 0x1022, 0x1023
PENDING = 0xFF00
ALL_FAILED = 0xA702
SOME_FAILED = 0xB000
TOO_MANY_SUB_OPERATIONS = 0xC516  # pynetdicom's status: the counts are US, at most 65,535
MAX_SUB_OPERATIONS = 0xFFFF
SUB_OPERATION_PRIORITY = 2  # what pynetdicom's service gives each C-STORE (PS3.7: low)
_OPERATION = "C-MOVE"


def encode_move_response(
    sop_class: str,
    message_id: int,
    status: int,
    comment: str | None,
    counts: list[tuple[int, int]],
    *,
    data: bool,
) -> bytes:
    """A C-MOVE-RSP command set (PS3.7 9.3.4.2): ``counts`` as (element, number), ascending."""
    elements = [
        (AFFECTED_SOP_CLASS, uid_value(sop_class)),
        (COMMAND_FIELD, us_value(C_MOVE_RSP)),
        (MESSAGE_ID_BEING_RESPONDED_TO, us_value(message_id)),
        (COMMAND_DATA_SET_TYPE, us_value(DATA_SET_PRESENT if data else NO_DATA_SET)),
        (STATUS, us_value(status)),
    ]
    if comment is not None:
        elements.append((ERROR_COMMENT, text_value(error_comment(comment))))
    elements += [(element, us_value(number)) for element, number in counts]
    return encode_command(elements)


@dataclass
class Tally:
    """The sub-operations' counts, as the responses report them."""

    remaining: int | None = None  # reported from the first pending response on
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)

    def counts(self) -> list[tuple[int, int]]:
        remaining = [] if self.remaining is None else [(REMAINING, self.remaining)]
        return [*remaining, (COMPLETED, self.completed), (FAILED, self.failed), (WARNING, self.warning)]

    def note(self, status: int | None, sop_instance: str) -> None:
        """A sub-operation's C-STORE status (None: it was not sent, or got no response)."""
        category = None if status is None else STORAGE_SERVICE_CLASS_STATUS.get(status, (STATUS_FAILURE,))[0]
        if category == STATUS_SUCCESS:
            self.completed += 1
        elif category == STATUS_WARNING:
            self.warning += 1
        else:  # PS3.4 C.4.2.1.4.2: listed in the final response
            self.failed += 1
            self.failed_uids.append(sop_instance)
        if self.remaining is not None:
            self.remaining -= 1


@dataclass
class _Final:
    status: int
    tally: Tally | None = None  # None: the status alone
    comment: str | None = None
    failed_list: bool = False  # the identifier with the Failed SOP Instance UID List


@dataclass
class DirectMove:
    """One C-MOVE request taken by the direct path."""

    gateway: Gateway
    audit: DimseAudit
    sop_class: str
    implicit: bool  # the identifiers' syntax: implicit (else explicit) VR little endian
    destination: str

    def answer(self, dul: EventDrivenDUL, request: Request, data_set: list[memoryview]) -> None:
        """Carry out the move and send its responses, then write its audit event (as pynetdicom's
        service with ``operations.audited_operation`` would; none when the association ends first)."""
        started = time.time()
        record = request.record
        record.count(_OPERATION)
        identifier_of = RequestIdentifier(b"".join(data_set), self.implicit)
        keys = query_keys(identifier_of)
        try:
            final = self._move(dul, request, identifier_of)
        except Exception:
            log.exception("C-MOVE: the direct path failed")
            final = _Final(0xC511)  # pynetdicom's status when its handler raised
        if final is None or not self._respond(dul, request, final):
            return
        facts: dict[str, Any] = {"sop_class": self.sop_class, "query": keys, "sub_operations": {}}
        if final.tally is not None:
            tally = final.tally
            facts["sub_operations"] = {
                "completed": tally.completed,
                "failed": tally.failed,
                "warning": tally.warning,
            }
        self.audit.operation(record, _OPERATION, final.status, started, **facts)

    def _move(self, dul: EventDrivenDUL, request: Request, identifier_of: RequestIdentifier) -> _Final | None:
        """The sub-operations, then the final response (None: the requestor went away meanwhile)."""
        address = self.gateway.peers.get(self.destination)
        if address is None:
            log.warning("C-MOVE refused: the destination AE is not a configured peer")
            return _Final(MOVE_DESTINATION_UNKNOWN)
        selection = select(identifier_of, self.sop_class, self.gateway)
        if selection.error is not None:  # as pynetdicom answers it: its one announced sub-operation failed
            error = selection.error
            return _Final(error.status, Tally(failed=1), error.comment, failed_list=True)
        instances = selection.instances
        if not instances:
            return _Final(SUCCESS, Tally())
        if len(instances) > MAX_SUB_OPERATIONS:
            log.error("C-MOVE: more than %d instances selected", MAX_SUB_OPERATIONS)
            return _Final(TOO_MANY_SUB_OPERATIONS)
        store_assoc = self._associate(request, address, instances)
        if store_assoc is None:
            return _Final(MOVE_DESTINATION_UNKNOWN)
        try:
            return self._sub_operations(dul, request, store_assoc, instances)
        finally:
            store_assoc.release()

    def _associate(
        self, request: Request, address: tuple[str, int], instances: list[StoredInstance]
    ) -> Association | None:
        """The association with the destination; None (logged) when it was not accepted."""
        host, port = address
        contexts = [build_context(VERIFICATION), *storage_contexts(instances)]
        try:
            store_assoc = request.assoc.ae.associate(
                host,
                port,
                ae_title=self.destination,
                contexts=contexts,
                evt_handlers=[(evt.EVT_CONN_OPEN, tune_requested_socket)],
            )
        except Exception as exc:
            log.error("C-MOVE: associating with the destination failed (%s)", type(exc).__name__)
            return None
        if store_assoc.is_established:
            return store_assoc  # type: ignore[no-any-return]
        log.error("C-MOVE: the destination did not accept an association")
        return None

    def _sub_operations(
        self, dul: EventDrivenDUL, request: Request, store_assoc: Association, instances: list[StoredInstance]
    ) -> _Final | None:
        watch = PeerWatch(dul, request.message_id)
        accepted = accepted_syntaxes(store_assoc)
        originator = str(request.assoc.requestor.ae_title).strip()
        resumed = reactor_resumed(store_assoc)
        tally = Tally(remaining=len(instances))
        for position, instance in enumerate(instances):
            if watch.is_cancelled():
                return _Final(CANCELLED, tally, failed_list=True)
            if watch.gone:
                return None
            message_id = request.message_id + position + 1
            if message_id > MAX_SUB_OPERATIONS:
                message_id -= MAX_SUB_OPERATIONS
            status = self._send(store_assoc, instance, accepted, message_id, originator, request, resumed)
            tally.note(status, instance.sop_instance_uid)
            if watch.gone or not self._respond(dul, request, _Final(PENDING, tally)):
                return None
        if tally.failed == len(instances):
            return _Final(ALL_FAILED, tally, failed_list=True)
        if tally.failed or tally.warning:
            return _Final(SOME_FAILED, tally, failed_list=True)
        return _Final(SUCCESS, tally)

    def _send(
        self,
        store_assoc: Association,
        instance: StoredInstance,
        accepted: dict[str, set[str]],
        message_id: int,
        originator: str,
        request: Request,
        resumed: Any,
    ) -> int | None:
        """One sub-operation: the C-STORE response's status, None when it failed before or without one."""
        stored = instance.transfer_syntax_uid
        if choose_syntax(stored, accepted.get(instance.sop_class_uid, ())) == stored:
            data = read_stored(self.gateway, instance, _OPERATION)
            if data is None:
                return None
            try:
                data_set = data_set_of(data)
            except Exception as exc:
                log_unparsable(exc, _OPERATION)
                return None
            sub_operation = SubOperation(instance.sop_class_uid, instance.sop_instance_uid, stored, data_set)
            sent = send_data_set(
                store_assoc, sub_operation, message_id, SUB_OPERATION_PRIORITY, originator, request.message_id
            )
            if sent is not None:
                return sent.status
            uids = (instance.sop_class_uid, instance.sop_instance_uid)
            dataset: Dataset = stored_data_set(data, *uids, stored)
        else:  # converted (or no accepted context: a failed marker, reason logged)
            dataset = load_for_sending(self.gateway, instance, accepted, _OPERATION)
            if is_failed_marker(dataset):
                return None
        resumed()  # (pynetdicom's send_c_store after another: see retrieve.reactor_resumed)
        try:
            response = store_assoc.send_c_store(
                dataset, msg_id=message_id, originator_aet=originator, originator_id=request.message_id
            )
            return int(response.Status)
        except Exception as exc:  # no response (aborted, timed out): a failed sub-operation
            log.warning("C-MOVE: a C-STORE sub-operation failed (%s)", type(exc).__name__)
            return None

    def _respond(self, dul: EventDrivenDUL, request: Request, final: _Final) -> bool:
        """Send a response; False when it could not go (the association ended)."""
        identifier = None
        if final.failed_list:
            listed = Dataset()
            listed.FailedSOPInstanceUIDList = final.tally.failed_uids if final.tally is not None else []
            identifier = encode(listed, self.implicit, True, False)
        counts = final.tally.counts() if final.tally is not None else []
        data = identifier is not None
        command = encode_move_response(
            self.sop_class, request.message_id, final.status, final.comment, counts, data=data
        )
        pdus = message_pdus(request.context_id, command, request.max_pdu, command=True)
        if identifier is not None:
            pdus += message_pdus(request.context_id, identifier, request.max_pdu, command=False)
        return send_pdus(dul, pdus)


def start_move(request: Request, gateway: Gateway, audit: DimseAudit) -> DirectMove | None:
    """A C-MOVE-RQ on a Query/Retrieve MOVE context with a Move Destination, whose identifier is in
    implicit or explicit VR little endian."""
    context = request.context
    implicit = IDENTIFIER_SYNTAXES.get(str(context.transfer_syntax[0]))
    if str(context.abstract_syntax) not in MOVE_MODELS or implicit is None:
        return None
    sop_class = text(request.fields.get(AFFECTED_SOP_CLASS))
    destination = text(request.fields.get(MOVE_DESTINATION)).strip()
    if not sop_class or not destination:
        return None  # pynetdicom answers a request without them
    return DirectMove(gateway, audit, sop_class, implicit, destination)
