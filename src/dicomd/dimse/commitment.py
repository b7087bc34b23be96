"""Storage Commitment Push Model SCP (PS3.4 Annex J): a modality asks, with an N-ACTION, whether dicomd has
taken responsibility for instances it sent, and may delete its own copies once told so.

dicomd answers the N-ACTION at once (success: the request is accepted, not yet answered), then sends the
result as an N-EVENT-REPORT on a new association to the requesting AE, looked up by its AE title in the
configured peers (``dicom_peers``, as C-MOVE destinations are): that is the one way every SCU supports (it
may release the first association as soon as it has the N-ACTION response). The association proposes the
Storage Commitment context with the SCP role for dicomd (role selection, PS3.7 D.3.3.4). An instance is
committed when the index holds it with the SOP class the request names: an indexed instance is durable (a
store is acknowledged only after its file and its index row are). Event type 1 when all are committed, 2
with a Failed SOP Sequence otherwise (0x0112 no such object instance, 0x0119 stored with another SOP class,
0x0110 the index could not be read).

A report the peer cannot take is retried a few times over about two minutes, then dropped (logged); reports
still waiting when the listener stops are not kept: the modality, lacking a report, asks again.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context, build_role, evt

from dicomd.dicom.uids import is_valid_uid
from dicomd.dimse.client import tune_requested_socket
from dicomd.dimse.negotiation import STORAGE_COMMITMENT
from dicomd.index.schema import DEFAULT_PARTITION_KEY

if TYPE_CHECKING:
    from pynetdicom import AE
    from pynetdicom.dimse_primitives import N_ACTION
    from pynetdicom.events import Event

    from dicomd.audit.dimse import DimseAudit
    from dicomd.dimse.context import Gateway

log = logging.getLogger(__name__)

STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"  # its well-known SOP Instance
REQUEST_STORAGE_COMMITMENT = 1  # the N-ACTION's Action Type ID
ALL_COMMITTED = 1  # the N-EVENT-REPORT's Event Type ID: every instance committed
SOME_FAILED = 2  # ... some could not be
# Failure Reason (0008,1197) of an instance that is not committed
PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
# N-ACTION response statuses (PS3.7 C.4.4)
NO_SUCH_SOP_INSTANCE = 0x0112
INVALID_ARGUMENT_VALUE = 0x0115
MISSING_ATTRIBUTE = 0x0120
NO_SUCH_ACTION = 0x0123
# a report the peer cannot take is tried again after these pauses (seconds), then dropped
RETRY_PAUSES = (2.0, 10.0, 30.0, 90.0)
MAX_WAITING_REPORTS = 1000  # more waiting requests are refused (0x0213 resource limitation)
RESOURCE_LIMITATION = 0x0213


class RequestError(Exception):
    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment


@dataclass(frozen=True)
class Reference:
    sop_class_uid: str
    sop_instance_uid: str


@dataclass
class Commitment:
    """An accepted request: whom to report to and what about."""

    peer_ae: str
    host: str
    port: int
    transaction_uid: str
    references: list[Reference]
    ae: AE  # the listener's AE: it requests the report's association
    attempts: int = 0
    due: float = 0.0


def parse_request(action_information: Dataset) -> tuple[str, list[Reference]]:
    """The Transaction UID and the referenced instances of an N-ACTION's Action Information, or
    RequestError with the status to answer."""
    transaction = str(action_information.get("TransactionUID", "") or "").strip()
    if not transaction:
        raise RequestError(MISSING_ATTRIBUTE, "Transaction UID (0008,1195) is missing")
    if not is_valid_uid(transaction):
        raise RequestError(INVALID_ARGUMENT_VALUE, "Transaction UID (0008,1195) is not a valid UID")
    items = action_information.get("ReferencedSOPSequence")
    if not items:
        raise RequestError(MISSING_ATTRIBUTE, "Referenced SOP Sequence (0008,1199) is missing or empty")
    references: list[Reference] = []
    for number, item in enumerate(items, start=1):
        sop_class = str(item.get("ReferencedSOPClassUID", "") or "").strip()
        sop_instance = str(item.get("ReferencedSOPInstanceUID", "") or "").strip()
        if not sop_class or not sop_instance:
            raise RequestError(
                MISSING_ATTRIBUTE, f"Referenced SOP Sequence item {number} lacks a SOP Class or Instance UID"
            )
        references.append(Reference(sop_class, sop_instance))
    return transaction, references


def commitment_report(
    transaction_uid: str, references: Sequence[Reference], stored: dict[str, str] | None, retrieve_ae: str
) -> tuple[int, Dataset]:
    """The N-EVENT-REPORT's Event Type ID and Event Information, given the SOP class the index holds each
    instance as (``stored``; None when the index could not be read: every instance fails)."""
    committed, failed = DicomSequence(), DicomSequence()
    for reference in references:
        item = Dataset()
        item.ReferencedSOPClassUID = reference.sop_class_uid
        item.ReferencedSOPInstanceUID = reference.sop_instance_uid
        found = None if stored is None else stored.get(reference.sop_instance_uid)
        if found is not None and found == reference.sop_class_uid:
            committed.append(item)
            continue
        if stored is None:
            item.FailureReason = PROCESSING_FAILURE
        else:
            item.FailureReason = NO_SUCH_OBJECT_INSTANCE if found is None else CLASS_INSTANCE_CONFLICT
        failed.append(item)
    report = Dataset()
    report.TransactionUID = transaction_uid
    if committed:
        report.RetrieveAETitle = retrieve_ae
        report.ReferencedSOPSequence = committed
    if failed:
        report.FailedSOPSequence = failed
    return (SOME_FAILED if failed else ALL_COMMITTED), report


class CommitmentReporter:
    """Sends the reports of accepted requests, one at a time, from a thread of its own."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._queue: queue.Queue[Commitment | None] = queue.Queue(MAX_WAITING_REPORTS)
        self._retrying: list[Commitment] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dicomd-commitment", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(queue.Full):  # (a full queue: _next sees _stopping within a second)
            self._queue.put_nowait(None)
        self._thread.join(10)
        waiting = self._queue.qsize() + len(self._retrying)
        if waiting:
            log.warning("storage commitment: %d reports not sent (the listener stopped)", waiting)

    def submit(self, commitment: Commitment) -> bool:
        """Queue a request's report; False when too many wait already."""
        try:
            self._queue.put_nowait(commitment)
        except queue.Full:
            return False
        return True

    def _next(self) -> Commitment | None:
        """The next report due: a new request, or a retry once its pause is over."""
        while not self._stopping.is_set():
            now = time.monotonic()
            due = [c for c in self._retrying if c.due <= now]
            if due:
                self._retrying.remove(due[0])
                return due[0]
            wait = min((c.due - now for c in self._retrying), default=1.0)
            try:
                return self._queue.get(timeout=max(0.01, min(wait, 1.0)))
            except queue.Empty:
                continue
        return None

    def _run(self) -> None:
        while (commitment := self._next()) is not None:
            try:
                sent = self._send(commitment)
            except Exception as exc:  # never let one report stop the others
                log.error("storage commitment: the report failed (%s)", type(exc).__name__)
                sent = True
            if sent:
                continue
            if commitment.attempts > len(RETRY_PAUSES):
                log.warning(
                    "storage commitment: the report of %d instances could not be delivered after %d"
                    " attempts; dropped",
                    len(commitment.references),
                    commitment.attempts,
                )
                continue
            commitment.due = time.monotonic() + RETRY_PAUSES[commitment.attempts - 1]
            self._retrying.append(commitment)

    def _lookup(self, commitment: Commitment) -> dict[str, str] | None:
        try:
            return self.gateway.index.sop_classes(
                DEFAULT_PARTITION_KEY, (r.sop_instance_uid for r in commitment.references)
            )
        except Exception as exc:
            log.error("storage commitment: the index could not be read (%s)", type(exc).__name__)
            return None

    def _send(self, commitment: Commitment) -> bool:
        """One attempt at delivering the report; True when the peer took it (or refused it for good)."""
        commitment.attempts += 1
        event_type, report = commitment_report(
            commitment.transaction_uid,
            commitment.references,
            self._lookup(commitment),
            self.gateway.settings.dicom_ae_title,
        )
        context = build_context(STORAGE_COMMITMENT, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        assoc = commitment.ae.associate(
            commitment.host,
            commitment.port,
            ae_title=commitment.peer_ae,
            contexts=[context],
            ext_neg=[build_role(STORAGE_COMMITMENT, scp_role=True)],
            evt_handlers=[(evt.EVT_CONN_OPEN, tune_requested_socket)],
        )
        if not assoc.is_established:
            log.warning(
                "storage commitment: the peer did not accept the report's association (attempt %d)",
                commitment.attempts,
            )
            return False
        try:
            if not assoc.accepted_contexts:
                log.warning("storage commitment: the peer accepted no Storage Commitment context")
                return False
            status, _reply = assoc.send_n_event_report(
                report, event_type, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE
            )
        finally:
            if assoc.is_established:
                assoc.release()
        code = int(status.Status) if status is not None and "Status" in status else None
        if code is None:
            log.warning("storage commitment: no response to the report (attempt %d)", commitment.attempts)
            return False
        failed = sum(1 for _ in report.get("FailedSOPSequence", []))
        log.info(
            "storage commitment: report sent (%d committed, %d failed; peer status 0x%04X)",
            len(commitment.references) - failed,
            failed,
            code,
        )
        return True


def handle_n_action(event: Event, gateway: Gateway, reporter: CommitmentReporter, audit: DimseAudit) -> Any:
    """pynetdicom EVT_N_ACTION handler: accept (or refuse) a storage commitment request; the report
    follows on its own association (module docstring)."""
    started = time.time()
    record = audit.record_of(event.assoc)
    record.count("N-ACTION")
    status, comment, references = _accept(event, gateway, reporter)
    facts: dict[str, Any] = {"sop_class": STORAGE_COMMITMENT, "instances": references}
    if comment:
        facts["error"] = comment
    audit.operation(record, "N-ACTION", status, started, **facts)
    if status == 0:
        return 0x0000, None
    answer = Dataset()
    answer.Status = status
    answer.ErrorComment = comment[:64]
    return answer, None


def _accept(event: Event, gateway: Gateway, reporter: CommitmentReporter) -> tuple[int, str, int]:
    """(status, error comment, number of referenced instances) of an N-ACTION request."""
    request = cast("N_ACTION", event.request)
    if str(request.RequestedSOPClassUID or "") != STORAGE_COMMITMENT:
        return 0x0118, "only Storage Commitment Push Model N-ACTIONs are served", 0
    if str(request.RequestedSOPInstanceUID or "") != STORAGE_COMMITMENT_INSTANCE:
        return NO_SUCH_SOP_INSTANCE, "the Requested SOP Instance must be 1.2.840.10008.1.20.1.1", 0
    if int(request.ActionTypeID or 0) != REQUEST_STORAGE_COMMITMENT:
        return NO_SUCH_ACTION, "Action Type ID 1 (request storage commitment) is the only action", 0
    try:
        information = event.action_information
        transaction, references = parse_request(information)
    except RequestError as exc:
        return exc.status, exc.comment, 0
    except Exception:  # an Action Information that does not decode
        return INVALID_ARGUMENT_VALUE, "the Action Information could not be decoded", 0
    peer_ae = str(event.assoc.requestor.ae_title).strip()
    peer = gateway.peers.get(peer_ae)
    if peer is None:
        log.warning("storage commitment refused: the calling AE is not a configured peer (dicom_peers)")
        return PROCESSING_FAILURE, "the calling AE is not in dicom_peers: nowhere to send the report", 0
    host, port = peer
    commitment = Commitment(peer_ae, host, port, transaction, references, event.assoc.ae)
    if not reporter.submit(commitment):
        return RESOURCE_LIMITATION, "too many storage commitment reports are waiting", len(references)
    return 0, "", len(references)
