from __future__ import annotations

import asyncio
import fcntl
import inspect
import multiprocessing
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from dicomd.storage import ObjectStore, Stager, local
from dicomd.storage.local import DICOM, METADATA, LocalObjectStore, LocalStager, new_key


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
    # a live owner's area is never touched
    assert LocalObjectStore(tmp_path).recover(lambda k: k == committed) == (0, 0)
    assert len(store.staged_names()) == 4
    store.close()  # as at the owner's death: the kernel drops its lock
    published, removed = LocalObjectStore(tmp_path).recover(lambda k: k == committed)
    assert (published, removed) == (1, 1)
    assert store.read(committed) == committed.encode()
    assert not store.path(orphan).exists() and store.staged_names() == []
    assert list(store.staging_root.iterdir()) == []  # the area and its lock file are gone


def test_recover_removes_replacements_a_crash_left_in_staging(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    key = new_key()
    store.write_staged(key, DICOM, b"dicom")
    store.publish([key])
    store.replace_derived(key, METADATA, b"{}\n")
    assert store.read(key, METADATA) == b"{}\n" and not any(store.staging.iterdir())
    (store.staging / f"{new_key()}.tmp").write_bytes(b"{half")  # a crash while replacing
    store.close()
    assert LocalObjectStore(tmp_path).recover(lambda k: True) == (0, 0)
    assert list(store.staging_root.iterdir()) == []


def test_replace_derived_of_a_committed_instance_not_yet_moved_into_place(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    key = new_key()
    store.write_staged(key, DICOM, b"dicom")
    store.replace_derived(key, METADATA, b"{}\n")
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
    expected = [str(store.staged_path(k, DICOM)) for k in keys] + [
        str(store.staging),
        str(store.staging_root),
    ]
    assert sorted(flushed) == sorted(expected)


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


def test_new_files_are_owner_only_and_the_umask_may_narrow_that(tmp_path: Path) -> None:
    old = os.umask(0o002)
    try:
        local.write_file(str(tmp_path / "raw"), b"x")
        os.umask(0o277)
        local.write_file(str(tmp_path / "narrow"), b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "raw").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "narrow").stat().st_mode & 0o777 == 0o400
    local.write_file(str(tmp_path / "raw"), b"yz")  # an existing file is truncated
    assert (tmp_path / "raw").read_bytes() == b"yz"


_DIE_WHILE_STAGING = """
import os, sys
from pathlib import Path
from dicomd.storage.local import DICOM, METADATA, LocalObjectStore
store = LocalObjectStore(Path(sys.argv[1]))
for key in sys.argv[2:]:
    store.write_staged(key, DICOM, key.encode())
    store.write_staged(key, METADATA, b"{}")
os._exit(0)  # no clean-up, as a killed process
"""


def test_recover_finishes_the_area_of_a_dead_process_and_leaves_live_ones(tmp_path: Path) -> None:
    live = LocalObjectStore(tmp_path)
    in_flight = new_key()
    live.write_staged(in_flight, DICOM, b"in flight")  # a live server's part, not committed yet
    committed, orphan = new_key(), new_key()
    script = [sys.executable, "-c", _DIE_WHILE_STAGING, str(tmp_path), committed, orphan]
    subprocess.run(script, check=True)
    assert len(live.staged_names()) == 5
    published, removed = LocalObjectStore(tmp_path).recover(lambda k: k == committed)
    assert (published, removed) == (1, 1)
    assert live.read(committed) == committed.encode() and live.path(committed).exists()
    assert not live.path(orphan).exists()
    assert live.staged_names() == [f"{live.staging.name}/{in_flight}.dcm"]  # untouched
    assert live.read(in_flight) == b"in flight"


def test_a_committed_object_staged_by_another_process_is_readable_and_deletable(tmp_path: Path) -> None:
    writer, reader = LocalObjectStore(tmp_path), LocalObjectStore(tmp_path)
    key = new_key()
    writer.write_staged(key, DICOM, b"dicom")
    writer.write_staged(key, METADATA, b"{}\n")
    assert reader.read(key) == b"dicom" and reader.read_range(key, 1, 2) == b"ic"
    reader.replace_derived(key, METADATA, b"{1}\n")  # e.g. a metadata rebuild in another worker
    assert writer.read(key, METADATA) == b"{1}\n"
    reader.delete(key)
    assert writer.staged_names() == []
    with pytest.raises(FileNotFoundError):
        reader.read(key)


def test_new_files_and_directories_are_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        store = LocalObjectStore(tmp_path / "store")
        key = new_key()
        store.write_staged(key, DICOM, b"dicom")
        store.write_staged(key, METADATA, b"{}\n")
        store.publish([key])
        store.replace_derived(key, METADATA, b"{}\n")
    finally:
        os.umask(old)
    modes = {p: p.stat().st_mode & 0o777 for p in (tmp_path / "store").rglob("*")}
    assert modes and all(m == (0o700 if p.is_dir() else 0o600) for p, m in modes.items()), modes


# ---- the ObjectStore interface -------------------------------------------------------------------


def test_the_local_store_has_every_operation_of_the_interface() -> None:
    # the static check is mypy's (app.py hands a LocalObjectStore to code typed with ObjectStore)
    for interface, implementation in ((ObjectStore, LocalObjectStore), (Stager, LocalStager)):
        members = {n for c in interface.__mro__ if c is not object for n in vars(c) if not n.startswith("_")}
        assert members
        for name in members:
            ours, theirs = getattr(implementation, name), getattr(interface, name)
            assert inspect.iscoroutinefunction(ours) == inspect.iscoroutinefunction(theirs), name
            parameters = [list(inspect.signature(f).parameters) for f in (ours, theirs)]
            assert parameters[0] == parameters[1], name


async def _chunks(*chunks: bytes, fail: BaseException | None = None) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
    if fail is not None:
        raise fail


def test_stage_keeps_the_bytes_of_parts_up_to_the_limit(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    small, big, empty = store.new_key(), store.new_key(), store.new_key()
    assert asyncio.run(store.stage(small, _chunks(b"ab", b"cd"), keep=4)) == b"abcd"
    assert asyncio.run(store.stage(big, _chunks(b"ab", b"cde"), keep=4)) is None
    assert asyncio.run(store.stage(empty, _chunks())) == b""
    assert Path(store.staged_file(small)).read_bytes() == b"abcd"
    assert Path(store.staged_file(big)).read_bytes() == b"abcde"
    store.sync([small, big])
    store.publish([small, big])
    assert store.read(big) == b"abcde" and store.staged_names() == [f"{store.staging.name}/{empty}.dcm"]


@pytest.mark.parametrize("fault", [OSError(28, "No space left on device"), asyncio.CancelledError()])
def test_a_part_that_fails_mid_stream_leaves_nothing_staged_and_the_rest_unread(
    tmp_path: Path, fault: BaseException
) -> None:
    store = LocalObjectStore(tmp_path)
    key = store.new_key()
    body = _chunks(b"ab", fail=fault)
    with pytest.raises(type(fault)):
        asyncio.run(store.stage(key, body))
    assert store.staged_names() == []


def test_stage_file_copies_byte_exact_and_owner_only(tmp_path: Path) -> None:
    source = tmp_path / "source.dcm"
    source.write_bytes(os.urandom(300_000))
    source.chmod(0o644)
    old = os.umask(0o022)
    try:
        store = LocalObjectStore(tmp_path / "store")
        key = store.new_key()
        store.stage_file(key, str(source))
    finally:
        os.umask(old)
    staged = store.staged_path(key)
    assert staged.read_bytes() == source.read_bytes()
    assert staged.stat().st_mode & 0o777 == 0o600


def _stage_elsewhere(stager: Stager, key: str, source: str) -> str:
    """What a `dicomd import` pool process does with the stager it was handed."""
    stager.stage_file(key, source)
    stager.stage_metadata(key, b"{}\n")
    return stager.staged_file(key)


def test_a_stager_handed_to_another_process_stages_into_the_owners_area(tmp_path: Path) -> None:
    source = tmp_path / "source.dcm"
    source.write_bytes(b"dicom")
    store = LocalObjectStore(tmp_path / "store")
    key = store.new_key()
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        staged = pool.submit(_stage_elsewhere, store.stager(), key, str(source)).result()
    assert staged == store.staged_file(key)
    assert sorted(store.staged_names()) == [f"{store.staging.name}/{key}.{s}" for s in (DICOM, METADATA)]
    assert store.stager().scratch_dir() == store.scratch_dir() == str(store.staging)
    store.sync([key])
    store.publish([key])
    assert store.read(key) == b"dicom" and store.read(key, METADATA) == b"{}\n"


def test_local_file_names_the_object_staged_or_in_place(tmp_path: Path) -> None:
    store, reader = LocalObjectStore(tmp_path), LocalObjectStore(tmp_path)
    key = store.new_key()
    store.write_staged(key, DICOM, b"dicom")
    with reader.local_file(key) as path:  # committed, not yet moved into place
        assert path == store.staged_file(key) and Path(path).read_bytes() == b"dicom"
    store.publish([key])
    with reader.local_file(key) as path:
        assert Path(path) == store.path(key)
    store.delete(key)
    with pytest.raises(FileNotFoundError), reader.local_file(key):
        pass


def test_replacing_a_derived_object_of_a_deleted_instance_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalObjectStore(tmp_path)
    key = store.new_key()
    store.replace_derived(key, METADATA, b"{}\n")  # never stored (or deleted before): nothing to replace
    assert not store.path(key, METADATA).exists() and store.staged_names() == []
    store.write_staged(key, DICOM, b"dicom")
    store.publish([key])
    real_write_file = local.write_file

    def deleted_meanwhile(path: str, data: bytes) -> None:  # the cleanup job runs during the rebuild
        store.delete(key)
        real_write_file(path, data)

    monkeypatch.setattr(local, "write_file", deleted_meanwhile)
    store.replace_derived(key, METADATA, b"{}\n")
    assert not store.path(key, METADATA).exists() and store.staged_names() == []


def test_a_recoverer_between_a_claimers_open_and_lock_never_takes_the_live_area(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim is locked under a name recover ignores until its owner holds it (review finding)."""
    real_flock = fcntl.flock
    gate, opened = threading.Event(), threading.Event()

    def slow_flock(fd: int, op: int) -> None:
        if threading.current_thread().name == "owner" and op == fcntl.LOCK_EX and not opened.is_set():
            opened.set()
            gate.wait(10)  # the owner is between creating its lock file and locking it
        real_flock(fd, op)

    monkeypatch.setattr(local.fcntl, "flock", slow_flock)
    owner = LocalObjectStore(tmp_path)
    claiming = threading.Thread(target=lambda: owner.staging, name="owner")
    claiming.start()
    assert opened.wait(10)
    recoverer = LocalObjectStore(tmp_path)
    recoverer.recover(lambda k: False)  # at that moment
    recoverer.close()
    gate.set()
    claiming.join(10)
    owner.write_staged("k1", DICOM, b"in-flight upload")  # an uncommitted part of the live owner
    later = LocalObjectStore(tmp_path)
    assert later.recover(lambda k: False) == (0, 0)
    later.close()
    assert owner.staged_path("k1").read_bytes() == b"in-flight upload"


def test_two_recoverers_of_one_abandoned_area_do_not_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = LocalObjectStore(tmp_path)
    dead.write_staged("k", DICOM, b"x")
    dead.close()
    real_flock = fcntl.flock
    b_opened, a_done = threading.Event(), threading.Event()

    def flock(fd: int, op: int) -> None:
        if threading.current_thread().name == "B" and op & fcntl.LOCK_NB:
            b_opened.set()
            a_done.wait(10)  # B opened the lock file; A finishes the area before B locks it
        real_flock(fd, op)

    monkeypatch.setattr(local.fcntl, "flock", flock)
    errors: list[BaseException] = []

    def second() -> None:
        try:
            LocalObjectStore(tmp_path).recover(lambda k: False)
        except BaseException as exc:
            errors.append(exc)

    b = threading.Thread(target=second, name="B")
    b.start()
    assert b_opened.wait(10)
    assert LocalObjectStore(tmp_path).recover(lambda k: False) == (0, 1)
    a_done.set()
    b.join(10)
    assert errors == []
    assert LocalObjectStore(tmp_path).staged_names() == []


def test_iter_stored_lists_each_old_enough_published_key_once(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    old, new, staged = sorted(new_key() for _ in range(3))
    for key in (old, new, staged):
        store.write_staged(key, DICOM, b"x")
        store.write_staged(key, METADATA, b"{}")
    store.publish([old, new])
    an_hour_ago = os.stat(store.path(old)).st_mtime - 3600
    for suffix in (DICOM, METADATA):
        os.utime(store.path(old, suffix), (an_hour_ago, an_hour_ago))
    (store.objects / old[:3] / "notes.txt").write_text("someone else's")  # never offered to the sweep
    (store.objects / "zzz").mkdir()
    (store.objects / "zzz" / f"{new}.dcm").write_text("not where a key's object is")
    for foreign in (store.objects / old[:3] / "notes.txt", store.objects / "zzz" / f"{new}.dcm"):
        os.utime(foreign, (an_hour_ago, an_hour_ago))
    assert list(store.iter_stored(older_than=60)) == [old]  # once, though two objects; staged ones not
    assert sorted(store.iter_stored(older_than=-1)) == sorted([old, new])
    assert list(LocalObjectStore(tmp_path / "empty").iter_stored(older_than=0)) == []


def test_read_many_keeps_the_order_and_gives_none_for_a_missing_object(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    published, staged = new_key(), new_key()  # staged: committed, not yet moved into place
    for key in (published, staged):
        store.write_staged(key, DICOM, f"dicom {key}".encode())
        store.write_staged(key, METADATA, f"json {key}".encode())
    store.sync([published, staged])
    store.publish([published])
    missing = new_key()
    assert store.read_many([staged, missing, published, staged]) == [
        f"dicom {staged}".encode(),
        None,
        f"dicom {published}".encode(),
        f"dicom {staged}".encode(),
    ]
    assert store.read_many([published, staged], METADATA) == [
        f"json {published}".encode(),
        f"json {staged}".encode(),
    ]
    assert store.read_many([]) == []


def test_read_many_raises_other_errors_than_a_missing_object(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    key = new_key()
    store.path(key).parent.mkdir(parents=True)
    store.path(key).mkdir()  # not a file: IsADirectoryError, which is no "missing object"
    with pytest.raises(IsADirectoryError):
        store.read_many([new_key(), key])
