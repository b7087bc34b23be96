"""Store one instance: parse the staged file, validate, stage its metadata, group-commit."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import orjson

from dicomd.dicom.model import InvalidDicom
from dicomd.dicom.parser import parse_file
from dicomd.index.store import Index, NewInstance, PreparedInstance
from dicomd.ingest.committer import GroupCommitter
from dicomd.ingest.validate import (
    ALREADY_EXISTS,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    PROCESSING_FAILURE,
    VALIDATION_FAILURE,
    validate,
)
from dicomd.storage.local import DICOM, METADATA, LocalObjectStore

log = logging.getLogger(__name__)


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


class IngestService:
    def __init__(
        self, index: Index, store: LocalObjectStore, committer: GroupCommitter, *, bulk_threshold: int
    ) -> None:
        self.index = index
        self.store = store
        self.committer = committer
        self.bulk_threshold = bulk_threshold

    async def store_staged(
        self, key: str, *, url_study: str | None, version: int, partition_key: int = 1
    ) -> StoreOutcome:
        """The part's bytes are at the staged path of ``key``; decide its fate. Never raises."""
        try:
            return await self._store_staged(key, url_study, version, partition_key)
        except Exception as exc:  # an unexpected fault fails this instance, never the request
            log.exception("storing an instance failed")
            self.store.discard_staged(key)
            return StoreOutcome(
                failure_reason=PROCESSING_FAILURE, messages=[f"internal error: {type(exc).__name__}"]
            )

    async def _store_staged(
        self, key: str, url_study: str | None, version: int, partition: int
    ) -> StoreOutcome:
        outcome, prepared = await asyncio.to_thread(self._prepare, key, url_study, version, partition)
        if prepared is None:
            self.store.discard_staged(key)
            return outcome
        parsed = prepared.item.parsed
        try:
            result = await self.committer.submit(prepared)
        except Exception as exc:
            outcome.failure_reason = PROCESSING_FAILURE
            outcome.messages = [f"the index could not be updated: {type(exc).__name__}"]
            return outcome
        if result.status == "exists":
            outcome.failure_reason = ALREADY_EXISTS
            outcome.messages = ["the instance is already stored"]
        elif result.status == "conflict":
            outcome.failure_reason = VALIDATION_FAILURE
            outcome.messages = ["the SOP Instance UID is already stored under another study or series"]
        elif parsed.warnings:
            outcome.warning_reason = DATASET_DOES_NOT_MATCH_SOP_CLASS
            outcome.messages = list(parsed.warnings)
        return outcome

    def _prepare(
        self, key: str, url_study: str | None, version: int, partition: int
    ) -> tuple[StoreOutcome, PreparedInstance | None]:
        """CPU and file work of one instance, in one thread hop: parse, validate, stage the metadata,
        compute the index rows (so the group commit only runs SQL).

        Returns the prepared instance, or None (with the failure in the outcome) when it must not be stored.
        """
        try:
            self.store.flush_staged(key, DICOM)
            parsed = parse_file(self.store.staged_path(key, DICOM), bulk_threshold=self.bulk_threshold)
        except InvalidDicom as exc:
            reason = [f"not a readable DICOM file: {exc}"]
            return StoreOutcome(failure_reason=PROCESSING_FAILURE, messages=reason), None
        outcome = StoreOutcome(
            sop_class_uid=parsed.sop_class_uid,
            sop_instance_uid=parsed.sop_instance_uid,
            study_instance_uid=parsed.study_instance_uid,
            series_instance_uid=parsed.series_instance_uid,
        )
        rejection = validate(parsed, url_study=url_study, version=version)
        if rejection is not None:
            outcome.failure_reason = rejection.reason
            outcome.messages = rejection.messages
            return outcome, None
        self.store.write_staged(key, METADATA, orjson.dumps(parsed.dataset))
        new = NewInstance(
            partition_key=partition, parsed=parsed, object_key=key, file_size=parsed.file_length
        )
        return outcome, Index.prepare(new)
