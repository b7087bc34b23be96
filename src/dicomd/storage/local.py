"""Filesystem object store with crash-safe writes.

Objects are named by opaque keys (random hex, never UIDs: no PHI in paths). An instance is two objects: its
DICOM file (``.dcm``, byte-exact, irreplaceable) and its metadata (``.json``, derived from the DICOM file and
rebuilt from it when missing: see ingest/metadata.py). A write goes through three steps so that a 2xx is
durable and nothing is ever orphaned:

1. ``stage``: incoming bytes go to ``staging/<key>.<suffix>``;
2. ``sync``: one ``syncfs`` makes a whole batch of staged files durable at once (or, where the kernel has
   no syncfs, an fsync per DICOM file: metadata objects need no flush, they are rebuilt when lost);
3. the index commits, then ``publish`` renames the staged files to ``objects/abc/<key>.<suffix>``
   (one level of 4,096 directories: each new directory costs an inode allocation, and ext4 indexes
   large directories well).

After a crash, ``recover`` finishes step 3 for keys the index knows and deletes the rest.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import secrets
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

DICOM = "dcm"
METADATA = "json"
SUFFIXES = (DICOM, METADATA)
_TEMPORARY = ".tmp"  # a replacement being written (see replace_object)


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_syncfs = getattr(_libc, "syncfs", None)


def new_key() -> str:
    return secrets.token_hex(16)


# Hot-path file writes use the raw descriptor: Python's buffered open() adds an fstat, an ioctl, an
# lseek and two objects per file, which matter at thousands of files per second.
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
_MODE = 0o666  # as open() does: the umask decides


def write_all(fd: int, data: bytes | memoryview) -> None:
    """os.write until every byte is written (a regular file may take fewer at once, e.g. near ENOSPC)."""
    written = os.write(fd, data)
    if written < len(data):
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(fd, view) :]


def create_file(path: str) -> int:
    """Create (or truncate) ``path`` for writing: the caller writes with write_all and closes the fd."""
    return os.open(path, _NEW_FILE, _MODE)


def write_file(path: str, data: bytes) -> None:
    """Create (or truncate) ``path`` and write ``data`` to it, unflushed."""
    fd = create_file(path)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


class LocalObjectStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects"
        self.staging = root / "staging"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir(parents=True, exist_ok=True)
        self._objects_str = str(self.objects)
        self._staging_str = str(self.staging)
        self._made_dirs: set[str] = set()  # fan-out directories known to exist (saves a syscall per object)

    # ---- paths ---------------------------------------------------------------------------------
    def path(self, key: str, suffix: str = DICOM) -> Path:
        return Path(self._fan_out(key)) / f"{key}.{suffix}"

    def _fan_out(self, key: str) -> str:
        """The directory of a key's objects: objects/<first 3 characters of the key>."""
        return f"{self._objects_str}/{key[:3]}"

    def staged_path(self, key: str, suffix: str = DICOM) -> Path:
        return Path(self.staged_file(key, suffix))

    def staged_file(self, key: str, suffix: str = DICOM) -> str:
        """``staged_path`` as a string, for the per-instance hot paths (pathlib costs more than the
        syscall it names)."""
        return f"{self._staging_str}/{key}.{suffix}"

    # ---- writes --------------------------------------------------------------------------------
    def write_staged(self, key: str, suffix: str, data: bytes) -> None:
        write_file(self.staged_file(key, suffix), data)

    def sync(self, keys: Iterable[str]) -> None:
        """Make the staged files of a batch durable: one syncfs for the whole batch where the kernel has
        it, else an fsync per DICOM file. Measured on a virtual disk: the device flush dominates, so one
        syncfs costs about what one fdatasync does, whatever the batch size (10 files: 4 ms vs 17 ms)."""
        if _syncfs is not None:
            fd = os.open(self.staging, os.O_RDONLY)
            try:
                if _syncfs(fd) == 0:
                    return
            finally:
                os.close(fd)
        for key in keys:
            with contextlib.suppress(FileNotFoundError), open(self.staged_file(key), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(self.staging)

    def publish(self, keys: Iterable[str]) -> None:
        """Move committed objects into place. Durability of the rename is not needed for a 2xx:
        ``recover`` completes it after a crash because the index already names the key."""
        for key in keys:
            fan_out = self._fan_out(key)
            if fan_out not in self._made_dirs:
                os.makedirs(fan_out, exist_ok=True)
                self._made_dirs.add(fan_out)
            for suffix in SUFFIXES:
                name = f"{key}.{suffix}"
                with contextlib.suppress(FileNotFoundError):  # e.g. already moved by recover
                    os.replace(f"{self._staging_str}/{name}", f"{fan_out}/{name}")

    def replace_object(self, key: str, suffix: str, data: bytes) -> None:
        """Replace one object of a stored instance atomically (readers see the old bytes or the new
        ones), wherever it is now: in place, or still staged. The bytes are written to a temporary file
        in staging first (``recover`` removes those a crash leaves behind), not flushed."""
        target = self.path(key, suffix)
        if not target.parent.joinpath(f"{key}.{DICOM}").exists():
            target = self.staged_path(key, suffix)  # committed but not yet moved into place
        temporary = self.staging / f"{new_key()}{_TEMPORARY}"
        try:
            with open(temporary, "wb") as f:
                f.write(data)
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            raise

    def discard_staged(self, key: str) -> None:
        for suffix in SUFFIXES:
            with contextlib.suppress(FileNotFoundError):
                self.staged_path(key, suffix).unlink()

    def delete(self, key: str) -> None:
        """Idempotent: deleting a missing object is not an error."""
        for suffix in SUFFIXES:
            with contextlib.suppress(FileNotFoundError):
                self.path(key, suffix).unlink()
            with contextlib.suppress(FileNotFoundError):
                self.staged_path(key, suffix).unlink()

    # ---- reads ----------------------------------------------------------------------------------
    def open_object(self, key: str, suffix: str = DICOM) -> BinaryIO:
        # string paths: pathlib costs more than the read itself for small objects
        name = f"{key}.{suffix}"
        try:
            return open(f"{self._fan_out(key)}/{name}", "rb")
        except FileNotFoundError:
            # committed but not yet renamed into place by the committer
            return open(f"{self._staging_str}/{name}", "rb")

    def read(self, key: str, suffix: str = DICOM) -> bytes:
        with self.open_object(key, suffix) as f:
            return f.read()

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

    # ---- crash recovery ------------------------------------------------------------------------
    def recover(self, is_committed: Callable[[str], bool]) -> tuple[int, int]:
        """Publish staged objects the index knows, delete the others. Run before workers start."""
        published = removed = 0
        for temporary in self.staging.glob(f"*{_TEMPORARY}"):
            temporary.unlink()
        keys = {p.name.split(".", 1)[0] for p in self.staging.iterdir()}
        for key in keys:
            if is_committed(key):
                self.publish([key])
                published += 1
            else:
                self.discard_staged(key)
                removed += 1
        return published, removed


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
