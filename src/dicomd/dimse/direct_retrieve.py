"""The direct path's C-MOVE and C-GET (dimse/direct.py): a C-MOVE-RQ or C-GET-RQ on a Query/Retrieve MOVE or
GET context is carried out in the requesting association's DUL thread instead of pynetdicom's services.

pynetdicom's services build each pending response as a primitive and a pydicom data set of its command
set, queue it through their DIMSE provider and state machine, and hand each sub-operation a pydicom data
set: ~1 ms of CPU per instance, and a C-MOVE ran at half Orthanc's rate. Here the selection
(retrieve.select, the QIDO engine) and the statuses are the same; each response's command set is written
here (``encode_retrieve_response``), identical to what pynetdicom's service sends for the same request
(tested side by side). A C-CANCEL-RQ is acted on between sub-operations. An identifier that cannot be
processed is answered before anything is sent (pynetdicom's C-MOVE service connects to the destination
before its handler can refuse).

- C-MOVE: the destination is a configured peer, associated by pynetdicom with the contexts of
  retrieve.storage_contexts. An instance the destination accepts as stored goes out by
  direct_send.send_data_set from its stored bytes (no data set object); one that needs a conversion through
  retrieve.load_for_sending (explicit to implicit VR by rewriting element headers, as bytes that
  send_data_set sends too; anything else by pydicom or the pixel services) and pynetdicom's
  send_c_store. Each sub-operation names the AE that asked for the move as its Move Originator (PS3.7
  9.3.1.1; pynetdicom's service would name this one: retrieve.handle_move corrects it there too). Once
  the destination's association has ended, the remaining sub-operations fail at once, unsent (pynetdicom's
  service attempts, fails and logs each).
- C-GET: the sub-operations go on the requesting association, in the storage contexts it proposed with the
  SCP role, written here (a converted instance as load_for_sending gives it: rewritten bytes, or encoded
  by pydicom), and their responses are read here too: this thread is the association's reader.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydicom.dataset import Dataset
from pydicom.uid import UID
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
    is_cancel_of,
    iter_message_pdus,
    message_pdus,
    send_pdus,
    text,
    us,
)
from dicomd.dimse.direct_send import (
    ONE_WRITE,
    ResponseCatcher,
    SubOperation,
    encode_store_request,
    send_data_set,
)
from dicomd.dimse.operations import query_keys
from dicomd.dimse.passthrough import data_set_of, stored_data_set
from dicomd.dimse.q_common import (
    CANCELLED,
    GET_MODELS,
    MOVE_DESTINATION_UNKNOWN,
    MOVE_MODELS,
    SUCCESS,
    error_comment,
)
from dicomd.dimse.q_syntax import choose_syntax
from dicomd.dimse.reactor import P_DATA_TF
from dicomd.dimse.retrieve import (
    VERIFICATION,
    accepted_syntaxes,
    is_failed_marker,
    load_for_sending,
    log_no_context,
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

C_GET_RQ, C_GET_RSP = 0x0010, 0x8010
C_MOVE_RQ, C_MOVE_RSP = 0x0021, 0x8021
MOVE_DESTINATION = 0x0600
REMAINING, COMPLETED, FAILED, WARNING = 0x1020, 0x1021, 0x1022, 0x1023
PENDING = 0xFF00
ALL_FAILED = 0xA702
SOME_FAILED = 0xB000
MAX_SUB_OPERATIONS = 0xFFFF  # the counts are US
SUB_OPERATION_PRIORITY = 2  # what pynetdicom's services give each C-STORE (PS3.7: low)


def encode_retrieve_response(
    command_field: int,
    sop_class: str,
    message_id: int,
    status: int,
    comment: str | None,
    counts: list[tuple[int, int]],
    *,
    data: bool,
) -> bytes:
    """A C-MOVE-RSP or C-GET-RSP command set (PS3.7 9.3.4.2, 9.3.3.2): ``counts`` as (element, number),
    ascending."""
    elements = [
        (AFFECTED_SOP_CLASS, uid_value(sop_class)),
        (COMMAND_FIELD, us_value(command_field)),
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
        """A sub-operation's C-STORE status (None: it was not sent, or got no response). Any status that is
        not a storage success or warning is a failure, listed (pynetdicom's services count a C-STORE
        response of Cancel 0xFE00 nowhere: an instance neither sent nor left)."""
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


# one sub-operation: the C-STORE response's status, None when it failed before or without one
Send = Callable[["StoredInstance", int], "int | None"]


@dataclass
class _Retrieve(ABC):
    """One C-MOVE or C-GET request taken by the direct path (what both share)."""

    gateway: Gateway
    audit: DimseAudit
    sop_class: str
    implicit: bool  # the identifiers' syntax: implicit (else explicit) VR little endian

    operation: ClassVar[str]
    response_field: ClassVar[int]
    handler_failed: ClassVar[int]  # pynetdicom's status when its handler raised
    too_many: ClassVar[int]  # pynetdicom's status for more than 65,535 sub-operations

    def answer(self, dul: EventDrivenDUL, request: Request, data_set: list[memoryview]) -> None:
        """Carry out the retrieve and send its responses, then write its audit event (as pynetdicom's
        service with ``operations.audited_operation`` would; none when the association ends first)."""
        started = time.time()
        record = request.record
        record.count(self.operation)
        identifier_of = RequestIdentifier(b"".join(data_set), self.implicit)
        keys = query_keys(identifier_of)
        try:
            final = self._retrieve(dul, request, identifier_of)
        except Exception:
            log.exception("%s: the direct path failed", self.operation)
            final = _Final(self.handler_failed)
        if final is None or not self._respond(dul, request, final):
            return
        tally = final.tally
        counts = (
            {}
            if tally is None
            else {"completed": tally.completed, "failed": tally.failed, "warning": tally.warning}
        )
        facts: dict[str, Any] = {"sop_class": self.sop_class, "query": keys, "sub_operations": counts}
        self.audit.operation(record, self.operation, final.status, started, **facts)

    @abstractmethod
    def _retrieve(
        self, dul: EventDrivenDUL, request: Request, identifier_of: RequestIdentifier
    ) -> _Final | None:
        """The sub-operations, then the final response (None: the requestor went away meanwhile)."""

    def _selected(self, identifier_of: RequestIdentifier) -> list[StoredInstance] | _Final:
        """The instances to send, or the final response that refuses the request."""
        selection = select(identifier_of, self.sop_class, self.gateway)
        if selection.error is not None:  # as pynetdicom answers it: its one announced sub-operation failed
            error = selection.error
            return _Final(error.status, Tally(failed=1), error.comment, failed_list=True)
        instances = selection.instances
        if not instances:
            return _Final(SUCCESS, Tally())
        if len(instances) > MAX_SUB_OPERATIONS:
            log.error("%s: more than %d instances selected", self.operation, MAX_SUB_OPERATIONS)
            return _Final(self.too_many)
        return instances

    def _sub_operations(
        self,
        dul: EventDrivenDUL,
        request: Request,
        watch: PeerWatch,
        instances: list[StoredInstance],
        send: Send,
        destination_lost: Callable[[], bool] = lambda: False,
    ) -> _Final | None:
        tally = Tally(remaining=len(instances))
        for position, instance in enumerate(instances):
            if watch.is_cancelled():
                return _Final(CANCELLED, tally, failed_list=True)
            if watch.gone:
                return None
            if destination_lost():  # the rest fail at once: no instance read, no attempt, one log line
                log.warning(
                    "%s: the destination's association ended; %d sub-operations failed unsent",
                    self.operation,
                    len(instances) - position,
                )
                for unsent in instances[position:]:
                    tally.note(None, unsent.sop_instance_uid)
                break
            message_id = request.message_id + position + 1
            if message_id > MAX_SUB_OPERATIONS:
                message_id -= MAX_SUB_OPERATIONS
            tally.note(send(instance, message_id), instance.sop_instance_uid)
            if watch.gone or not self._respond(dul, request, _Final(PENDING, tally)):
                return None
        if tally.failed == len(instances):
            return _Final(ALL_FAILED, tally, failed_list=True)
        if tally.failed or tally.warning:
            return _Final(SOME_FAILED, tally, failed_list=True)
        return _Final(SUCCESS, tally)

    def _respond(self, dul: EventDrivenDUL, request: Request, final: _Final) -> bool:
        """Send a response; False when it could not go (the association ended)."""
        identifier = None
        if final.failed_list:
            listed = Dataset()
            listed.FailedSOPInstanceUIDList = final.tally.failed_uids if final.tally is not None else []
            identifier = encode(listed, self.implicit, True, False)
        counts = final.tally.counts() if final.tally is not None else []
        command = encode_retrieve_response(
            self.response_field,
            self.sop_class,
            request.message_id,
            final.status,
            final.comment,
            counts,
            data=identifier is not None,
        )
        pdus = message_pdus(request.context_id, command, request.max_pdu, command=True)
        if identifier is not None:
            pdus += message_pdus(request.context_id, identifier, request.max_pdu, command=False)
        return send_pdus(dul, pdus)

    def _stored_part(self, instance: StoredInstance) -> tuple[bytes, memoryview] | None:
        """The stored file and its data set, or None (reason logged)."""
        data = read_stored(self.gateway, instance, self.operation)
        if data is None:
            return None
        try:
            return data, data_set_of(data)
        except Exception as exc:
            log_unparsable(exc, self.operation)
            return None


@dataclass
class DirectMove(_Retrieve):
    """One C-MOVE request taken by the direct path."""

    destination: str = ""

    operation: ClassVar[str] = "C-MOVE"
    response_field: ClassVar[int] = C_MOVE_RSP
    handler_failed: ClassVar[int] = 0xC511
    too_many: ClassVar[int] = 0xC516

    def _retrieve(
        self, dul: EventDrivenDUL, request: Request, identifier_of: RequestIdentifier
    ) -> _Final | None:
        address = self.gateway.peers.get(self.destination)
        if address is None:
            log.warning("C-MOVE refused: the destination AE is not a configured peer")
            return _Final(MOVE_DESTINATION_UNKNOWN)
        selected = self._selected(identifier_of)
        if isinstance(selected, _Final):
            return selected
        store_assoc = self._associate(request, address, selected)
        if store_assoc is None:
            return _Final(MOVE_DESTINATION_UNKNOWN)
        try:
            accepted = accepted_syntaxes(store_assoc)
            originator = str(request.assoc.requestor.ae_title).strip()
            resumed = reactor_resumed(store_assoc)

            def send(instance: StoredInstance, message_id: int) -> int | None:
                return self._send(store_assoc, instance, accepted, message_id, originator, request, resumed)

            watch = PeerWatch(dul, request.message_id)
            return self._sub_operations(
                dul, request, watch, selected, send, lambda: association_ended(store_assoc)
            )
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

    def _send(
        self,
        store_assoc: Association,
        instance: StoredInstance,
        accepted: dict[str, set[str]],
        message_id: int,
        originator: str,
        request: Request,
        resumed: Callable[[], None],
    ) -> int | None:
        stored = instance.transfer_syntax_uid
        if choose_syntax(stored, accepted.get(instance.sop_class_uid, ())) == stored:
            part = self._stored_part(instance)
            if part is None:
                return None
            data, data_set = part
            uids = (instance.sop_class_uid, instance.sop_instance_uid)
            sent = send_data_set(
                store_assoc,
                SubOperation(*uids, stored, data_set),
                message_id,
                SUB_OPERATION_PRIORITY,
                originator,
                request.message_id,
            )
            if sent is not None:
                return sent.status
            dataset: Dataset = stored_data_set(data, *uids, stored)
        else:  # converted (a rewritten StoredDataSet goes by send_stored too), or a failed marker (logged)
            dataset = load_for_sending(self.gateway, instance, accepted, self.operation)
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


@dataclass
class DirectGet(_Retrieve):
    """One C-GET request taken by the direct path."""

    operation: ClassVar[str] = "C-GET"
    response_field: ClassVar[int] = C_GET_RSP
    handler_failed: ClassVar[int] = 0xC411
    too_many: ClassVar[int] = 0xC416

    def _retrieve(
        self, dul: EventDrivenDUL, request: Request, identifier_of: RequestIdentifier
    ) -> _Final | None:
        selected = self._selected(identifier_of)
        if isinstance(selected, _Final):
            return selected
        accepted = accepted_syntaxes(request.assoc)
        watch = PeerWatch(dul, request.message_id)

        def send(instance: StoredInstance, message_id: int) -> int | None:
            return self._send(dul, request, watch, instance, accepted, message_id)

        return self._sub_operations(dul, request, watch, selected, send)

    def _send(
        self,
        dul: EventDrivenDUL,
        request: Request,
        watch: PeerWatch,
        instance: StoredInstance,
        accepted: dict[str, set[str]],
        message_id: int,
    ) -> int | None:
        stored = instance.transfer_syntax_uid
        target = choose_syntax(stored, accepted.get(instance.sop_class_uid, ()))
        if target is None:
            log_no_context(instance, self.operation)
            return None
        data_set: bytes | memoryview
        if target == stored:
            part = self._stored_part(instance)
            if part is None:
                return None
            data_set = part[1]
        else:
            dataset = load_for_sending(self.gateway, instance, accepted, self.operation)
            if is_failed_marker(dataset):
                return None
            encoded = dataset.__dict__.get("stored_bytes")  # (headers rewritten: retrieve.load_for_sending)
            if encoded is None:  # (the file meta may still name the stored syntax: LE converts freely)
                syntax = UID(target)
                encoded = encode(dataset, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
            if encoded is None:  # (pynetdicom's send_c_store fails such a sub-operation too)
                log.warning("C-GET: sub-operation failed: the converted data set did not encode")
                return None
            data_set = encoded
        try:
            context = request.assoc._get_valid_context(
                instance.sop_class_uid, target, "scu", allow_conversion=False
            )
        except ValueError:
            log_no_context(instance, self.operation)
            return None
        command = encode_store_request(
            instance.sop_class_uid, instance.sop_instance_uid, message_id, SUB_OPERATION_PRIORITY, None, None
        )
        max_pdu, context_id = request.max_pdu, context.context_id
        request_pdus = message_pdus(context_id, command, max_pdu, command=True)
        data_pdus = iter_message_pdus(context_id, data_set, max_pdu, command=False)
        if len(data_set) <= ONE_WRITE:
            sent = send_pdus(dul, request_pdus + list(data_pdus))
        else:  # a PDU at a time: no copy of a large instance in memory
            sent = send_pdus(dul, request_pdus) and all(send_pdus(dul, [pdu]) for pdu in data_pdus)
        if not sent:
            watch.gone = True
            return None
        return self._response(dul, request, watch, message_id)

    def _response(
        self, dul: EventDrivenDUL, request: Request, watch: PeerWatch, message_id: int
    ) -> int | None:
        """Read the requestor's C-STORE-RSP to ``message_id`` (this thread is its reader): a C-CANCEL of the
        C-GET is noted, any other PDU handed to pynetdicom for after the request. None when the
        association ended, or the peer stayed silent for the network timeout (the socket's)."""
        catcher = ResponseCatcher(message_id)
        while not catcher.arrived.is_set() and not watch.gone:
            pdu = dul.read_pdu()  # (None when closed or timed out: its event is queued)
            offered = pdu is not None and pdu[0] == P_DATA_TF and not is_cancel_of(pdu, request.message_id)
            if not (offered and pdu is not None and catcher.take(dul, pdu)):
                watch.note(pdu)
        return us(catcher.fields.get(STATUS)) if catcher.fields is not None else None


def association_ended(assoc: Association) -> bool:
    """Whether an association dicomd requested has ended (aborted or closed by the peer, or a write
    failed). Its DUL knows before the association's own thread, which a failed write, or an abort during
    pynetdicom's send_c_store (its reactor paused), leaves a step behind."""
    dul: Any = assoc.dul
    return bool(
        not assoc.is_established
        or getattr(dul, "write_failed", False)
        or dul.state_machine.current_state != "Sta6"
    )


def _starting(request: Request, models: frozenset[str]) -> tuple[str, bool] | None:
    """(SOP class, identifier implicit?) of a retrieve request this path takes: on a context of
    ``models`` with an identifier in implicit or explicit VR little endian."""
    context = request.context
    implicit = IDENTIFIER_SYNTAXES.get(str(context.transfer_syntax[0]))
    if str(context.abstract_syntax) not in models or implicit is None:
        return None
    sop_class = text(request.fields.get(AFFECTED_SOP_CLASS))
    return (sop_class, implicit) if sop_class else None  # (pynetdicom answers a request without one)


def start_move(request: Request, gateway: Gateway, audit: DimseAudit) -> DirectMove | None:
    """A C-MOVE-RQ on a Query/Retrieve MOVE context with a Move Destination."""
    starting = _starting(request, MOVE_MODELS)
    destination = text(request.fields.get(MOVE_DESTINATION)).strip()
    if starting is None or not destination:
        return None
    return DirectMove(gateway, audit, *starting, destination=destination)


def start_get(request: Request, gateway: Gateway, audit: DimseAudit) -> DirectGet | None:
    """A C-GET-RQ on a Query/Retrieve GET context."""
    starting = _starting(request, GET_MODELS)
    return None if starting is None else DirectGet(gateway, audit, *starting)
