"""The group commit's leader/follower (ingest/committer.py): a caller in a thread of its own (a DICOM
association) that finds no commit running commits in its own thread; callers arriving meanwhile share the
next commit, which a waiting thread runs (the committer's own thread when only the event loop's callers
wait); a failed commit fails each of its callers, of both kinds; a stop lets the running commit end and
fails what is queued. Real SQLite and real files; the commits are only watched (which thread, how many
instances) and the first one held at a gate so that others queue behind it."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dicomd.dicom.status import OUT_OF_RESOURCES
from dicomd.ingest import committer as committer_module
from dicomd.ingest.prepare import StoreOutcome

from support.dicom_files import make_instance
from support.ingest_archive import Archive, started_archive

# the stop's RuntimeError, as an instance's failure tells it (the type only: see prepare.fault_outcome)
_SHUTTING_DOWN = "the instance could not be committed: RuntimeError"


@pytest.fixture
async def archive(tmp_path: Path) -> AsyncIterator[Archive]:
    async for started in started_archive(tmp_path):
        yield started


@dataclass
class Commits:
    """Each group commit as it starts: its thread's name and its instance count. The first waits at
    ``gate`` (when set) until the test opens it."""

    gate: threading.Event | None = None
    seen: list[tuple[str, int]] = field(default_factory=list)

    def thread_names(self) -> list[str]:
        return [name for name, _ in self.seen]

    def sizes(self) -> list[int]:
        return [size for _, size in self.seen]


@pytest.fixture
def commits(monkeypatch: pytest.MonkeyPatch) -> Iterator[Commits]:
    watched = Commits()
    real = committer_module.commit_batch

    def watching(index: Any, store: Any, items: list[Any], **kwargs: Any) -> Any:
        watched.seen.append((threading.current_thread().name, len(items)))
        if watched.gate is not None and len(watched.seen) == 1:
            assert watched.gate.wait(10)
        return real(index, store, items, **kwargs)

    monkeypatch.setattr(committer_module, "commit_batch", watching)
    yield watched
    if watched.gate is not None:
        watched.gate.set()  # never leave a commit waiting


async def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def _request(archive: Archive) -> asyncio.Future[StoreOutcome]:
    """An instance prepared, then committed as STOW commits it (on the event loop)."""
    return asyncio.ensure_future(archive.ingest.commit(*await archive.prepared(make_instance())))


def _queued(archive: Archive) -> int:
    return len(archive.committer._queue)


def _stored(archive: Archive, outcome: StoreOutcome) -> bool:
    return bool(archive.index.find_instances(1, outcome.study_instance_uid))


class Associations:
    """Threads committing as DICOM associations do (``IngestService.commit_here``), named assoc-N."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.pool = ThreadPoolExecutor(8, thread_name_prefix="assoc")

    async def commit(self, data: bytes) -> asyncio.Future[StoreOutcome]:
        outcome, prepared = await self.archive.prepared(data)
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self.pool, self.archive.ingest.commit_here, outcome, prepared)


@pytest.fixture
def associations(archive: Archive) -> Iterator[Associations]:
    threads = Associations(archive)
    yield threads
    threads.pool.shutdown(wait=True)


async def _held(
    archive: Archive, commits: Commits, associations: Associations, *, threads: int, requests: int
) -> tuple[
    asyncio.Future[StoreOutcome], list[asyncio.Future[StoreOutcome]], list[asyncio.Future[StoreOutcome]]
]:
    """The first commit (one association's instance) held at the gate, then ``threads`` associations
    and ``requests`` STOW requests queued behind it."""
    commits.gate = threading.Event()
    first = await associations.commit(make_instance())
    await _until(lambda: len(commits.seen) == 1)
    waiting_threads = [await associations.commit(make_instance()) for _ in range(threads)]
    waiting_requests = [await _request(archive) for _ in range(requests)]
    await _until(lambda: _queued(archive) == threads + requests)
    return first, waiting_threads, waiting_requests


async def test_a_thread_that_finds_no_commit_running_commits_its_instance_itself(
    archive: Archive, commits: Commits, associations: Associations
) -> None:
    outcomes = [await (await associations.commit(make_instance())) for _ in range(3)]
    assert all(o.stored for o in outcomes)
    assert all(_stored(archive, o) for o in outcomes)
    assert commits.sizes() == [1, 1, 1]
    assert all(name.startswith("assoc") for name in commits.thread_names()), commits.seen


async def test_callers_arriving_during_a_commit_share_the_next_one_led_by_a_waiting_thread(
    archive: Archive, commits: Commits, associations: Associations
) -> None:
    first, threads, requests = await _held(archive, commits, associations, threads=3, requests=3)
    commits.gate.set()
    outcomes = [await first] + [await f for f in threads] + list(await asyncio.gather(*requests))
    assert all(o.stored for o in outcomes), [o.messages for o in outcomes]
    assert all(_stored(archive, o) for o in outcomes)
    assert len({o.sop_instance_uid for o in outcomes}) == 7  # each caller got its own instance's outcome
    assert commits.sizes() == [1, 6]
    first_name, second_name = commits.thread_names()
    assert first_name.startswith("assoc") and second_name.startswith("assoc") and first_name != second_name


async def test_the_committers_own_thread_leads_when_only_the_loop_waits(
    archive: Archive, commits: Commits, associations: Associations
) -> None:
    first, _, requests = await _held(archive, commits, associations, threads=0, requests=4)
    commits.gate.set()
    assert (await first).stored
    assert all(o.stored for o in await asyncio.gather(*requests))
    assert commits.sizes() == [1, 4]
    assert commits.thread_names()[1].startswith("dicomd-commit")
    # and a STOW alone is committed there too
    assert (await archive.stow(make_instance())).stored
    assert commits.thread_names()[2].startswith("dicomd-commit")


async def test_instances_queued_in_the_same_round_of_the_loop_as_the_first_share_its_commit(
    archive: Archive, commits: Commits
) -> None:
    # a request's parts received at once: each prepared and committed by a task of its own, all ready
    # in one round of the loop, which also writes files (the GIL released: the commit thread could run)
    prepared = [await archive.prepared(make_instance()) for _ in range(4)]

    async def after_a_file_write(outcome: StoreOutcome, item: Any) -> StoreOutcome:
        time.sleep(0.05)
        return await archive.ingest.commit(outcome, item)

    tasks = [asyncio.ensure_future(archive.ingest.commit(*prepared[0]))]
    tasks += [asyncio.ensure_future(after_a_file_write(*p)) for p in prepared[1:]]
    assert all(o.stored for o in await asyncio.gather(*tasks))
    assert commits.sizes() == [4]  # the commit starts once that round is over: one flush, not two


async def test_when_no_commit_thread_can_start_the_request_fails_instead_of_waiting_for_good(
    archive: Archive,
) -> None:
    assert archive.committer._thread is not None
    archive.committer._thread.shutdown(wait=True)  # as at interpreter exit: no new thread work
    outcome = await asyncio.wait_for(archive.stow(make_instance()), 10)
    assert not outcome.stored
    assert outcome.messages == ["the instance could not be committed: RuntimeError"]
    assert archive.staged() == []
    archive.committer.start()  # the lead was given up: a new thread commits the next one
    assert (await asyncio.wait_for(archive.stow(make_instance()), 10)).stored


async def test_a_failed_commit_fails_each_of_its_callers_of_both_kinds_and_the_next_one_stores(
    archive: Archive, commits: Commits, associations: Associations, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, threads, requests = await _held(archive, commits, associations, threads=2, requests=2)
    real_sync = archive.store.sync

    def sync_failing_for_the_second(keys: list[str]) -> None:
        if len(commits.seen) == 2:  # e.g. ext4 reporting ENOSPC at writeback
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_sync(keys)

    monkeypatch.setattr(archive.store, "sync", sync_failing_for_the_second)
    commits.gate.set()
    assert (await first).stored
    failed = [await f for f in threads] + list(await asyncio.gather(*requests))
    assert [o.failure_reason for o in failed] == [OUT_OF_RESOURCES] * 4
    assert not any(_stored(archive, o) for o in failed)
    assert archive.staged() == []
    assert commits.sizes() == [1, 4]
    # the lead was given up: the next callers commit, of both kinds
    assert (await (await associations.commit(make_instance()))).stored
    assert (await archive.stow(make_instance())).stored


async def test_a_stop_ends_the_running_commit_fails_the_queued_and_refuses_later_ones(
    archive: Archive, commits: Commits, associations: Associations
) -> None:
    first, (thread,), (request,) = await _held(archive, commits, associations, threads=1, requests=1)
    stopping = asyncio.ensure_future(archive.committer.stop())
    await _until(lambda: _queued(archive) == 0)
    await asyncio.sleep(0.05)
    assert not stopping.done()  # it waits for the running commit
    commits.gate.set()
    await stopping
    assert (await first).stored
    for outcome in (await thread, await request):
        assert not outcome.stored
        assert outcome.messages == [_SHUTTING_DOWN]
    assert commits.sizes() == [1]
    later = await associations.commit(make_instance())
    assert (await later).messages == [_SHUTTING_DOWN]
    assert (await archive.stow(make_instance())).messages == [_SHUTTING_DOWN]


async def test_many_threads_and_requests_at_once_each_get_their_own_outcome(
    archive: Archive, associations: Associations
) -> None:
    data = [make_instance() for _ in range(48)]
    threads = [await associations.commit(d) for d in data[:24]]
    requests = [asyncio.ensure_future(archive.stow(d)) for d in data[24:]]
    outcomes = [await f for f in threads] + list(await asyncio.gather(*requests))
    assert all(o.stored for o in outcomes)
    assert len({o.sop_instance_uid for o in outcomes}) == 48
    assert all(_stored(archive, o) for o in outcomes)
    assert archive.staged() == []


class _Crash(BaseException):
    """Not an Exception: what the committer does not catch (say, a KeyboardInterrupt in that thread)."""


async def test_a_leader_whose_commit_of_others_crashes_leaves_the_lead_to_the_next_callers(
    archive: Archive, commits: Commits, associations: Associations, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive.committer.max_batch = 1  # so the thread handed the lead commits the request's batch first
    first, _, (request,) = await _held(archive, commits, associations, threads=0, requests=1)
    handed = await associations.commit(make_instance())
    await _until(lambda: _queued(archive) == 2)  # the request, then the association
    real_sync = archive.store.sync

    def crashing_for_the_second(keys: list[str]) -> None:
        if len(commits.seen) == 2:
            raise _Crash
        real_sync(keys)

    monkeypatch.setattr(archive.store, "sync", crashing_for_the_second)
    commits.gate.set()  # type: ignore[union-attr]
    assert (await first).stored
    with pytest.raises(_Crash):
        await handed  # its caller learns it failed ...
    with pytest.raises(_Crash):
        await request
    assert commits.sizes() == [1, 1]  # ... and it was not handed the lead again: nothing hangs
    outcome, prepared = await archive.prepared(make_instance())
    later: list[StoreOutcome] = []
    caller = threading.Thread(
        target=lambda: later.append(archive.ingest.commit_here(outcome, prepared)), daemon=True
    )
    caller.start()
    caller.join(10)
    assert later and later[0].stored, "a later association waits for a lead nobody holds"
    assert (await asyncio.wait_for(archive.stow(make_instance()), 10)).stored


async def test_a_thread_that_took_the_lead_as_the_committer_stops_is_told_it_is_shutting_down(
    archive: Archive, associations: Associations, monkeypatch: pytest.MonkeyPatch
) -> None:
    committer = archive.committer
    real_enqueue = committer._enqueue

    def enqueue_then_wait_for_the_stop(waiter: Any) -> bool:
        took = real_enqueue(waiter)
        deadline = time.monotonic() + 10
        while not (committer._closed and not committer._queue) and time.monotonic() < deadline:
            time.sleep(0.001)  # the stop clears the queue while this thread holds the lead, unled
        return took

    real_failed = committer._failed

    def failed_slowly(batch: list[Any], exc: BaseException) -> None:
        time.sleep(0.2)  # widens the window between the stop clearing the queue and failing it
        real_failed(batch, exc)

    monkeypatch.setattr(committer, "_enqueue", enqueue_then_wait_for_the_stop)
    monkeypatch.setattr(committer, "_failed", failed_slowly)
    leader = await associations.commit(make_instance())
    await _until(lambda: committer._leading)
    await asyncio.wait_for(committer.stop(), 10)
    outcome = await leader
    assert not outcome.stored
    assert outcome.messages == [_SHUTTING_DOWN]


async def test_a_lone_requests_last_part_is_committed_by_the_event_loop_itself(
    archive: Archive, commits: Commits
) -> None:
    archive.ingest.lone_request = lambda: True
    loop_thread = threading.current_thread().name
    outcome = await archive.ingest.commit(*await archive.prepared(make_instance()), last_part=True)
    assert outcome.stored and _stored(archive, outcome)
    assert commits.thread_names() == [loop_thread]  # no hand-off to the committer's thread
    assert archive.staged() == []
    # a part with more of its request to come, or a worker with other requests: the committer's thread
    assert (await archive.ingest.commit(*await archive.prepared(make_instance()), last_part=False)).stored
    archive.ingest.lone_request = lambda: False
    assert (await archive.ingest.commit(*await archive.prepared(make_instance()), last_part=True)).stored
    assert [name.startswith("dicomd-commit") for name in commits.thread_names()] == [False, True, True]


async def test_a_lone_request_that_finds_a_commit_running_waits_for_the_next_one(
    archive: Archive, commits: Commits, associations: Associations
) -> None:
    archive.ingest.lone_request = lambda: True
    first, _, _ = await _held(archive, commits, associations, threads=0, requests=0)
    lone = asyncio.ensure_future(
        archive.ingest.commit(*await archive.prepared(make_instance()), last_part=True)
    )
    await _until(lambda: _queued(archive) == 1)  # queued: the loop did not block on the running commit
    commits.gate.set()  # type: ignore[union-attr]
    assert (await first).stored
    assert (await lone).stored
    assert commits.sizes() == [1, 1]
    assert commits.thread_names()[1].startswith("dicomd-commit")


async def test_a_failed_commit_on_the_loop_fails_its_request_and_leaves_the_lead_free(
    archive: Archive, commits: Commits, associations: Associations, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive.ingest.lone_request = lambda: True
    real_sync = archive.store.sync

    def sync_failing_once(keys: list[str]) -> None:
        if len(commits.seen) == 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_sync(keys)

    monkeypatch.setattr(archive.store, "sync", sync_failing_once)
    failed = await archive.ingest.commit(*await archive.prepared(make_instance()), last_part=True)
    assert failed.failure_reason == OUT_OF_RESOURCES
    assert not _stored(archive, failed)
    assert archive.staged() == []
    assert (await (await associations.commit(make_instance()))).stored
    assert (await archive.ingest.commit(*await archive.prepared(make_instance()), last_part=True)).stored


async def test_the_loop_leaves_to_the_committers_thread_a_large_instance_a_slow_sync_or_no_shared_flush(
    archive: Archive, commits: Commits, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive.ingest.lone_request = lambda: True
    committer = archive.committer
    assert committer.shared_flush is not None  # the embedded default: SQLite beside the files

    async def lone() -> str:
        outcome = await archive.ingest.commit(*await archive.prepared(make_instance()), last_part=True)
        assert outcome.stored
        return commits.thread_names()[-1]

    loop_thread = threading.current_thread().name
    assert await lone() == loop_thread
    limit = committer_module.LOOP_COMMIT_MAX_BYTES
    monkeypatch.setattr(committer_module, "LOOP_COMMIT_MAX_BYTES", 100)  # each instance is larger
    assert (await lone()).startswith("dicomd-commit")
    monkeypatch.setattr(committer_module, "LOOP_COMMIT_MAX_BYTES", limit)
    committer._last_commit_seconds = 1.0  # say, a syncfs that wrote back others' dirty pages
    assert (await lone()).startswith("dicomd-commit")
    assert committer._last_commit_seconds < 1.0  # that commit's own time
    monkeypatch.setattr(committer_module, "LOOP_COMMIT_MAX_SECONDS", 0.9)  # however slow this disk
    assert await lone() == loop_thread
    monkeypatch.setattr(committer, "shared_flush", None)  # PostgreSQL, or a cloud object store
    assert (await lone()).startswith("dicomd-commit")
