"""One device flush per group commit (ingest/shared_flush.py): where the SQLite index shares the objects'
file system, the index commits without flushing its WAL and one syncfs after the commit covers both. A
crash between the two may keep the commit and lose a file: the commit records each file's size and CRC-32,
and recovery of the dead process's staging area rolls back every instance whose file is not whole (never
acknowledged: the acknowledgement waits for the syncfs). Real SQLite and real files; the crash is the
moment between the commit and the sync, reproduced by committing as the committer does and stopping
there, then cutting the files short as a power loss could."""

from __future__ import annotations

import ctypes
import errno
import os
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from dicomd.index import Index
from dicomd.index.types import UnsyncedBatch
from dicomd.ingest import shared_flush
from dicomd.ingest.bulk_import import import_files
from dicomd.ingest.shared_flush import SharedFlush
from dicomd.storage import local
from dicomd.storage.local import LocalObjectStore

from support.dicom_files import make_instance, new_uid
from support.ingest_archive import Archive, started_archive


@pytest.fixture
async def archive(tmp_path: Path) -> AsyncIterator[Archive]:
    async for started in started_archive(tmp_path):
        yield started


def _synchronous_of_pooled_connections(index: Index) -> set[int]:
    levels = set()
    conns = [index.engine.connect() for _ in range(3)]
    for conn in conns:
        levels.add(int(conn.exec_driver_sql("PRAGMA synchronous").scalar_one()))
        conn.close()
    return levels


async def test_one_flush_applies_only_where_one_syncfs_covers_the_index(tmp_path: Path) -> None:
    shared = Archive(tmp_path / "shared")
    assert shared.committer.shared_flush is not None
    overwrite = Archive(tmp_path / "overwrite", overwrite=True)
    # a rolled-back replacement would lose the version it replaced: two flushes
    assert overwrite.committer.shared_flush is None
    for archive in (shared, overwrite):
        archive.close()
    shm = Path("/dev/shm")
    if shm.is_dir() and os.stat(shm).st_dev != os.stat(tmp_path).st_dev:
        index_dir = shm / f"dicomd-test-{new_uid()}"
        index_dir.mkdir()
        try:
            apart = Archive(tmp_path / "apart", index_dir=index_dir)
            assert apart.committer.shared_flush is None  # a syncfs of the objects misses the index
            apart.close()
        finally:
            for path in index_dir.iterdir():
                path.unlink()
            index_dir.rmdir()


async def test_a_commit_records_its_files_until_later_commits_after_their_syncs(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared_flush, "_FORGET_AFTER", 2)
    _, unflushed = archive.index.engines
    opened: list[Any] = []  # the driver's connections it opened
    event.listen(unflushed, "connect", lambda conn, _record: opened.append(conn))
    area = archive.store.staging_area
    data = [make_instance() for _ in range(3)]
    outcome = await archive.ingest.commit(*await archive.prepared(data[0]))
    assert outcome.stored
    [(key, size, checksum)] = archive.index.unsynced_objects(area)
    assert (size, checksum) == (len(data[0]), zlib.crc32(data[0]))
    [stored] = archive.index.find_instances(1, outcome.study_instance_uid)
    assert stored.object_key == key
    assert archive.store.read(key) == data[0]  # published after the sync
    await archive.ingest.commit(*await archive.prepared(data[1]))
    assert len(archive.index.unsynced_objects(area)) == 2
    await archive.ingest.commit(*await archive.prepared(data[2]))  # forgets the first two
    [(_, size, checksum)] = archive.index.unsynced_objects(area)
    assert (size, checksum) == (len(data[2]), zlib.crc32(data[2]))
    # commits that do not flush are the group commit's alone, on one connection of their own held
    # between them: every other transaction still flushes
    assert _synchronous_of_pooled_connections(archive.index) == {2}  # FULL
    [committing] = opened
    assert committing.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    await archive.committer.stop()  # a clean stop forgets the rest: no recovery reads them back
    assert archive.index.unsynced_objects(area) == []


async def test_recovery_rolls_back_instances_whose_files_a_crash_lost(tmp_path: Path) -> None:
    dead = Archive(tmp_path)
    flush = dead.committer.shared_flush
    assert flush is not None
    study = new_uid()
    data = [make_instance(study=study) for _ in range(4)]
    items = [(await dead.prepared(d))[1] for d in data]
    keys = [p.item.object_key for p in items]
    # the group commit's transaction, then the crash before its syncfs
    results = dead.index.add_instances(items, overwrite=False, unsynced=flush.batch(keys))
    assert [r.status for r in results] == ["created"] * 4
    area = dead.store.staging_area
    intact, cut_short, emptied, missing = (dead.store.staged_path(k) for k in keys)
    os.truncate(cut_short, len(data[1]) // 2)
    with open(emptied, "r+b") as f:  # the right size, but its blocks never written: zeros
        f.write(bytes(len(data[2])))
    missing.unlink()
    dead.store.close()  # the process is gone: its staging area's lock with it

    survivor = LocalObjectStore(tmp_path / "objects")
    published, removed = shared_flush.recover(dead.index, survivor)
    stored = dead.index.find_instances(1, study)
    assert [s.object_key for s in stored] == [keys[0]]
    assert survivor.read(keys[0]) == data[0]
    assert (published, removed) == (1, 3)  # the missing DICOM file's metadata file was staged too
    assert dead.index.unsynced_objects(area) == []
    assert not intact.exists()  # moved into place
    changes = dead.index.changefeed(offset=0, limit=100, v2=False)
    assert [c.action for c in changes] == ["Create"] * 4 + ["Delete"] * 3
    assert {c.object_key for c in changes if c.action == "Delete"} == set(keys[1:])
    # the queue of objects to remove names the rolled-back keys (whatever is left of them)
    queued = {key for _, key in dead.index.claim_deleted_objects(100)}
    assert queued == set(keys[1:])
    survivor.close()
    dead.index.close()


async def test_recovery_keeps_every_instance_whose_sync_came(tmp_path: Path) -> None:
    """A crash after the syncs: the rows left for the area name whole files, read back and kept."""
    archive = Archive(tmp_path)
    archive.committer.start()
    study = new_uid()
    for _ in range(3):
        outcome = await archive.ingest.commit(*await archive.prepared(make_instance(study=study)))
        assert outcome.stored
    area = archive.store.staging_area
    assert len(archive.index.unsynced_objects(area)) == 3
    archive.store.close()  # the process dies: its committer never stops

    survivor = LocalObjectStore(tmp_path / "objects")
    shared_flush.recover(archive.index, survivor)
    assert len(archive.index.find_instances(1, study)) == 3
    assert archive.index.unsynced_objects(area) == []
    changes = archive.index.changefeed(offset=0, limit=100, v2=False)
    assert [c.action for c in changes] == ["Create"] * 3
    survivor.close()
    await archive.committer.stop()
    archive.index.close()


async def test_a_failed_sync_after_the_commit_rolls_the_batch_back(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_sync(keys: object) -> None:  # a write-back error reported by syncfs
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(archive.store, "sync", failing_sync)
    data = make_instance()
    outcome = await archive.ingest.commit(*await archive.prepared(data))
    assert not outcome.stored
    assert archive.index.find_instances(1, outcome.study_instance_uid) == []
    assert archive.index.unsynced_objects(archive.store.staging_area) == []
    changes = archive.index.changefeed(offset=0, limit=10, v2=False)
    assert [c.action for c in changes] == ["Create", "Delete"]  # it was visible for a moment
    assert archive.store.staged_names() == []
    monkeypatch.undo()
    again = await archive.ingest.commit(*await archive.prepared(data))  # the sender's retry
    assert again.stored
    assert isinstance(archive.committer.shared_flush, SharedFlush)


def _fail_the_next_syncfs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next syncfs reports a write-back error (EIO), as the kernel does once per descriptor."""
    real_syncfs = local._syncfs
    assert real_syncfs is not None  # (shared flush is only used where the kernel has syncfs)
    failures = [errno.EIO]

    def syncfs(fd: int) -> int:
        if failures:
            ctypes.set_errno(failures.pop())
            return -1
        return int(real_syncfs(fd))

    monkeypatch.setattr(local, "_syncfs", syncfs)


def _wal_checkpoint_sequence(wal: Path) -> int:
    """The WAL header's checkpoint sequence number: it grows each time the WAL starts afresh."""
    with wal.open("rb") as f:
        return int.from_bytes(f.read(16)[12:16], "big")


async def test_a_failed_syncfs_fails_the_batches_staged_before_it_too(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    # syncfs writes back every dirty file of the file system and reports an error once per descriptor:
    # the error a batch's syncfs gets may be the lost write-back of a file another batch had staged,
    # whose own syncfs (the same descriptor) then succeeds. That batch must not be acknowledged.
    first, staged_meanwhile = make_instance(), make_instance()
    early = await archive.prepared(staged_meanwhile)  # staged while the first batch commits
    _fail_the_next_syncfs(monkeypatch)
    failed = await archive.ingest.commit(*await archive.prepared(first))
    assert not failed.stored
    outcome = await archive.ingest.commit(*early)  # its syncfs succeeds
    assert not outcome.stored
    assert archive.index.find_instances(1, outcome.study_instance_uid) == []
    assert archive.store.staged_names() == []
    # staged after the failure: stored, and so is the retry of either
    for data in (make_instance(), staged_meanwhile, first):
        assert (await archive.ingest.commit(*await archive.prepared(data))).stored


async def test_after_a_failed_syncfs_the_next_commit_starts_the_wal_afresh(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the error may have been the WAL's own write-back: SQLite's recovery stops at the first bad frame and
    # drops every later one, so the next batch's frames (acknowledged after their syncfs) must not follow
    # them: the WAL goes into the database file, flushed, and the next commit writes it from its start
    assert (await archive.ingest.commit(*await archive.prepared(make_instance()))).stored
    assert archive.index.sqlite_file is not None
    wal = Path(f"{archive.index.sqlite_file}-wal")
    before = _wal_checkpoint_sequence(wal)
    _fail_the_next_syncfs(monkeypatch)
    assert not (await archive.ingest.commit(*await archive.prepared(make_instance()))).stored
    assert _wal_checkpoint_sequence(wal) == before  # the rollback followed the frames in question
    stored = await archive.ingest.commit(*await archive.prepared(make_instance()))
    assert stored.stored
    assert _wal_checkpoint_sequence(wal) > before
    assert len(archive.index.find_instances(1, stored.study_instance_uid)) == 1


def test_dicomd_import_commits_ahead_of_its_flush_with_its_copies_checksums(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sources = tmp_path / "in"
    sources.mkdir()
    data = {}
    for i in range(5):
        data[i] = make_instance()
        (sources / f"{i}.dcm").write_bytes(data[i])
    index = Index(f"sqlite:///{tmp_path / 'index.db'}")
    index.migrate()
    store = LocalObjectStore(tmp_path / "objects")
    recorded: list[UnsyncedBatch] = []
    real_add = index.add_instances

    def watched_add(*args: Any, **kwargs: Any) -> Any:
        recorded.append(kwargs["unsynced"])
        return real_add(*args, **kwargs)

    monkeypatch.setattr(index, "add_instances", watched_add)
    # the checksums come from the parsers' copies: never read back in the committing process
    monkeypatch.setattr(local, "file_checksum", None)
    report = import_files([sources], index, store, processes=1, batch=2)
    assert report.stored == 5
    # batches of 2 or more (one grows while the previous one commits), the last one maybe smaller
    assert len(recorded) >= 2 and all(b is not None for b in recorded)
    assert {c for b in recorded for c in b.checksums.values()} == {
        (len(d), zlib.crc32(d)) for d in data.values()
    }
    assert index.unsynced_objects(store.staging_area) == []  # forgotten at the end: all synced
    store.close()
    index.close()
