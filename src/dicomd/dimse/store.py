"""C-ECHO and C-STORE SCP (PS3.4 Annexes A and B) on the STOW ingest path.

A C-STORE carries a data set, not a file: what is stored is that data set byte for byte, as the peer
encoded it in the association's transfer syntax, behind a File Meta Information of dicomd's own
(implementation class UID and version name, the accepted transfer syntax, the command's SOP class and
instance, the calling AE as Sending AE Title). That file is staged, parsed and validated (the /v2 rules)
in the association's thread, then group-committed, exactly as a one-instance STOW: the response is sent
once the file is durable and indexed. WADO then returns exactly that file.

Statuses (PS3.4 B.2.3, PS3.7 C): success 0x0000, also for an identical re-send; stored with a warning
0xB007 (the data set breaks the standard somewhere; the comment says where); out of resources 0xA700 (a full
disk, the index or object store unavailable: retry later); data set does not match SOP class 0xA900 (a key
attribute invalid or missing, its SOP Instance UID stored in another study or series, or not the one of the
command); cannot understand 0xC000 (not a readable data set); duplicate SOP instance 0x0111 (stored already
with other content, duplicate_policy "reject"); processing failure 0x0110 (any other fault).
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from pydicom.dataset import Dataset

from dicomd.audit.dimse import AssociationRecord, DimseAudit
from dicomd.audit.events import instance_reference
from dicomd.dicom.status import (
    ALREADY_EXISTS,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    VALIDATION_FAILURE,
)
from dicomd.dicom.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, is_valid_uid
from dicomd.dimse.q_common import failure_status
from dicomd.index.schema import DEFAULT_PARTITION_KEY
from dicomd.ingest.prepare import PrepareJob, StoreOutcome, fault_outcome, prepare_staged
from dicomd.ingest.service import PREPARE_ON_LOOP_BYTES

if TYPE_CHECKING:
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.events import Event

    from dicomd.dimse.context import Gateway

log = logging.getLogger(__name__)

API_VERSION = 2  # the validation rules a C-STORE is held to: those of /v2 STOW

SUCCESS = 0x0000
WARNING_DOES_NOT_MATCH = 0xB007
REFUSED_OUT_OF_RESOURCES = 0xA700
ERROR_DOES_NOT_MATCH = 0xA900
ERROR_CANNOT_UNDERSTAND = 0xC000
DUPLICATE_SOP_INSTANCE = 0x0111
PROCESSING_FAILURE_STATUS = 0x0110

_AE_TITLE_MAX = 16  # (0000,0902) is LO
_PREAMBLE = b"\x00" * 128 + b"DICM"
_META_HEADER = struct.Struct("<HH2sH")  # tag, VR, 16-bit length
_GROUP_LENGTH = struct.Struct("<HH2sHI")  # (0002,0000) UL and its value
_META_VERSION = b"\x02\x00\x01\x00OB\x00\x00\x02\x00\x00\x00\x00\x01"  # (0002,0001) OB 00 01


def handle_echo(event: Event, audit: DimseAudit) -> int:
    """EVT_C_ECHO: success (counted in the association's audit event)."""
    audit.record_of(event.assoc).count("C-ECHO")
    return SUCCESS


def _meta_element(element: int, vr: bytes, text: str) -> bytes:
    """A File Meta Information element (group 0002, explicit VR little endian) of a short text value,
    padded to an even length (a UID with NUL, other text with a space)."""
    value = text.encode("latin-1")
    if len(value) % 2:
        value += b"\x00" if vr == b"UI" else b" "
    return _META_HEADER.pack(0x0002, element, vr, len(value)) + value


def part10_header(
    sop_class: str, sop_instance: str, transfer_syntax: str, sending_ae: str, own_ae: str
) -> bytes:
    """Preamble, 'DICM' and the File Meta Information of a received data set (PS3.10 7.1), encoded here:
    pydicom's writer took 0.3 ms of each C-STORE for these few short values."""
    elements = [
        _META_VERSION,
        _meta_element(0x0002, b"UI", sop_class),
        _meta_element(0x0003, b"UI", sop_instance),
        _meta_element(0x0010, b"UI", transfer_syntax),
        _meta_element(0x0012, b"UI", IMPLEMENTATION_CLASS_UID),
        _meta_element(0x0013, b"SH", IMPLEMENTATION_VERSION_NAME),
        _meta_element(0x0016, b"AE", own_ae),  # Source AE: the AE that wrote the file
    ]
    if 0 < len(sending_ae) <= _AE_TITLE_MAX and "\\" not in sending_ae:
        elements.append(_meta_element(0x0017, b"AE", sending_ae))  # Sending AE: the calling AE
    elements.append(_meta_element(0x0018, b"AE", own_ae))  # Receiving AE
    meta = b"".join(elements)
    return _PREAMBLE + _GROUP_LENGTH.pack(0x0002, 0x0000, b"UL", 4, len(meta)) + meta


def status_of(outcome: StoreOutcome) -> int:
    """The C-STORE status of an ingest outcome (module docstring)."""
    if outcome.stored:
        return SUCCESS if outcome.warning_reason is None else WARNING_DOES_NOT_MATCH
    reason = outcome.failure_reason
    if reason == OUT_OF_RESOURCES:
        return REFUSED_OUT_OF_RESOURCES
    if reason == ALREADY_EXISTS:
        return DUPLICATE_SOP_INSTANCE
    if reason == VALIDATION_FAILURE:
        return ERROR_DOES_NOT_MATCH
    if reason == PROCESSING_FAILURE and not outcome.sop_instance_uid:
        return ERROR_CANNOT_UNDERSTAND  # it did not parse: its UIDs are unknown
    return PROCESSING_FAILURE_STATUS


@dataclass(frozen=True, slots=True)
class StoreRequest:
    """What a C-STORE request says of its data set."""

    sop_class: str  # Affected SOP Class UID
    sop_instance: str  # Affected SOP Instance UID
    transfer_syntax: str  # the presentation context's


def store_received(
    gateway: Gateway,
    header: bytes,
    body: Sequence[bytes | memoryview],
    sop_class: str,
    sop_instance: str,
) -> StoreOutcome:
    """Stage, prepare and commit one received instance (``body``: its data set, in fragments). Never
    raises.

    Staging and preparing (file writes, parsing) run here, in the association's thread, so associations
    do them side by side; the group commit too when none is running (``GroupCommitter.commit_here``)."""
    ingest = gateway.ingest
    store = gateway.store
    key = store.new_key()
    parts = (header, *body)
    try:
        store.stage_bytes(key, parts)
    except OSError as exc:
        failed = StoreOutcome(sop_class_uid=sop_class, sop_instance_uid=sop_instance)
        log.warning("a received instance could not be staged: %s", type(exc).__name__)
        return fault_outcome(failed, "the instance could not be staged", exc)
    size = sum(len(part) for part in parts)
    # small ones are parsed from memory, larger ones from the staged file (memory-mapped)
    data = b"".join(parts) if size <= PREPARE_ON_LOOP_BYTES else None
    job = PrepareJob(key, None, API_VERSION, DEFAULT_PARTITION_KEY, ingest.bulk_threshold, data)
    try:
        outcome, prepared = prepare_staged(job, store)
    except Exception as exc:  # an unexpected fault fails this instance alone
        log.exception("preparing a received instance failed")
        store.discard_staged(key)
        return fault_outcome(StoreOutcome(), "the instance could not be prepared", exc)
    if prepared is None:
        store.discard_staged(key)
        return outcome
    if (outcome.sop_class_uid, outcome.sop_instance_uid) != (sop_class, sop_instance):
        store.discard_staged(key)
        outcome.failure_reason = VALIDATION_FAILURE
        outcome.messages = ["the data set is not the SOP instance the C-STORE request names"]
        return outcome
    return ingest.commit_here(outcome, prepared)


def store_request(
    gateway: Gateway,
    audit: DimseAudit,
    record: AssociationRecord,
    request: StoreRequest,
    body: Sequence[bytes | memoryview],
) -> tuple[int, str | None]:
    """Store a C-STORE request's data set as a Part 10 file, audited: the status once durable and
    indexed, with its error comment (None for a plain success). Shared by pynetdicom's EVT_C_STORE
    handler and the direct path (dimse/direct_store.py)."""
    started = time.time()
    record.count("C-STORE")
    sop_class, sop_instance = request.sop_class, request.sop_instance
    outcome = StoreOutcome(sop_class_uid=sop_class, sop_instance_uid=sop_instance)
    if not is_valid_uid(sop_class) or not is_valid_uid(sop_instance):
        outcome.failure_reason = VALIDATION_FAILURE
        outcome.messages = ["the request's Affected SOP Class or Instance UID is not a valid UID"]
    else:
        own_ae = gateway.settings.dicom_ae_title
        header = part10_header(sop_class, sop_instance, request.transfer_syntax, record.calling_ae, own_ae)
        try:
            outcome = store_received(gateway, header, body, sop_class, sop_instance)
        except Exception as exc:  # the loop is gone (shutting down) or a bug: this instance fails alone
            log.error("a received instance could not be stored (%s)", type(exc).__name__)
            outcome = fault_outcome(outcome, "the instance could not be stored", exc)
    status = status_of(outcome)
    uids = (outcome.study_instance_uid, outcome.series_instance_uid, sop_instance, sop_class)
    reference = instance_reference(*uids)
    if not outcome.stored:
        reference["failure_reason"] = outcome.failure_reason
    audit.operation(
        record,
        "C-STORE",
        status,
        started,
        stored=[reference] if outcome.stored else [],
        failed=[] if outcome.stored else [reference],
    )
    comment = outcome.messages[0] if outcome.messages and status != SUCCESS else None
    return status, comment


def handle_store(event: Event, gateway: Gateway, audit: DimseAudit) -> Dataset:
    """EVT_C_STORE: a C-STORE that pynetdicom received (one the direct path did not take)."""
    received = cast("C_STORE", event.request)
    request = StoreRequest(
        str(received.AffectedSOPClassUID or "").strip(),
        str(received.AffectedSOPInstanceUID or "").strip(),
        str(event.context.transfer_syntax),
    )
    body = received.DataSet.getbuffer()  # type: ignore[union-attr]  # the received bytes, not a copy
    try:
        status, comment = store_request(gateway, audit, audit.record_of(event.assoc), request, [body])
    finally:
        body.release()
    if comment is not None:
        return failure_status(status, comment)
    response = Dataset()
    response.Status = status
    return response
