"""Filesystem object store with crash-safe writes: the local ``ObjectStore`` (storage/base.py).

Objects are named by opaque keys (random hex, never UIDs: no PHI in paths). An instance is two objects: its
DICOM file (``.dcm``, byte-exact, irreplaceable) and its metadata (``.json``, derived from the DICOM file and
rebuilt from it when missing: see ingest/metadata.py). A write goes through three steps so that a 2xx is
durable and nothing is ever orphaned:

1. ``stage``: incoming bytes go to ``staging/<area>/<key>.<suffix>``, in the staging area of the process that
   receives them (see below);
2. ``sync``: one ``syncfs`` makes a whole batch of staged files durable at once (or, where the kernel has
   no syncfs, an fsync per DICOM file: metadata objects need no flush, they are rebuilt when lost);
3. the index commits, then ``publish`` renames the staged files to ``objects/abc/<key>.<suffix>``
   (one level of 4,096 directories: each new directory costs an inode allocation, and ext4 indexes
   large directories well). Where the SQLite index is on this file system, the commit comes before the
   sync, which then flushes both at once (ingest/shared_flush.py).

After a crash, ``recover`` finishes step 3 for keys the index knows and deletes the rest.

Each process that writes (a web worker, ``dicomd import``) stages into an area of its own, claimed with an
exclusive lock on ``staging/<area>.lock`` that the kernel drops when the process dies. ``recover`` only
touches areas whose lock it can take, i.e. whose owner is gone, so any process may run it at any time
(a worker at start-up, ``dicomd import`` or ``optimize`` next to a running server) without touching the
in-flight parts of a live one.

New files are owner-only (0600) and new directories 0700: the archive holds PHI.
"""

from __future__ import annotations

import abc
import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import logging
import os
import re
import secrets
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from dicomd.storage.base import DICOM, METADATA, SUFFIXES, AreaCheck, content_checksum

__all__ = [
    "DICOM",
    "METADATA",
    "SUFFIXES",
    "LocalObjectStore",
    "LocalStager",
    "StagingStore",
    "is_object_name",
    "new_key",
]

log = logging.getLogger(__name__)

_TEMPORARY = ".tmp"  # a replacement being written (see replace_derived)
_LOCK = ".lock"  # staging/<area>.lock: held by the process that owns staging/<area>/
_CLAIM = ".claim-"  # staging/.claim-<area>.lock: a lock file being claimed (see StagingArea)


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_syncfs = getattr(_libc, "syncfs", None)


def new_key() -> str:
    return secrets.token_hex(16)


_OBJECT_NAME = re.compile(r"([0-9a-f]{32})\.(?:dcm|json)")


def is_object_name(fan_out: str, name: str) -> bool:
    """Whether ``fan_out/name`` names an object of this store (``abc/<key>.<suffix>``): the listing for
    the orphan sweep offers nothing else (a file someone else put there is not ours to remove)."""
    match = _OBJECT_NAME.fullmatch(name)
    return match is not None and match.group(1)[:3] == fan_out


# Hot-path file writes use the raw descriptor: Python's buffered open() adds an fstat, an ioctl, an
# lseek and two objects per file, which matter at thousands of files per second.
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
_COPY_CHUNK = 1 << 20
FILE_MODE = 0o600  # owner-only: the archive holds PHI (the umask may only narrow it)
DIR_MODE = 0o700


def write_all(fd: int, data: bytes | memoryview) -> None:
    """os.write until every byte is written (a regular file may take fewer at once, e.g. near ENOSPC)."""
    written = os.write(fd, data)
    if written < len(data):
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(fd, view) :]


def create_file(path: str) -> int:
    """Create (or truncate) ``path`` for writing: the caller writes with write_all and closes the fd."""
    return os.open(path, _NEW_FILE, FILE_MODE)


def write_parts(path: str, parts: Iterable[bytes | memoryview]) -> None:
    """Create ``path`` with ``parts`` one after the other, unflushed; on failure it is removed."""
    fd = create_file(path)
    try:
        try:
            for part in parts:
                write_all(fd, part)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


def write_file(path: str, data: bytes) -> None:
    """Create (or truncate) ``path`` and write ``data`` to it, unflushed."""
    fd = create_file(path)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


def copy_file(source: str, path: str) -> tuple[int, int]:
    """Create (or truncate) ``path`` owner-only and copy ``source`` into it, unflushed. Returns the
    copy's (size, CRC-32): read through user space anyway, the checksum costs ~7 µs per 39 KB."""
    size = checksum = 0

    def chunks(f: BinaryIO) -> Iterator[bytes]:
        nonlocal size, checksum
        while chunk := f.read(_COPY_CHUNK):
            size += len(chunk)
            checksum = zlib.crc32(chunk, checksum)
            yield chunk

    with open(source, "rb", buffering=0) as f:
        write_parts(path, chunks(f))
    return size, checksum


def make_private_dir(path: Path) -> None:
    """Create ``path`` and its missing parents owner-only; existing directories are left as they are."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        directory.mkdir(mode=DIR_MODE, exist_ok=True)  # (mkdir's parents=True ignores mode for parents)


@dataclass(frozen=True, slots=True)
class LocalStager:
    """The staging operations on one staging area (``LocalObjectStore.stager``), for another process:
    a plain path, so it pickles; the area stays owned (locked) by the store that handed it out."""

    area: str

    def staged_file(self, key: str, suffix: str = DICOM) -> str:
        return f"{self.area}/{key}.{suffix}"

    def scratch_dir(self) -> str:
        return self.area

    def stage_metadata(self, key: str, data: bytes) -> None:
        write_file(f"{self.area}/{key}.{METADATA}", data)

    def stage_file(self, key: str, source: str) -> tuple[int, int]:
        return copy_file(source, f"{self.area}/{key}.{DICOM}")

    def stage_bytes(self, key: str, parts: Sequence[bytes | memoryview]) -> None:
        write_parts(f"{self.area}/{key}.{DICOM}", parts)


class StagingArea:
    """A staging directory owned by this process for as long as it holds the area's lock.

    The lock file is created and locked under a claim name first and only then renamed to
    ``<area>.lock``, before the directory exists: a recoverer never finds an area's lock file unlocked
    while its owner lives. (A recoverer that takes a claim file before its claimer locks it removes it;
    the claimer's rename then fails and it claims again under a new name.)"""

    def __init__(self, root: Path) -> None:
        while True:
            name = new_key()
            claim = root / f"{_CLAIM}{name}{_LOCK}"
            fd = os.open(claim, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                os.rename(claim, root / f"{name}{_LOCK}")
            except FileNotFoundError:  # a recoverer took the claim file before we locked it
                os.close(fd)
                continue
            break
        self._lock_fd = fd
        self.path = root / name
        self.path.mkdir(mode=DIR_MODE)
        # syncfs reports a write-back error to a descriptor opened before it happened, once per
        # descriptor: one kept open from the start sees every error of this area's writes
        self.sync_fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)

    def release(self) -> None:
        """Give up the area (what is left in it is recovered by the next ``recover``)."""
        if self._lock_fd >= 0:
            os.close(self.sync_fd)
            os.close(self._lock_fd)
            self._lock_fd = -1


class StagingStore(abc.ABC):
    """The local staging half of an object store: this process's staging area (claimed on first use),
    staging, and the recovery of abandoned areas. ``LocalObjectStore`` publishes staged files by renaming
    them into place; ``CloudObjectStore`` (storage/cloud.py) uploads them at ``sync``."""

    def __init__(self, staging_root: Path) -> None:
        self.staging_root = staging_root
        make_private_dir(self.staging_root)
        self._area: StagingArea | None = None
        self._staging_str = ""
        self._claiming = threading.Lock()
        # (size, CRC-32) of each DICOM file staged here, by key, while kept (see keep_checksums)
        self._checksums: dict[str, tuple[int, int]] | None = None

    @property
    def staging(self) -> Path:
        """This process's staging area (claimed on first use)."""
        if self._area is None:
            with self._claiming:  # the loop and a worker thread may both be first
                if self._area is None:
                    area = StagingArea(self.staging_root)
                    self._staging_str = str(area.path)
                    self._area = area
        return self._area.path

    def _own_area(self) -> str:
        if self._area is None:
            self.staging  # noqa: B018 - claims the area
        return self._staging_str

    @property
    def staging_area(self) -> str:
        """The name of this process's staging area (claimed on first use)."""
        return self.staging.name

    def close(self) -> None:
        """Release this process's staging area; a later ``recover`` (any process) finishes its files."""
        if self._area is not None:
            self._area.release()
            self._area = None

    def new_key(self) -> str:
        return new_key()

    # ---- staging --------------------------------------------------------------------------------
    def staged_path(self, key: str, suffix: str = DICOM) -> Path:
        """``staged_file`` as a Path (for checks and tests)."""
        return Path(self.staged_file(key, suffix))

    def staged_file(self, key: str, suffix: str = DICOM) -> str:
        return f"{self._own_area()}/{key}.{suffix}"

    def scratch_dir(self) -> str:
        return self._own_area()

    def staged_names(self) -> list[str]:
        """Every staged file of every area, as ``<area>/<file>`` (for checks and tests)."""
        names = []
        for area in sorted(p for p in self.staging_root.iterdir() if p.is_dir()):
            names += [f"{area.name}/{f.name}" for f in sorted(area.iterdir())]
        return names

    # ---- writes --------------------------------------------------------------------------------
    async def stage(self, key: str, chunks: AsyncIterator[bytes], *, keep: int = 0) -> bytes | None:
        # the raw descriptor and write_all: see create_file
        fd = create_file(f"{self._own_area()}/{key}.{DICOM}")
        kept: list[bytes] | None = []
        size = checksum = 0
        checksums = self._checksums
        try:
            try:
                async for chunk in chunks:
                    write_all(fd, chunk)
                    size += len(chunk)
                    if checksums is not None:
                        checksum = zlib.crc32(chunk, checksum)
                    if kept is not None:
                        if size <= keep:
                            kept.append(chunk)
                        else:
                            kept = None
            finally:
                os.close(fd)  # may fail too (say, a quota on a network file system): the part fails
        except BaseException:
            self.discard_staged(key)  # first: its space may let the next parts be stored
            raise
        if checksums is not None:
            checksums[key] = (size, checksum)
        return None if kept is None else b"".join(kept)

    def stage_metadata(self, key: str, data: bytes) -> None:
        write_file(f"{self._own_area()}/{key}.{METADATA}", data)

    def stage_file(self, key: str, source: str) -> tuple[int, int]:
        checksum = copy_file(source, f"{self._own_area()}/{key}.{DICOM}")
        self.note_checksum(key, checksum)
        return checksum

    def stage_bytes(self, key: str, parts: Sequence[bytes | memoryview]) -> None:
        write_parts(f"{self._own_area()}/{key}.{DICOM}", parts)
        if self._checksums is not None:
            self._checksums[key] = content_checksum(parts)

    def note_checksum(self, key: str, checksum: tuple[int, int]) -> None:
        """The (size, CRC-32) of a DICOM file staged here by another process (its ``stager``)."""
        if self._checksums is not None:
            self._checksums[key] = checksum

    def keep_checksums(self) -> None:
        """From now on, note the size and CRC-32 of each DICOM file staged here (``checksums``)."""
        if self._checksums is None:
            self._checksums = {}

    def checksums(self, keys: Iterable[str]) -> dict[str, tuple[int, int]]:
        """(size, CRC-32) of the staged DICOM files of ``keys``: as noted while staging (or by
        ``note_checksum``), else read back from the page cache."""
        noted = self._checksums if self._checksums is not None else {}
        found = {}
        for key in keys:
            known = noted.pop(key, None)
            found[key] = known if known is not None else file_checksum(self.staged_file(key))
        return found

    def write_staged(self, key: str, suffix: str, data: bytes) -> None:
        """Stage an object from bytes (for checks and tests)."""
        write_file(self.staged_file(key, suffix), data)

    def stager(self) -> LocalStager:
        return LocalStager(self._own_area())

    def discard_staged(self, key: str) -> None:
        if self._checksums is not None:
            self._checksums.pop(key, None)
        area = self._own_area()
        for suffix in SUFFIXES:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{area}/{key}.{suffix}")

    # ---- crash recovery ------------------------------------------------------------------------
    def recover(
        self, is_committed: Callable[[str], bool], check_area: AreaCheck | None = None
    ) -> tuple[int, int]:
        """Publish the staged objects of abandoned areas (whose owner died or let go) that the index
        knows, delete the others, and remove those areas. Areas of live processes are never touched,
        so this is safe at any time, from any process. ``check_area(name, directory)`` runs first for
        each abandoned area (the index rolls back what its owner committed ahead of a flush that never
        came: ingest/shared_flush.py). Returns (published, removed)."""
        published = removed = 0
        for entry in sorted(self.staging_root.iterdir()):
            if self._area is not None and entry.name.startswith(self._area.path.name):
                continue  # ours
            if entry.is_dir():
                p, r = self._recover_area(entry, is_committed, check_area)
                published, removed = published + p, removed + r
            elif entry.name.endswith(_LOCK) and not entry.with_suffix("").exists():
                # died before creating it
                self._recover_area(entry.with_suffix(""), is_committed, check_area)
        # staged files of versions before areas existed (only ever left by a stopped server)
        p, r = self._recover_files(self.staging_root, is_committed)
        return published + p, removed + r

    def _recover_area(
        self, area: Path, is_committed: Callable[[str], bool], check_area: AreaCheck | None
    ) -> tuple[int, int]:
        lock_path = self.staging_root / f"{area.name}{_LOCK}"
        try:
            # never created here: a lock file is only ever made (already locked) by its owner
            fd = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            if area.is_dir():  # its owner always has the lock file: no live owner (a half-done recovery)
                if check_area is not None:
                    check_area(area.name, area)
                counts = self._recover_files(area, is_committed)
                with contextlib.suppress(OSError):
                    area.rmdir()
                return counts
            return 0, 0
        except OSError:
            return 0, 0
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0, 0  # its owner is alive
            try:
                if os.stat(lock_path).st_ino != os.fstat(fd).st_ino:
                    return 0, 0  # another recoverer finished it and removed this lock file meanwhile
            except FileNotFoundError:
                return 0, 0
            if check_area is not None:
                check_area(area.name, area)
            counts = self._recover_files(area, is_committed) if area.is_dir() else (0, 0)
            with contextlib.suppress(OSError):
                area.rmdir()
            if not area.exists():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(lock_path)  # still locked by us: its owner is gone
            if counts != (0, 0):
                log.info("recovered staging area %s: %d published, %d removed", area.name, *counts)
            return counts
        finally:
            os.close(fd)

    def _recover_files(self, directory: Path, is_committed: Callable[[str], bool]) -> tuple[int, int]:
        published = removed = 0
        keys: set[str] = set()
        for path in directory.iterdir():
            if not path.is_file() or path.name.endswith(_LOCK):
                continue
            if path.name.endswith(_TEMPORARY):
                path.unlink(missing_ok=True)
            else:
                keys.add(path.name.split(".", 1)[0])
        for key in keys:
            if is_committed(key):
                self._finish_committed(directory, key)
                published += 1
            else:
                self._remove_uncommitted(directory, key)
                removed += 1
        return published, removed

    @abc.abstractmethod
    def _finish_committed(self, directory: Path, key: str) -> None:
        """Recovery of a committed key staged in an abandoned ``directory``: put it in place."""

    def _remove_uncommitted(self, directory: Path, key: str) -> None:
        """Recovery of a key the index does not name, staged in an abandoned ``directory``."""
        for suffix in SUFFIXES:
            (directory / f"{key}.{suffix}").unlink(missing_ok=True)


class LocalObjectStore(StagingStore):
    """The ``ObjectStore`` on a local file system (see the module's docstring)."""

    reads_are_local = True

    def __init__(self, root: Path) -> None:
        super().__init__(root / "staging")
        self.root = root
        self.objects = root / "objects"
        make_private_dir(self.objects)
        self._objects_str = str(self.objects)
        self._made_dirs: set[str] = set()  # fan-out directories known to exist (saves a syscall per object)
        # keys staged in this area when a syncfs failed: see _note_failed_sync
        self._unflushed: set[str] = set()
        self._unflushed_lock = threading.Lock()

    def _finish_committed(self, directory: Path, key: str) -> None:
        self._move_into_place(str(directory), [key])

    # ---- paths (string paths on the per-instance hot paths: pathlib costs more than the syscall) ---
    def path(self, key: str, suffix: str = DICOM) -> Path:
        """Where a published object is (for checks and tests)."""
        return Path(self._fan_out(key)) / f"{key}.{suffix}"

    def _fan_out(self, key: str) -> str:
        """The directory of a key's objects: objects/<first 3 characters of the key>."""
        return f"{self._objects_str}/{key[:3]}"

    def _find_staged(self, name: str) -> str | None:
        """Where a committed object not yet moved into place is staged: in this process's area or in
        another's (a worker's commit is read by every worker; ``recover`` may be moving it meanwhile)."""
        with contextlib.suppress(FileNotFoundError), os.scandir(self.staging_root) as entries:
            for entry in entries:
                candidate = f"{entry.path}/{name}"
                if entry.is_dir() and os.path.exists(candidate):
                    return candidate
        return None

    def flushes_with_objects(self, path: str) -> bool:
        """Whether ``sync`` also makes what was written to ``path`` durable: one syncfs flushes its whole
        file system, so ``path`` must be on the staging area's (the fallback of an fsync per file
        flushes nothing else)."""
        if _syncfs is None:
            return False
        try:
            return os.stat(path).st_dev == os.stat(self.staging_root).st_dev
        except OSError:
            return False

    def holds_intact(self, directory: Path, key: str, size: int, checksum: int) -> bool:
        """Whether the DICOM file of ``key``, staged in ``directory`` or in place, has this size and
        CRC-32 (crash recovery: did the file reach the disk whole?)."""
        for path in (f"{directory}/{key}.{DICOM}", f"{self._fan_out(key)}/{key}.{DICOM}"):
            with contextlib.suppress(FileNotFoundError):
                return file_checksum(path) == (size, checksum)
        return False

    def sync(self, keys: Iterable[str]) -> None:
        """Make the staged files of a batch durable: one syncfs for the whole batch where the kernel has
        it (the device flush dominates: one syncfs costs about one fdatasync, whatever the batch size),
        else an fsync per DICOM file."""
        self._own_area()
        assert self._area is not None
        if _syncfs is not None:
            if _syncfs(self._area.sync_fd) == 0:
                self._refuse_unflushed(keys)
                return
            error = ctypes.get_errno()
            if error != errno.ENOSYS:  # a write-back error: fsyncs might not report it again
                self._note_failed_sync()
                raise OSError(error, os.strerror(error))
        for key in keys:
            with contextlib.suppress(FileNotFoundError), open(self.staged_file(key), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(self.staging)
        _fsync_dir(self.staging_root)  # the area directory's own entry

    def _note_failed_sync(self) -> None:
        """A syncfs reported a write-back error, once: it wrote back every dirty file of the file system,
        and the error may be a later batch's, whose own syncfs (same descriptor) will not report it again.
        Every file staged in this area now is suspect until its batch fails."""
        staged: set[str] = set()
        with contextlib.suppress(FileNotFoundError), os.scandir(self._own_area()) as entries:
            staged = {match.group(1) for entry in entries if (match := _OBJECT_NAME.fullmatch(entry.name))}
        with self._unflushed_lock:
            self._unflushed |= staged

    def _refuse_unflushed(self, keys: Iterable[str]) -> None:
        """Raise when a batch that a syncfs just flushed holds a file staged before an earlier syncfs
        failed (_note_failed_sync): that error may have been this file's lost write-back."""
        if not self._unflushed:
            return
        with self._unflushed_lock:
            suspect = self._unflushed.intersection(keys)
            self._unflushed -= suspect
        if suspect:
            raise OSError(
                errno.EIO, "an earlier flush failed while this batch was staged: its files may be lost"
            )

    def discard_staged(self, key: str) -> None:
        super().discard_staged(key)
        if self._unflushed:
            with self._unflushed_lock:
                self._unflushed.discard(key)

    def publish(self, keys: Iterable[str]) -> None:
        """Move committed objects into place. Durability of the rename is not needed for a 2xx:
        ``recover`` completes it after a crash because the index already names the key."""
        self._move_into_place(self._own_area(), keys)

    def _move_into_place(self, source: str, keys: Iterable[str]) -> None:
        """Move the staged objects of ``keys`` from the staging area ``source`` into place."""
        failed: OSError | None = None
        for key in keys:
            try:
                fan_out = self._fan_out(key)
                if fan_out not in self._made_dirs:
                    os.makedirs(fan_out, DIR_MODE, exist_ok=True)
                    self._made_dirs.add(fan_out)
                for suffix in SUFFIXES:
                    name = f"{key}.{suffix}"
                    with contextlib.suppress(FileNotFoundError):  # e.g. already moved by recover
                        os.replace(f"{source}/{name}", f"{fan_out}/{name}")
            except OSError as exc:  # the others still move; this one stays readable in staging
                failed = exc
        if failed is not None:
            raise failed

    def replace_derived(self, key: str, suffix: str, data: bytes) -> None:
        """Replace one derived object of a stored instance atomically, wherever it is now: in place, or
        still staged. The bytes go to a temporary file in staging first (``recover`` removes those a
        crash leaves behind), not flushed. The DICOM file is held open meanwhile: unlinked by the end, the
        instance was deleted, and the object just put back is removed too."""
        fd, dicom = self._open_dicom(key)
        if fd < 0:
            return  # deleted: nothing to replace
        try:
            target = f"{dicom[: -len(DICOM)]}{suffix}"
            temporary = f"{self._own_area()}/{new_key()}{_TEMPORARY}"
            try:
                write_file(temporary, data)
                os.replace(temporary, target)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary)
                raise
            if os.fstat(fd).st_nlink == 0:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(target)
        finally:
            os.close(fd)

    def _open_dicom(self, key: str) -> tuple[int, str]:
        """A read descriptor on a key's DICOM file and its path; (-1, "") when it is gone."""
        for path in self._candidates(f"{key}.{DICOM}", key):
            with contextlib.suppress(FileNotFoundError):
                return os.open(path, os.O_RDONLY | os.O_CLOEXEC), path
        return -1, ""

    def _candidates(self, name: str, key: str) -> Iterator[str]:
        """Where an object may be, in the order to try: in place, else staged (committed but not yet
        moved into place), else in place again (moved meanwhile)."""
        in_place = f"{self._fan_out(key)}/{name}"
        yield in_place
        staged = self._find_staged(name)
        if staged is not None:
            yield staged
        yield in_place

    def delete(self, key: str) -> None:
        """Idempotent: deleting a missing object is not an error."""
        for suffix in SUFFIXES:
            try:
                os.unlink(f"{self._fan_out(key)}/{key}.{suffix}")
                continue  # published: not also staged (publish moves, never copies)
            except FileNotFoundError:
                pass
            staged = self._find_staged(f"{key}.{suffix}")
            if staged is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(staged)

    # ---- reads ----------------------------------------------------------------------------------
    def open_object(self, key: str, suffix: str = DICOM) -> BinaryIO:
        name = f"{key}.{suffix}"
        path = f"{self._fan_out(key)}/{name}"
        try:
            return open(path, "rb")
        except FileNotFoundError:
            # committed but not yet moved into place (by its committer or by recover)
            staged = self._find_staged(name)
            if staged is not None:
                with contextlib.suppress(FileNotFoundError):
                    return open(staged, "rb")
            return open(path, "rb")  # moved meanwhile, or really gone

    def read(self, key: str, suffix: str = DICOM) -> bytes:
        with self.open_object(key, suffix) as f:
            return f.read()

    def read_many(self, keys: Sequence[str], suffix: str = DICOM) -> list[bytes | None]:
        """One after the other: local reads are fastest so (see ``ObjectStore.read_many``)."""
        found: list[bytes | None] = []
        for key in keys:
            try:
                found.append(self.read(key, suffix))
            except FileNotFoundError:
                found.append(None)
        return found

    def read_range(self, key: str, offset: int, length: int, suffix: str = DICOM) -> bytes:
        with self.open_object(key, suffix) as f:
            f.seek(offset)
            return f.read(length)

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        with self.open_object(key) as f:
            while chunk := f.read(chunk_size):
                yield chunk

    def size(self, key: str) -> int:
        with self.open_object(key) as f:
            return os.fstat(f.fileno()).st_size

    def iter_stored(self, older_than: float) -> Iterator[str]:
        """Keys of published objects last modified more than ``older_than`` seconds ago (the staging
        areas are ``recover``'s)."""
        cutoff = time.time() - older_than
        with contextlib.suppress(FileNotFoundError), os.scandir(self.objects) as fan_outs:
            directories = sorted(entry.path for entry in fan_outs if entry.is_dir())
        for directory in directories:
            keys: set[str] = set()
            fan_out = os.path.basename(directory)
            with contextlib.suppress(FileNotFoundError), os.scandir(directory) as entries:
                for entry in entries:
                    if not is_object_name(fan_out, entry.name):
                        continue
                    with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                        if entry.is_file() and entry.stat().st_mtime < cutoff:
                            keys.add(entry.name.split(".", 1)[0])
            yield from sorted(keys)

    @contextlib.contextmanager
    def local_file(self, key: str, suffix: str = DICOM) -> Iterator[str]:
        name = f"{key}.{suffix}"
        for path in self._candidates(name, key):
            if os.path.exists(path):
                yield path  # the object itself
                return
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)


def file_checksum(path: str) -> tuple[int, int]:
    """(size, CRC-32) of a file."""
    checksum = size = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            checksum = zlib.crc32(chunk, checksum)
            size += len(chunk)
    return size, checksum


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
