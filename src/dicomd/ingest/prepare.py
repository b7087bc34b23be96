"""The CPU-heavy part of storing one instance, shared by STOW (on the web worker's event loop for small
parts, in a thread for the others) and `dicomd import` (in a pool of processes): everything but the index
commit.

Not a process pool for STOW: its IPC costs more than the GIL contention it saves.
"""

from __future__ import annotations

import dataclasses
import errno
from dataclasses import dataclass, field

from dicomd.dicom.model import InvalidDicom
from dicomd.dicom.parser import parse_bytes, parse_file
from dicomd.dicom.status import OUT_OF_RESOURCES, PROCESSING_FAILURE
from dicomd.index.store import Index, NewInstance, PreparedInstance
from dicomd.ingest.metadata import encode
from dicomd.ingest.validate import validate
from dicomd.storage import DICOM, Stager


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


_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_SQLITE_FULL = 13  # SQLITE_FULL: "database or disk is full"
_PG_DISK_FULL = "53100"  # SQLSTATE disk_full


def fault_reason(exc: BaseException) -> int:
    """The failure reason of an instance that a fault kept from being stored: Out of Resources when the
    file system or quota (ENOSPC, EDQUOT), SQLite or PostgreSQL says the disk is full, else Processing
    Failure. Follows the exception's causes (SQLAlchemy wraps the driver's error in ``orig``)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in _FULL_ERRNOS:
            return OUT_OF_RESOURCES
        if (
            getattr(cause, "sqlite_errorcode", None) == _SQLITE_FULL
            or getattr(cause, "sqlstate", None) == _PG_DISK_FULL
        ):
            return OUT_OF_RESOURCES
        orig = getattr(cause, "orig", None)
        cause = orig if isinstance(orig, BaseException) else (cause.__cause__ or cause.__context__)
    return PROCESSING_FAILURE


def fault_outcome(outcome: StoreOutcome, what: str, exc: BaseException) -> StoreOutcome:
    """Mark ``outcome`` failed by a fault; the message names no more than the exception type (a
    database error's text may quote SQL parameters: PHI)."""
    outcome.failure_reason = fault_reason(exc)
    why = "out of storage space" if outcome.failure_reason == OUT_OF_RESOURCES else type(exc).__name__
    outcome.messages = [f"{what}: {why}"]
    return outcome


@dataclass(frozen=True, slots=True)
class PrepareJob:
    key: str  # of the staged DICOM object (already complete); its metadata is staged under it too
    url_study: str | None
    version: int
    partition_key: int
    bulk_threshold: int
    data: bytes | None = None  # the staged file's bytes, when the caller still holds them


def prepare_staged(job: PrepareJob, stager: Stager) -> tuple[StoreOutcome, PreparedInstance | None]:
    """Parse and validate the staged object, stage its metadata, compute its index rows (the group commit
    makes the staged objects durable, a batch at a time).

    Returns the prepared instance, or None (with the failure in the outcome) when it must not be stored.
    The prepared instance carries no data set: the index rows hold what the commit needs.
    """
    try:
        if job.data is None:
            parsed = parse_file(stager.staged_file(job.key, DICOM), bulk_threshold=job.bulk_threshold)
        else:
            # a deflated data set inflates to a temporary file on the staging disk (not to /tmp: RAM)
            temp_dir = stager.scratch_dir()
            parsed = parse_bytes(job.data, bulk_threshold=job.bulk_threshold, temp_dir=temp_dir)
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
    try:
        stager.stage_metadata(job.key, encode(parsed.dataset))
    except OSError as exc:  # e.g. a full disk: this instance fails, with its UIDs in the response
        return fault_outcome(outcome, "its metadata could not be staged", exc), None
    prepared = Index.prepare(NewInstance(job.partition_key, parsed, job.key, parsed.file_length))
    prepared.item.parsed = dataclasses.replace(parsed, dataset={}, frames=[], bulk={})
    return outcome, prepared
