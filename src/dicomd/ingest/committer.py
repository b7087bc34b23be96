"""Group commit: concurrent stores share one storage sync and one index transaction.

Each worker or DICOM listener process runs one committer. Callers hand it instances whose files are already
staged; a commit takes whatever is queued (up to ``max_batch``), makes the staged files durable with one
sync, commits the index in one transaction and only then publishes the objects and wakes the waiting
callers (where the SQLite index shares the objects' file system, the transaction comes first and one sync
covers both: see shared_flush.py). So throughput grows with concurrency while every 2xx still means
"fsynced and committed".

Commits run one at a time, each in a thread that blocks on it (leader/follower): a caller in a thread
of its own (a DICOM association) that finds no commit running commits the queue itself, its own instance
included, instead of handing it to the event loop, a pool thread and back (four thread switches, ~0.2 ms
per instance on a 2-core VM: a third of a C-STORE's time on a RAM disk); then it hands the lead to
another such caller still waiting, if any. The event loop's callers (STOW) wait on a future while the
committer's own thread commits for them; a commit they start waits for the end of the loop's current
round, whose other ready tasks (a request's other received parts) may queue more instances: one commit
and one flush for them, not one for the first part alone and another for the rest. A loop with nothing
else to do (one request in progress, all of it received) commits itself, as an association's thread does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from dicomd.index.store import AddResult, Index, PreparedInstance
from dicomd.index.types import UnsyncedBatch
from dicomd.ingest.shared_flush import SharedFlush
from dicomd.storage import ObjectStore, StorageUnavailable

log = logging.getLogger(__name__)

# An event loop with nothing else to do commits a lone request's instance itself (see submit) only when
# that blocks it for about a millisecond: an instance no larger than this ...
LOOP_COMMIT_MAX_BYTES = 64 << 10
# ... while the last commit took no longer than this (a flush slowed by others' writes: seconds)
LOOP_COMMIT_MAX_SECONDS = 0.05


@dataclass(slots=True, eq=False)
class _Waiter:
    """One instance waiting for its commit: a thread (``event``) or an event loop's future."""

    item: PreparedInstance
    event: threading.Event | None = None
    future: asyncio.Future[AddResult] | None = None
    result: AddResult | None = None
    error: BaseException | None = None
    lead: bool = False  # a waiting thread told to commit the queue (the lead was handed to it)

    @property
    def done(self) -> bool:
        return self.result is not None or self.error is not None

    def outcome(self) -> AddResult:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class GroupCommitter:
    def __init__(self, index: Index, store: ObjectStore, *, overwrite: bool, max_batch: int) -> None:
        self.index = index
        self.store = store
        self.overwrite = overwrite
        self.max_batch = max_batch
        self.shared_flush = SharedFlush.where_possible(index, store, overwrite=overwrite)
        self._lock = threading.Lock()  # held for queue and lead changes only, never across a commit
        self._changed = threading.Condition(self._lock)  # notified when the lead is given up
        self._queue: deque[_Waiter] = deque()
        self._leading = False  # a commit is running, or the lead is being handed over
        self._closed = False
        self._last_commit_seconds = 0.0  # of the last commit that succeeded
        # commits the loop's callers wait for when no waiting thread leads (one lead at a time)
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None

    def start(self) -> None:
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dicomd-commit")

    async def stop(self) -> None:
        """Stop after the commit in progress (it syncs, commits and publishes; the store's staging area
        must outlive it) and fail what is still queued; later submissions fail at once."""
        with self._lock:  # failed under the lock: a thread handed the lead meanwhile finds them failed
            self._closed = True
            queued = self._fail_queued(RuntimeError("the server is shutting down"))
        self._deliver(queued)
        await asyncio.to_thread(self._wait_for_no_lead)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.shutdown, wait=True)
        if self.shared_flush is not None:
            await asyncio.to_thread(self.shared_flush.forget_synced)

    async def submit(self, item: PreparedInstance, *, on_loop: bool = False) -> AddResult:
        """Wait until the instance is durably stored (or rejected). Raises if the commit failed.

        ``on_loop``: the caller's event loop has nothing else to do meanwhile (one request in progress,
        nothing more of it to come), so when no commit is running the loop commits itself, blocking: no
        hand-off to the committer's thread and back (two thread switches and a wake-up of the loop:
        +9% for one instance per request at one connection, A/B)."""
        loop = asyncio.get_running_loop()
        waiter = _Waiter(item, future=loop.create_future())
        on_loop = on_loop and self._quick_to_commit(item)
        if self._enqueue(waiter):
            if on_loop:
                self._lead(waiter)  # its own result is not delivered to its future: it is read here
                return waiter.outcome()
            # after the loop's other ready work, which may queue more instances (one batch, not two)
            loop.call_soon(self._lead_in_own_thread)
        return await waiter.future  # type: ignore[misc]

    def _quick_to_commit(self, item: PreparedInstance) -> bool:
        """Whether the loop may block on this instance's commit: a small instance on the embedded
        default (one syncfs covers the SQLite index and the files), while the last commit was quick. A
        commit on PostgreSQL or to a cloud store, a large file, or a sync slowed by other writers' dirty
        pages (syncfs writes back the whole file system) runs in the committer's thread, and the loop
        serves what arrives meanwhile."""
        return (
            self.shared_flush is not None
            and item.item.file_size <= LOOP_COMMIT_MAX_BYTES
            and self._last_commit_seconds <= LOOP_COMMIT_MAX_SECONDS
        )

    def commit_here(self, item: PreparedInstance) -> AddResult:
        """``submit`` for a caller in a thread of its own, which blocks until the instance is durably
        stored (or rejected), committing the queue itself when no commit is running. Raises if the
        commit failed."""
        waiter = _Waiter(item, event=threading.Event())
        if not self._enqueue(waiter):
            assert waiter.event is not None
            waiter.event.wait()
            if not waiter.lead:
                return waiter.outcome()
        self._lead(waiter)
        return waiter.outcome()

    def _enqueue(self, waiter: _Waiter) -> bool:
        """Queue a waiter; True when its caller takes the lead (no commit was running)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            self._queue.append(waiter)
            if self._leading:
                return False
            self._leading = True
            return True

    def _lead_in_own_thread(self) -> None:
        """Start the committer's own thread on the queue. Called from the loop, where nobody would see
        an error: when no thread can be started (the pool shut down, the interpreter exiting), what is
        queued fails (its staged files dropped) and the lead is given up, rather than leaving its callers
        waiting for good."""
        try:
            assert self._thread is not None, "start() the committer first"
            self._thread.submit(self._lead_for_the_loop)
        except BaseException as exc:
            with self._lock:
                queued = self._fail_queued(exc)
                self._give_up_lead()
            for waiter in queued:  # not stored: their staged files go, as after a failed commit
                with contextlib.suppress(OSError):
                    self.store.discard_staged(waiter.item.item.object_key)
            self._deliver(queued)
            log.error("the group committer could not start a commit (%s)", type(exc).__name__)
            if not isinstance(exc, Exception):
                raise

    def _lead_for_the_loop(self) -> None:
        try:
            self._lead(None)
        except BaseException:  # nobody reads this thread's future: say it here (the lead was handed on)
            log.critical("the group committer's thread failed", exc_info=True)

    def _lead(self, me: _Waiter | None) -> None:
        """Commit a batch from the queue or, for a waiting thread (``me``), batches until its own
        instance is committed; then hand the lead on."""
        batch: list[_Waiter] = []
        try:
            while True:
                with self._lock:
                    batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
                    if not batch:
                        self._give_up_lead()
                        return  # the lead is given up: nothing to hand on
                self._commit_batch(batch)
                if me is None or me.done:
                    break
                self._deliver(batch)
        except BaseException as exc:
            self._hand_on_after(batch, me, exc)
            raise
        self._hand_on_after(batch, me)

    def _hand_on_after(
        self, batch: list[_Waiter], me: _Waiter | None, exc: BaseException | None = None
    ) -> None:
        """Wake the last batch's callers together with the lead's next holder: one wake-up of the
        loop per commit, as the loop's callers need it for both. A leader leaving on ``exc`` before its
        own instance was committed takes that instance out of the queue, failed (its caller raises)."""
        with self._lock:
            if exc is not None and me is not None and not me.done:
                with contextlib.suppress(ValueError):
                    self._queue.remove(me)
                self._failed([me], exc)
            resume_on = self._hand_on()
        self._deliver([w for w in batch if w is not me], resume_on)

    def _hand_on(self) -> asyncio.AbstractEventLoop | None:  # under the lock
        """Give the lead to a waiting thread; or give it up when nothing is queued; else (only the
        loop's callers wait) return the loop that is to start the committer's own thread next, once it
        has taken the last commit's results (it prepares more parts meanwhile: fewer, larger batches;
        starting at once made batch-10 requests commit more often, ~15% more CPU per instance)."""
        if not self._queue:
            self._give_up_lead()
            return None
        follower = next((w for w in self._queue if w.event is not None), None)
        if follower is None:
            assert self._queue[0].future is not None
            return self._queue[0].future.get_loop()
        follower.lead = True
        assert follower.event is not None
        follower.event.set()
        return None

    def _give_up_lead(self) -> None:  # under the lock
        self._leading = False
        self._changed.notify_all()

    def _wait_for_no_lead(self) -> None:
        with self._lock:
            self._changed.wait_for(lambda: not self._leading)

    def _commit_batch(self, batch: list[_Waiter]) -> None:
        """Commit a batch and record each waiter's result (the whole batch's error when it failed)."""
        try:
            started = time.perf_counter()
            results = commit_batch(
                self.index,
                self.store,
                [w.item for w in batch],
                overwrite=self.overwrite,
                shared_flush=self.shared_flush,
            )
            self._last_commit_seconds = time.perf_counter() - started
            log.debug("group commit of %d in %.1f ms", len(batch), self._last_commit_seconds * 1e3)
            for waiter, result in zip(batch, results, strict=True):
                waiter.result = result
        except StorageUnavailable as exc:  # an outage, not a bug: no traceback (the message says why)
            log.warning("group commit of %d instances failed: %s", len(batch), exc)
            self._failed(batch, exc)
        except Exception as exc:  # the whole batch failed; each caller reports its instances
            log.exception("group commit of %d instances failed", len(batch))
            self._failed(batch, exc)
        except BaseException as exc:
            self._failed(batch, exc)
            raise

    def _fail_queued(self, exc: BaseException) -> list[_Waiter]:  # under the lock
        """Take every queued waiter out of the queue, failed with ``exc`` (the caller delivers them)."""
        queued = list(self._queue)
        self._queue.clear()
        self._failed(queued, exc)
        return queued

    @staticmethod
    def _failed(batch: list[_Waiter], exc: BaseException) -> None:
        for waiter in batch:
            waiter.error = exc

    def _deliver(self, waiters: list[_Waiter], resume_on: asyncio.AbstractEventLoop | None = None) -> None:
        """Wake the waiters: each thread, and each event loop once for all its futures (``resume_on``
        then also starts the committer's own thread on the next batch)."""
        by_loop: dict[asyncio.AbstractEventLoop, list[_Waiter]] = {}
        if resume_on is not None:
            by_loop[resume_on] = []
        for waiter in waiters:
            if waiter.event is not None:
                waiter.event.set()
            elif waiter.future is not None:
                by_loop.setdefault(waiter.future.get_loop(), []).append(waiter)
        for loop, settled in by_loop.items():
            resume = loop is resume_on
            try:
                loop.call_soon_threadsafe(self._settle, settled, resume)
            except RuntimeError:  # the loop is closed: nobody waits on it any more
                if resume:
                    self._lead_in_own_thread()

    def _settle(self, waiters: list[_Waiter], resume: bool) -> None:
        """On the waiters' event loop: their futures get what their commit gave; then, with ``resume``,
        the next commit starts."""
        try:
            for waiter in waiters:
                future = waiter.future
                if future is None or future.done():  # a request that gave up (cancelled) waits no longer
                    continue
                if waiter.error is not None:
                    future.set_exception(waiter.error)
                else:
                    future.set_result(waiter.outcome())
        finally:
            if resume:  # after what the woken requests do next (they may queue more instances)
                asyncio.get_running_loop().call_soon(self._lead_in_own_thread)


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
