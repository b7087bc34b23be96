from __future__ import annotations

import os
from pathlib import Path

import pytest

from dicomd.storage import local
from dicomd.storage.local import DICOM, METADATA, LocalObjectStore, new_key


def test_keys_are_opaque_and_unique() -> None:
    keys = {new_key() for _ in range(1000)}
    assert len(keys) == 1000
    assert all(len(k) == 32 and all(c in "0123456789abcdef" for c in k) for k in keys)


def test_stage_sync_publish_read(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    key = new_key()
    store.write_staged(key, DICOM, b"dicom-bytes")
    store.write_staged(key, METADATA, b"{}")
    # readable while committed but not yet published (a reader may race the rename)
    assert store.read(key) == b"dicom-bytes"
    store.sync([key])
    store.publish([key])
    assert not any(store.staging.iterdir())
    assert store.path(key).read_bytes() == b"dicom-bytes"
    assert store.path(key).parent == tmp_path / "objects" / key[:3]
    assert store.read(key, METADATA) == b"{}"
    assert store.read_range(key, 6, 5) == b"bytes"
    assert b"".join(store.iter_chunks(key, chunk_size=3)) == b"dicom-bytes"
    assert store.size(key) == 11
    store.delete(key)
    store.delete(key)  # idempotent
    assert not store.path(key).exists() and not store.path(key, METADATA).exists()


def test_recover_publishes_committed_and_drops_orphans(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    committed, orphan = new_key(), new_key()
    for key in (committed, orphan):
        store.write_staged(key, DICOM, key.encode())
        store.write_staged(key, METADATA, b"{}")
    published, removed = LocalObjectStore(tmp_path).recover(lambda k: k == committed)
    assert (published, removed) == (1, 1)
    assert store.read(committed) == committed.encode()
    assert not store.path(orphan).exists() and not any(store.staging.iterdir())


def test_recover_removes_replacements_a_crash_left_in_staging(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    key = new_key()
    store.write_staged(key, DICOM, b"dicom")
    store.publish([key])
    store.replace_object(key, METADATA, b"{}\n")
    assert store.read(key, METADATA) == b"{}\n" and not any(store.staging.iterdir())
    (store.staging / f"{new_key()}.tmp").write_bytes(b"{half")  # a crash while replacing
    assert LocalObjectStore(tmp_path).recover(lambda k: True) == (0, 0)
    assert not any(store.staging.iterdir())


def test_replace_object_of_a_committed_instance_not_yet_moved_into_place(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    key = new_key()
    store.write_staged(key, DICOM, b"dicom")
    store.replace_object(key, METADATA, b"{}\n")
    store.publish([key])
    assert store.read(key, METADATA) == b"{}\n"


def test_without_syncfs_only_dicom_files_are_flushed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # metadata objects need no flush: they are rebuilt from the DICOM file when lost
    store = LocalObjectStore(tmp_path)
    keys = [new_key(), new_key()]
    for key in keys:
        store.write_staged(key, DICOM, b"dicom")
        store.write_staged(key, METADATA, b"{}\n")
    flushed: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(local, "_syncfs", None)
    monkeypatch.setattr(local.os, "fsync", fsync)
    store.sync(keys)
    assert sorted(flushed) == sorted([str(store.staged_path(k, DICOM)) for k in keys] + [str(store.staging)])


def test_write_all_finishes_a_partial_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write
    calls: list[int] = []

    def short_write(fd: int, data: bytes | memoryview) -> int:  # a file system taking 1000 bytes at a time
        calls.append(len(data))
        return real_write(fd, bytes(data[:1000]))

    monkeypatch.setattr(local.os, "write", short_write)
    data = os.urandom(4500)
    local.write_file(str(tmp_path / "f"), data)
    assert (tmp_path / "f").read_bytes() == data
    assert calls == [4500, 3500, 2500, 1500, 500]


def test_new_files_follow_the_umask_like_open(tmp_path: Path) -> None:
    old = os.umask(0o002)
    try:
        local.write_file(str(tmp_path / "raw"), b"x")
        with open(tmp_path / "buffered", "wb") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "raw").stat().st_mode & 0o777 == 0o664
    assert (tmp_path / "raw").stat().st_mode == (tmp_path / "buffered").stat().st_mode
    local.write_file(str(tmp_path / "raw"), b"yz")  # an existing file is truncated
    assert (tmp_path / "raw").read_bytes() == b"yz"
