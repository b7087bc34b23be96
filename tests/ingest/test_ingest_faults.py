"""Faults on the store path, in process: each failure point of a STOW instance (staging its file, staging
its metadata, the sync, the index transaction, the publish rename) fails only the instances it concerns,
with 0xA700 Out of Resources when the disk is full and 0x0110 otherwise, and leaves nothing staged. The
index is real SQLite made full for real (max_page_count); a failing sync and rename cannot be provoked on
this machine's file systems, so those two are injected. The end-to-end run on a full tmpfs is in
tests/e2e/test_disk_full.py."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg.errors
import pytest
import sqlalchemy.exc

from dicomd.dicom.status import OUT_OF_RESOURCES, PROCESSING_FAILURE
from dicomd.ingest import committer as committer_module
from dicomd.ingest.committer import same_bytes
from dicomd.ingest.prepare import StoreOutcome, fault_reason
from dicomd.storage import local

from support.dicom_files import make_instance, new_uid
from support.ingest_archive import Archive, started_archive

FULL = "out of storage space"


def enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# ---- classification ------------------------------------------------------------------------------


def test_out_of_resources_is_told_from_other_faults() -> None:
    assert fault_reason(enospc()) == OUT_OF_RESOURCES
    assert fault_reason(OSError(errno.EDQUOT, "Disk quota exceeded")) == OUT_OF_RESOURCES
    assert fault_reason(OSError(errno.EIO, "Input/output error")) == PROCESSING_FAILURE
    assert fault_reason(ValueError("bug")) == PROCESSING_FAILURE
    # PostgreSQL's disk_full, as SQLAlchemy wraps it
    wrapped = sqlalchemy.exc.OperationalError("INSERT", {}, psycopg.errors.DiskFull("could not extend file"))
    assert fault_reason(wrapped) == OUT_OF_RESOURCES
    assert fault_reason(sqlalchemy.exc.OperationalError("INSERT", {}, ValueError())) == PROCESSING_FAILURE
    # found among the causes
    try:
        try:
            raise enospc()
        except OSError as exc:
            raise RuntimeError("while writing") from exc
    except RuntimeError as exc:
        assert fault_reason(exc) == OUT_OF_RESOURCES


# ---- the store path, in process ------------------------------------------------------------------


@pytest.fixture
async def archive(tmp_path: Path) -> AsyncIterator[Archive]:
    async for started in started_archive(tmp_path):
        yield started


def _stored(archive: Archive, outcome: StoreOutcome) -> bool:
    return bool(archive.index.find_instances(1, outcome.study_instance_uid))


async def test_a_full_index_fails_its_batch_with_out_of_resources_then_recovers(archive: Archive) -> None:
    assert (await archive.stow(make_instance())).stored
    archive.fill_index()
    outcomes = [await archive.stow(make_instance(study=new_uid())) for _ in range(20)]
    failed = [o for o in outcomes if not o.stored]
    assert failed, "the index never got full"
    for outcome in failed:
        assert outcome.failure_reason == OUT_OF_RESOURCES
        assert outcome.messages == [f"the instance could not be committed: {FULL}"]
        assert outcome.sop_instance_uid  # the response names the instance
        assert not _stored(archive, outcome)
    assert archive.staged() == []
    archive.free_index()
    data = make_instance()
    assert (await archive.stow(data)).stored


async def test_a_failed_sync_stores_nothing_of_its_batch(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_sync(keys: object) -> None:  # e.g. ext4 reporting ENOSPC at writeback
        raise enospc()

    monkeypatch.setattr(archive.store, "sync", failing_sync)
    outcome = await archive.stow(make_instance())
    assert (outcome.failure_reason, outcome.messages) == (
        OUT_OF_RESOURCES,
        [f"the instance could not be committed: {FULL}"],
    )
    assert not _stored(archive, outcome)
    assert archive.staged() == []
    monkeypatch.undo()
    assert (await archive.stow(make_instance())).stored


async def test_other_sync_faults_are_processing_failures(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_sync(keys: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(archive.store, "sync", failing_sync)
    outcome = await archive.stow(make_instance())
    assert (outcome.failure_reason, outcome.messages) == (
        PROCESSING_FAILURE,
        ["the instance could not be committed: OSError"],
    )
    assert archive.staged() == []


async def test_a_failed_publish_rename_still_stores(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_publish(keys: Iterator[str], area: str | None = None) -> None:
        raise enospc()

    monkeypatch.setattr(archive.store, "publish", failing_publish)
    data = make_instance()
    outcome = await archive.stow(data)
    assert outcome.stored  # committed and durable in staging, where readers find it
    [stored] = archive.index.find_instances(1, outcome.study_instance_uid)
    assert archive.store.read(stored.object_key) == data


async def test_a_failed_metadata_write_fails_the_instance_by_name(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(path: str, data: bytes) -> None:
        with open(path, "wb") as f:
            f.write(data[:10])  # what fitted
        raise enospc()

    monkeypatch.setattr(local, "write_file", full)
    sop = new_uid()
    outcome = await archive.stow(make_instance(sop=sop))
    assert (outcome.failure_reason, outcome.sop_instance_uid) == (OUT_OF_RESOURCES, sop)
    assert outcome.messages == [f"its metadata could not be staged: {FULL}"]
    assert archive.staged() == []


async def test_a_part_that_cannot_be_staged_is_read_to_its_end_and_leaves_nothing(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[int] = []
    real_write_all = local.write_all

    def filling(fd: int, data: bytes | memoryview) -> None:
        if written:
            raise enospc()
        written.append(len(data))
        real_write_all(fd, data)

    monkeypatch.setattr(local, "write_all", filling)
    received: list[bytes] = []

    async def body() -> AsyncIterator[bytes]:
        for chunk in (b"a" * 100, b"b" * 100, b"c" * 100, b"d" * 100):
            received.append(chunk)
            yield chunk

    with pytest.raises(OSError) as failure:
        await archive.ingest.stage(body())
    assert fault_reason(failure.value) == OUT_OF_RESOURCES
    assert len(received) == 4  # the rest of the part was read (and dropped): the next part follows
    assert archive.staged() == []


async def test_a_file_that_cannot_be_created_is_read_to_its_end(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_inode(path: str) -> int:
        raise enospc()

    monkeypatch.setattr(local, "create_file", no_inode)
    received: list[bytes] = []

    async def body() -> AsyncIterator[bytes]:
        for chunk in (b"a", b"b"):
            received.append(chunk)
            yield chunk

    with pytest.raises(OSError):
        await archive.ingest.stage(body())
    assert received == [b"a", b"b"]


# ---- comparing a re-sent instance with the stored one ----------------------------------------------


async def test_same_bytes_compares_whole_files(archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dicomd.ingest.committer._COMPARE_CHUNK", 1000)  # several chunks per file
    data = make_instance(rows=64, columns=64)
    outcome = await archive.stow(data)
    [stored] = archive.index.find_instances(1, outcome.study_instance_uid)

    def staged(content: bytes) -> str:
        part_key = "k" + os.urandom(8).hex()
        Path(archive.store.staged_file(part_key)).write_bytes(content)
        return part_key

    assert same_bytes(archive.store, stored.object_key, staged(data))
    assert not same_bytes(archive.store, stored.object_key, staged(data[:-1] + b"\x01"))
    assert not same_bytes(archive.store, stored.object_key, staged(data[:5000] + b"\x01" + data[5001:]))
    assert not same_bytes(archive.store, "missing", staged(data))  # a lost file is not the same


async def test_a_resent_instance_is_compared_outside_the_writer_lock(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The comparison reads the whole stored file (GBs, from a remote store): under the index's writer
    lock, cluster-wide on PostgreSQL, every other writer would wait for it. (A small local file is
    compared under the lock: that spares every commit a query.)"""
    monkeypatch.setattr(committer_module, "_COMPARE_IN_LOCK_MAX", 0)  # as for a large file
    data = make_instance()
    await archive.stow(data)
    in_lock = False
    write = archive.index._write

    @contextlib.contextmanager
    def watched_write(**kwargs: Any) -> Iterator[Any]:
        nonlocal in_lock
        with write(**kwargs) as conn:
            in_lock = True
            try:
                yield conn
            finally:
                in_lock = False

    compared: list[bool] = []
    real_same_bytes = committer_module.same_bytes

    def spying(*args: Any) -> bool:
        compared.append(in_lock)
        return real_same_bytes(*args)

    monkeypatch.setattr(archive.index, "_write", watched_write)
    monkeypatch.setattr(committer_module, "same_bytes", spying)
    again = await archive.stow(data)
    assert again.failure_reason is None  # identical: a success
    assert compared == [False]


async def test_a_commit_that_failed_after_committing_keeps_its_objects(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection lost during COMMIT: the transaction may have committed. The committer asks the index
    again and keeps (publishes) the objects of rows that exist: no index row without its object."""
    real_add = archive.index.add_instances

    def committed_then_lost(*args: Any, **kwargs: Any) -> Any:
        real_add(*args, **kwargs)
        raise sqlalchemy.exc.OperationalError("COMMIT", {}, ConnectionError("server closed the connection"))

    data = make_instance()
    monkeypatch.setattr(archive.index, "add_instances", committed_then_lost)
    outcome = await archive.stow(data)
    assert outcome.failure_reason is not None  # the client was told it failed (and will re-send)
    [stored] = archive.index.find_instances(1, outcome.study_instance_uid)
    assert archive.store.read(stored.object_key) == data  # the committed row kept its object
    assert archive.staged() == []
    monkeypatch.setattr(archive.index, "add_instances", real_add)
    again = await archive.stow(data)  # the re-send: identical, a success
    assert again.failure_reason is None
