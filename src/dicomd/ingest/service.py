"""Store one instance: prepare the staged part (on the loop when small, else in a thread), then
group-commit it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from dicomd.dicom.parser import may_be_deflated
from dicomd.dicom.status import (
    ALREADY_EXISTS,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    VALIDATION_FAILURE,
)
from dicomd.index.schema import DEFAULT_PARTITION_KEY
from dicomd.index.store import AddResult, PreparedInstance, unavailable_errors
from dicomd.ingest.committer import GroupCommitter
from dicomd.ingest.prepare import PrepareJob, StoreOutcome, fault_outcome, prepare_staged
from dicomd.storage import ObjectStore, StorageUnavailable

log = logging.getLogger(__name__)

# Parts up to this size are kept in memory as they are received and prepared (parse, validate, metadata,
# index rows) on the event loop, which costs less than the hand-off to a thread and back. The limit bounds
# how long one part can hold up the worker's other connections and the bytes kept per request. Bigger
# parts, and any that may be deflated (a small part may inflate to 512 MiB, written to a temporary file
# on the staging disk), are prepared in a thread.
PREPARE_ON_LOOP_BYTES = 64 << 10

# The message of an instance that failed because the object store could not be reached or timed out
# (failure reason Out of Resources: the sender should retry). When every instance of a request failed so,
# the API answers 503 with Retry-After.
STORAGE_UNAVAILABLE = "the object store is unavailable: try again later"
INDEX_UNAVAILABLE = "the index database is unavailable or busy: try again later"
# the messages of failures a later retry of the same request can cure (the API answers 503 for them)
UNAVAILABLE = frozenset((STORAGE_UNAVAILABLE, INDEX_UNAVAILABLE))


def prepare_on_loop(data: bytes | None) -> bool:
    """Whether a part whose bytes ``stage`` kept is prepared on the event loop (else in a thread)."""
    return data is not None and len(data) <= PREPARE_ON_LOOP_BYTES and not may_be_deflated(data)


@dataclass(slots=True)
class StagedPart:
    """A received part: its staged file's key and, when small enough to keep, its bytes."""

    key: str
    data: bytes | None = None


def _never() -> bool:
    return False


class IngestService:
    def __init__(
        self,
        store: ObjectStore,
        committer: GroupCommitter,
        *,
        bulk_threshold: int,
        lone_request: Callable[[], bool] | None = None,
    ) -> None:
        self.store = store
        self.committer = committer
        self.bulk_threshold = bulk_threshold
        # whether a web worker has just one request in progress, wholly received (http.connections)
        self.lone_request = lone_request or _never

    async def stage(self, body: AsyncIterator[bytes]) -> StagedPart:
        """Stage a received part under a new key, keeping its bytes too when small enough to be
        prepared on the event loop. The caller bounds the size of the whole request.

        When it cannot be staged (OSError: say, a full disk), nothing of it stays staged, the rest of
        the body is read and dropped (so that a multipart reader goes on with the next part) and the
        error is raised."""
        key = self.store.new_key()
        try:
            data = await self.store.stage(key, body, keep=PREPARE_ON_LOOP_BYTES)
        except OSError:
            await _drain(body)
            raise
        return StagedPart(key, data)

    async def prepare(
        self,
        part: StagedPart,
        *,
        url_study: str | None,
        version: int,
        partition_key: int = DEFAULT_PARTITION_KEY,
    ) -> tuple[StoreOutcome, PreparedInstance | None]:
        """The part's bytes are staged under ``part.key`` (and in ``part.data`` when the caller
        kept them: dropped once parsed). Parse and validate it, stage its metadata and compute its index
        rows; then ``commit`` it. Without a prepared instance (the outcome says why) the staged files are
        gone. Never raises."""
        try:
            return await self._prepare(part, url_study, version, partition_key)
        except Exception as exc:  # an unexpected fault fails this instance, never the request
            log.exception("preparing an instance failed")
            self.store.discard_staged(part.key)
            return fault_outcome(StoreOutcome(), "the instance could not be prepared", exc), None

    async def _prepare(
        self, part: StagedPart, url_study: str | None, version: int, partition_key: int
    ) -> tuple[StoreOutcome, PreparedInstance | None]:
        key = part.key
        job = PrepareJob(
            key,
            url_study,
            version,
            partition_key,
            self.bulk_threshold,
            part.data,
        )
        part.data = None  # the bytes live no longer than the parse, not until the commit
        if prepare_on_loop(job.data):
            outcome, prepared = prepare_staged(job, self.store)
        else:
            outcome, prepared = await asyncio.to_thread(prepare_staged, job, self.store)
        if prepared is None:
            self.store.discard_staged(key)
        return outcome, prepared

    async def commit(
        self, outcome: StoreOutcome, prepared: PreparedInstance, *, last_part: bool = False
    ) -> StoreOutcome:
        """Wait for the group commit of a prepared instance (the committer drops the staged files of
        those it does not store). ``last_part``: no other part of its request is being received or
        prepared; when the worker has no other request in progress either, its event loop commits it
        (see GroupCommitter.submit). Never raises."""
        try:
            result = await self.committer.submit(prepared, on_loop=last_part and self.lone_request())
        except Exception as exc:
            return _not_committed(outcome, exc)
        return _committed(outcome, prepared, result)

    def commit_here(self, outcome: StoreOutcome, prepared: PreparedInstance) -> StoreOutcome:
        """``commit`` for a caller in a thread of its own (a DICOM association), which blocks until
        the group commit is done and runs it itself when none is running. Never raises."""
        try:
            result = self.committer.commit_here(prepared)
        except Exception as exc:
            return _not_committed(outcome, exc)
        return _committed(outcome, prepared, result)


def _not_committed(outcome: StoreOutcome, exc: Exception) -> StoreOutcome:
    """The outcome of an instance whose group commit failed: none of the batch is stored."""
    if isinstance(exc, StorageUnavailable):  # the upload failed
        outcome.failure_reason = OUT_OF_RESOURCES
        outcome.messages = [STORAGE_UNAVAILABLE]
        return outcome
    # the sync or the index transaction failed
    outcome = fault_outcome(outcome, "the instance could not be committed", exc)
    if outcome.failure_reason != OUT_OF_RESOURCES and isinstance(exc, unavailable_errors()):
        # the database is down, slow or locked (not full): Out of Resources tells a sender to retry
        outcome.failure_reason = OUT_OF_RESOURCES
        outcome.messages = [INDEX_UNAVAILABLE]
    return outcome


def _committed(outcome: StoreOutcome, prepared: PreparedInstance, result: AddResult) -> StoreOutcome:
    """The outcome of an instance its group commit decided on."""
    # "identical": a re-send of the stored instance, which stays as it is: a success
    if result.status == "exists":
        outcome.failure_reason = ALREADY_EXISTS
        outcome.messages = ["the instance is already stored"]
    elif result.status == "conflict":
        outcome.failure_reason = VALIDATION_FAILURE
        outcome.messages = ["the SOP Instance UID is already stored under another study or series"]
    elif prepared.item.parsed.warnings:
        outcome.warning_reason = DATASET_DOES_NOT_MATCH_SOP_CLASS
        outcome.messages = list(prepared.item.parsed.warnings)
    return outcome


async def _drain(body: AsyncIterator[bytes]) -> None:
    """Read the rest of a part whose file could not be written, dropping it."""
    async for _chunk in body:
        pass
