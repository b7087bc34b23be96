"""The CPU-heavy part of storing one instance, shared by STOW (on the web worker's event loop for small
parts, in a thread for the others) and `dicomd import` (in a pool of processes): everything but the index
commit.

(Measured: a process pool for STOW cost more in IPC than it saved in GIL contention.)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from dicomd.dicom.model import InvalidDicom
from dicomd.dicom.parser import parse_bytes, parse_file
from dicomd.index.store import Index, NewInstance, PreparedInstance
from dicomd.ingest.metadata import encode
from dicomd.ingest.validate import PROCESSING_FAILURE, validate
from dicomd.storage.local import write_file


@dataclass(slots=True)
class StoreOutcome:
    """What the STOW response says about one part."""

    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    failure_reason: int | None = None
    warning_reason: int | None = None
    messages: list[str] = field(default_factory=list)

    @property
    def stored(self) -> bool:
        return self.failure_reason is None


@dataclass(frozen=True, slots=True)
class PrepareJob:
    staged_dicom: str  # the staged file (already complete)
    staged_metadata: str  # where the metadata JSON goes
    key: str
    url_study: str | None
    version: int
    partition_key: int
    bulk_threshold: int
    data: bytes | None = None  # the staged file's bytes, when the caller still holds them


def prepare_staged(job: PrepareJob) -> tuple[StoreOutcome, PreparedInstance | None]:
    """Parse and validate the staged file, stage its metadata, compute its index rows (the group commit
    makes the staged files durable, a batch at a time).

    Returns the prepared instance, or None (with the failure in the outcome) when it must not be stored.
    The prepared instance carries no data set: the index rows hold what the commit needs.
    """
    try:
        if job.data is None:
            parsed = parse_file(job.staged_dicom, bulk_threshold=job.bulk_threshold)
        else:
            parsed = parse_bytes(job.data, bulk_threshold=job.bulk_threshold)
    except InvalidDicom as exc:
        reason = [f"not a readable DICOM file: {exc}"]
        return StoreOutcome(failure_reason=PROCESSING_FAILURE, messages=reason), None
    outcome = StoreOutcome(
        sop_class_uid=parsed.sop_class_uid,
        sop_instance_uid=parsed.sop_instance_uid,
        study_instance_uid=parsed.study_instance_uid,
        series_instance_uid=parsed.series_instance_uid,
    )
    rejection = validate(parsed, url_study=job.url_study, version=job.version)
    if rejection is not None:
        outcome.failure_reason = rejection.reason
        outcome.messages = rejection.messages
        return outcome, None
    write_file(job.staged_metadata, encode(parsed.dataset))
    prepared = Index.prepare(NewInstance(job.partition_key, parsed, job.key, parsed.file_length))
    prepared.item.parsed = dataclasses.replace(parsed, dataset={}, frames=[], bulk={})
    return outcome, prepared
