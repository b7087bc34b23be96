"""Background jobs on a real index (SQLite and PostgreSQL) and a real local object store: the orphan sweep
(what it removes, what it keeps, one pass at a time across processes), concurrent claims of the cleanup
queue, the back-off schedule."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomd.index import Index
from dicomd.jobs.schedule import MAX_BACKOFF, next_delay
from dicomd.jobs.sweep import LEASE, OrphanSweep
from dicomd.storage.local import LocalObjectStore

from support.backends import BACKENDS, PG_URL
from support.index_rows import make_parsed, new, open_index

HOUR = 3600.0


@pytest.fixture(params=BACKENDS)
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Index]:
    with open_index(request.param, tmp_path) as idx:
        yield idx


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalObjectStore]:
    found = LocalObjectStore(tmp_path / "objects")
    yield found
    found.close()


def _put(store: LocalObjectStore, age: float) -> str:
    """A published object (DICOM and metadata) last modified ``age`` seconds ago."""
    key = store.new_key()
    source = store.root / "source.dcm"
    source.write_bytes(b"DICM" * 64)
    store.stage_file(key, str(source))
    store.stage_metadata(key, b"{}")
    store.sync([key])
    store.publish([key])
    then = time.time() - age
    for suffix in ("dcm", "json"):
        os.utime(store.path(key, suffix), (then, then))
    return key


def _present(store: LocalObjectStore, key: str) -> bool:
    return store.path(key).exists() or store.path(key, "json").exists()


def test_the_sweep_removes_old_objects_that_no_index_row_names(index: Index, store: LocalObjectStore) -> None:
    indexed, queued, young_orphan = _put(store, HOUR), _put(store, HOUR), _put(store, 10)
    orphans = [_put(store, HOUR) for _ in range(7)]
    index.add_instances([new(make_parsed(study="1.2.3", sop="1.2.3.1"), indexed)], overwrite=False)
    index.add_instances([new(make_parsed(study="1.2.4", sop="1.2.4.1"), queued)], overwrite=False)
    index.delete(1, "1.2.4")  # queued for the cleanup job, which removes it after the delete grace period

    result = OrphanSweep(index, store, grace_period=60, batch=3).run_once()  # several batches

    assert result is not None and (result.checked, result.removed) == (9, 7)
    assert not any(_present(store, key) for key in orphans)
    assert _present(store, indexed) and _present(store, queued)
    assert _present(store, young_orphan)  # perhaps an upload whose commit is on its way
    again = OrphanSweep(index, store, grace_period=60).run_once()
    assert again is not None and again.removed == 0


def test_one_sweep_pass_at_a_time_across_processes(index: Index, store: LocalObjectStore) -> None:
    orphan = _put(store, HOUR)
    other = Index(index.url.render_as_string(hide_password=False))  # another process's connections/files
    try:
        with other.job_lease(LEASE) as held:
            assert held
            assert OrphanSweep(index, store, grace_period=60).run_once() is None
            assert _present(store, orphan)
        with other.job_lease(LEASE) as held_again:  # released: free again
            assert held_again
    finally:
        other.close()
    result = OrphanSweep(index, store, grace_period=60).run_once()
    assert result is not None and result.removed == 1


_HOLDER = """
import sys, time
from dicomd.index import Index
index = Index(sys.argv[1])
with index.job_lease(sys.argv[2]) as held:
    print("held" if held else "refused", flush=True)
    time.sleep(60)
"""


def test_a_lease_dies_with_its_holder(index: Index) -> None:
    """A replica killed while sweeping (SIGKILL: no clean-up) leaves the lease free at once."""
    url = index.url.render_as_string(hide_password=False)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, url, LEASE], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        with index.job_lease(LEASE) as held:
            assert not held
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 5  # PostgreSQL ends the session when its socket closes
    while True:
        with index.job_lease(LEASE) as held:
            if held or time.monotonic() > deadline:
                break
        time.sleep(0.05)
    assert held


@pytest.mark.skipif(not PG_URL, reason="DICOMD_TEST_POSTGRES_URL not set")
def test_concurrent_cleanup_claims_take_disjoint_rows(tmp_path: Path) -> None:
    with open_index("postgresql", tmp_path) as idx:
        for n in range(120):
            idx.add_instances(
                [new(make_parsed(study=f"1.2.{n}", sop=f"1.2.{n}.1"), f"key{n}")], overwrite=False
            )
            idx.delete(1, f"1.2.{n}")
        claimed: list[list[tuple[int, str]]] = [[] for _ in range(4)]
        start = threading.Barrier(4)

        def claim(worker: int) -> None:
            start.wait()
            while batch := idx.claim_deleted_objects(7):
                claimed[worker] += batch

        threads = [threading.Thread(target=claim, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        keys = [key for rows in claimed for _, key in rows]
        assert sorted(keys) == sorted(f"key{n}" for n in range(120))  # each exactly once


def test_back_off_grows_with_failures_and_is_bounded() -> None:
    assert 8.0 <= next_delay(10, 0) <= 12.0
    assert 16.0 <= next_delay(10, 1) <= 24.0
    assert 32.0 <= next_delay(10, 2) <= 48.0
    assert next_delay(10, 50) <= MAX_BACKOFF * 1.2
    assert next_delay(900, 3) >= 900 * 0.8  # never shorter than the interval
    assert len({next_delay(600, 0) for _ in range(20)}) > 1  # jitter: replicas do not wake together
