"""Group commit: concurrent stores share one storage sync and one index transaction.

Each worker process runs one committer. Requests hand it instances whose files are already staged; it drains
whatever is queued (up to ``max_batch``), makes the staged files durable with one sync, commits the index in
one transaction and only then publishes the objects and wakes the waiting requests (where the SQLite index
shares the objects' file system, the transaction comes first and one sync covers both: see shared_flush.py).
So throughput grows with concurrency while every 2xx still means "fsynced and committed".
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from dicomd.index.store import AddResult, Index, PreparedInstance
from dicomd.index.types import UnsyncedBatch
from dicomd.ingest.shared_flush import SharedFlush
from dicomd.storage import ObjectStore, StorageUnavailable

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Pending:
    item: PreparedInstance
    future: asyncio.Future[AddResult]


class GroupCommitter:
    def __init__(self, index: Index, store: ObjectStore, *, overwrite: bool, max_batch: int) -> None:
        self.index = index
        self.store = store
        self.overwrite = overwrite
        self.max_batch = max_batch
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._in_flight: asyncio.Future[list[AddResult]] | None = None  # the commit thread's result
        self.shared_flush = SharedFlush.where_possible(index, store, overwrite=overwrite)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="group-committer")

    async def stop(self) -> None:
        """Stop after the commit in progress (its thread syncs, commits and publishes; the store's
        staging area must outlive it) and fail what is still queued."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._in_flight is not None:
            await asyncio.wait([self._in_flight])
        if self.shared_flush is not None:
            await asyncio.to_thread(self.shared_flush.forget_synced)
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("the server is shutting down"))

    async def submit(self, item: PreparedInstance) -> AddResult:
        """Wait until the instance is durably stored (or rejected). Raises if the commit failed."""
        future: asyncio.Future[AddResult] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(item, future))
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                self._in_flight = asyncio.ensure_future(
                    asyncio.to_thread(self._commit, [p.item for p in batch])
                )
                # shielded: a stop waits for the thread instead of leaving it running unobserved
                results = await asyncio.shield(self._in_flight)
            except StorageUnavailable as exc:  # an outage, not a bug: no traceback (the message says why)
                log.warning("group commit of %d instances failed: %s", len(batch), exc)
                self._fail(batch, exc)
                continue
            except Exception as exc:  # the whole batch failed; each request reports its instances
                log.exception("group commit of %d instances failed", len(batch))
                self._fail(batch, exc)
                continue
            for pending, result in zip(batch, results, strict=True):
                if not pending.future.done():
                    pending.future.set_result(result)

    @staticmethod
    def _fail(batch: list[_Pending], exc: Exception) -> None:
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(exc)

    def _commit(self, items: list[PreparedInstance]) -> list[AddResult]:
        started = time.perf_counter()
        results = commit_batch(
            self.index, self.store, items, overwrite=self.overwrite, shared_flush=self.shared_flush
        )
        log.debug("group commit of %d in %.1f ms", len(items), (time.perf_counter() - started) * 1e3)
        return results


STORED = ("created", "replaced")
# read size when comparing a re-sent instance with the stored one (an instance may be GBs)
_COMPARE_CHUNK = 1 << 20
_COMPARE_IN_LOCK_MAX = 1 << 20  # local files below this are compared under the writer lock


def same_bytes(store: ObjectStore, stored_key: str, staged_key: str) -> bool:
    """Whether the DICOM object of a stored instance (or one committed earlier in the same batch, still
    staged) and a staged one hold the same bytes. Asked by the index, in the commit's thread, only for
    a SOP Instance UID it has already, with the same file size."""
    try:
        with store.open_object(stored_key) as old, open(store.staged_file(staged_key), "rb") as new:
            while True:
                chunk = old.read(_COMPARE_CHUNK)
                if chunk != new.read(_COMPARE_CHUNK):
                    return False
                if not chunk:
                    return True
    except OSError:  # e.g. the stored file is lost: not a re-send of it; the duplicate policy decides
        log.warning("comparing a re-sent instance with stored object %s failed", stored_key, exc_info=True)
        return False


def _compared_before_the_lock(
    index: Index, store: ObjectStore, items: list[PreparedInstance]
) -> Callable[[str, str], bool]:
    """``same_file`` for ``add_instances``, with the re-sent instances compared now, before the index's
    writer lock (held cluster-wide on PostgreSQL): comparing a large file, a remote one above all, takes
    seconds that every other writer would wait. The writer asks about the key it finds under the lock;
    only when that changed meanwhile (a concurrent overwrite) is the comparison made there."""
    # a small local file compares in microseconds from the page cache: under the lock, as before, which
    # spares every commit a query; a large or remote one is compared before the lock
    slow = [p for p in items if not store.reads_are_local or p.item.file_size >= _COMPARE_IN_LOCK_MAX]
    if not slow:
        return functools.partial(same_bytes, store)
    stored = index.stored_versions(
        (prepared.item.partition_key, prepared.item.parsed.sop_instance_uid) for prepared in slow
    )
    compared: dict[tuple[str, str], bool] = {}
    for prepared in slow:
        item = prepared.item
        version = stored.get((item.partition_key, item.parsed.sop_instance_uid))
        if version is not None and version[1] == item.file_size:
            compared[(version[0], item.object_key)] = same_bytes(store, version[0], item.object_key)

    def same_file(stored_key: str, staged_key: str) -> bool:
        found = compared.get((stored_key, staged_key))
        return same_bytes(store, stored_key, staged_key) if found is None else found

    return same_file


def _after_a_failed_commit(index: Index, store: ObjectStore, keys: list[str], *, synced: bool) -> None:
    """The index transaction raised, but a connection lost during COMMIT may have committed it all the
    same: drop the objects only of keys the index (asked again) does not name, publish the others (after
    a sync, unless the batch was synced before its commit). When the index cannot be asked, keep
    everything: a committed row must never lose its objects, and what was not committed is found by
    ``recover`` (staged) or the orphan sweep (uploaded)."""
    try:
        committed = index.known_objects(keys)
    except Exception:
        log.warning("a commit failed and its outcome is unknown; its %d objects are kept", len(keys))
        return
    for key in keys:
        if key not in committed:
            store.discard_staged(key)
    if committed:
        log.warning("a commit reported a failure but had committed %d instances", len(committed))
        with contextlib.suppress(OSError):
            if not synced:
                store.sync(sorted(committed))
            store.publish(committed)


def commit_batch(
    index: Index,
    store: ObjectStore,
    items: list[PreparedInstance],
    *,
    overwrite: bool,
    shared_flush: SharedFlush | None = None,
) -> list[AddResult]:
    """Make a batch of staged instances durable and indexed: one sync, one index transaction, then
    publish the stored objects and drop the staged files of the others (shared by STOW and import).
    With ``shared_flush`` the transaction comes first and the sync after it covers both (see
    ingest/shared_flush.py). Raises when the sync or the transaction failed (StorageUnavailable when a
    cloud store could not take the uploads); then nothing of the batch is stored or staged."""
    keys = [prepared.item.object_key for prepared in items]
    unsynced: UnsyncedBatch | None = None
    try:
        if shared_flush is None:
            store.sync(keys)  # a failed sync (say, a full disk at writeback) may have lost any of them
        else:
            shared_flush.before_commit()
            unsynced = shared_flush.batch(keys)
        same_file = _compared_before_the_lock(index, store, items)
    except Exception:
        if shared_flush is not None and unsynced is not None:
            shared_flush.not_committed(unsynced)
        for key in keys:
            store.discard_staged(key)
        raise
    try:
        results = index.add_instances(items, overwrite=overwrite, same_file=same_file, unsynced=unsynced)
    except Exception:
        if shared_flush is not None and unsynced is not None:
            shared_flush.not_committed(unsynced)
        _after_a_failed_commit(index, store, keys, synced=shared_flush is None)
        raise
    if shared_flush is not None and unsynced is not None:
        stored = [k for k, r in zip(keys, results, strict=True) if r.status in STORED]
        try:
            store.sync(keys)  # the staged files and the index's WAL: one device flush
        except Exception:
            rolled_back = shared_flush.sync_failed(stored)
            for key in keys if rolled_back else set(keys) - set(stored):
                store.discard_staged(key)
            raise
        shared_flush.synced(unsynced, stored)
    try:
        store.publish(k for k, r in zip(keys, results, strict=True) if r.status in STORED)
    except OSError:
        # committed and durable in staging: readers fall back to the staged files and the next
        # start-up moves them into place, so the stores still succeeded
        log.exception("moving committed objects into place failed")
    for key, result in zip(keys, results, strict=True):
        if result.status not in STORED:
            store.discard_staged(key)
    return results
