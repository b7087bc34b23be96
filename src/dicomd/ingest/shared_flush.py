"""One device flush per group commit where the SQLite index and the objects share a file system.

The general path flushes twice per group commit: a syncfs of the staged files, then the index commit's
WAL flush. When the SQLite database is on the staging area's file system, one syncfs after the commit
covers both: the index commits without its own flush (``synchronous=NORMAL``), then the syncfs, and
only then are the objects published and the stores acknowledged. Small batches wait on the disk about
half as long, and the index's writer lock is no longer held across a device flush.

A crash between the commit and the syncfs may keep the commit (its WAL pages reached the disk) and lose
or cut short a file (its pages did not). So the commit also records each stored instance's file size
and CRC-32 under its staging area (``unsynced_object``); a later commit of the same process forgets
them once a syncfs has made them durable. Recovery of a dead process's staging area (start-up, or any
process's ``recover``) checks the files of the rows left for that area and rolls back (a Delete in the
change feed) every instance whose file is not whole. Such an instance was never acknowledged: the
acknowledgement waits for the syncfs, and a file that went through one is whole.

Where this does not apply (PostgreSQL, a cloud store, the index on another file system, a kernel
without syncfs, the ``overwrite`` duplicate policy, whose rolled-back replacement would lose the version
it replaced) commits keep the general path.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Sequence
from pathlib import Path

from dicomd.index.store import Index
from dicomd.index.types import UnsyncedBatch
from dicomd.storage import ObjectStore
from dicomd.storage.base import AreaCheck
from dicomd.storage.local import LocalObjectStore

log = logging.getLogger(__name__)

_FORGET_AFTER = 256
_FORGET_AFTER_BYTES = 64 << 20


class SharedFlush:
    """The shared-flush commits of one process's staging area (see the module's docstring)."""

    def __init__(self, index: Index, store: LocalObjectStore) -> None:
        self.index = index
        self.store = store
        store.keep_checksums()
        # stored keys a syncfs made durable, with their total size: their rows are dropped by a later
        # commit once there are enough of them (each commit touching the table costs a page write)
        self._synced: list[str] = []
        self._synced_bytes = 0
        self._lock = threading.Lock()
        self._wal_suspect = False  # a sync failed: see before_commit

    @classmethod
    def where_possible(cls, index: Index, store: ObjectStore, *, overwrite: bool) -> SharedFlush | None:
        """A SharedFlush when the index and the objects can share one flush, else None."""
        if overwrite or index.sqlite_file is None or not isinstance(store, LocalObjectStore):
            return None
        if not store.flushes_with_objects(index.sqlite_file):
            return None
        return cls(index, store)

    def before_commit(self) -> None:
        """After a failed sync, before the next commit: its write-back error may have been the index's
        WAL frames, lost on the device while the page cache keeps them. SQLite's recovery stops at the
        first bad frame and drops every later one, so a later batch's frames, synced and acknowledged,
        would be lost with them: the WAL is first copied into the database file, flushed and restarted.
        Raises (the batch fails; the next one tries again) when readers kept that from completing."""
        if self._wal_suspect:
            if not self.index.restart_wal():
                raise OSError(errno.EAGAIN, "the index could not be flushed after a failed sync")
            self._wal_suspect = False

    def batch(self, keys: Sequence[str]) -> UnsyncedBatch:
        """What ``Index.add_instances`` records for a batch about to be committed ahead of its flush
        (the sizes and checksums of its staged files are read back here, before the writer lock)."""
        checksums = self.store.checksums(keys)
        synced: list[str] = []
        with self._lock:
            # a bound on what a recovery may have to read back: a few hundred files, 64 MiB
            if len(self._synced) >= _FORGET_AFTER or self._synced_bytes >= _FORGET_AFTER_BYTES:
                synced, self._synced, self._synced_bytes = self._synced, [], 0
        return UnsyncedBatch(self.store.staging_area, checksums, synced)

    def not_committed(self, batch: UnsyncedBatch) -> None:
        """The batch's transaction failed: its earlier synced keys are forgotten by a later one."""
        with self._lock:
            self._synced[:0] = batch.synced

    def synced(self, batch: UnsyncedBatch, stored: Sequence[str]) -> None:
        """The syncfs after the commit returned: these instances are durable."""
        with self._lock:
            self._synced.extend(stored)
            self._synced_bytes += sum(batch.checksums[key][0] for key in stored)

    def forget_synced(self) -> None:
        """At a clean stop: drop the rows of everything synced, so that no recovery reads them back."""
        with self._lock:
            synced, self._synced, self._synced_bytes = self._synced, [], 0
        try:
            self.index.settle_unsynced([], synced=synced)
        except Exception as exc:  # the next recovery reads those files back instead
            log.warning("forgetting %d synced instances failed (%s)", len(synced), type(exc).__name__)

    def sync_failed(self, stored: Sequence[str]) -> bool:
        """The syncfs after the commit failed: any of the batch's files may be lost, so its stored
        instances are rolled back. Returns whether they were (else their rows stay, checked against
        their files by the next recovery, and their staged files must be kept for it)."""
        self._wal_suspect = True
        try:
            self.index.settle_unsynced(stored)
        except Exception:
            log.exception("rolling back %d instances after a failed sync failed", len(stored))
            return False
        return True


def area_check(index: Index, store: ObjectStore) -> AreaCheck | None:
    """For ``recover``: roll back what a dead process committed ahead of a flush that never came."""
    if index.sqlite_file is None or not isinstance(store, LocalObjectStore):
        return None

    def check(area: str, directory: Path) -> None:
        entries = index.unsynced_objects(area)
        if not entries:
            return
        lost = [key for key, size, crc in entries if not store.holds_intact(directory, key, size, crc)]
        rolled_back = index.settle_unsynced(lost, staging_area=area)
        if rolled_back:
            # never acknowledged: the acknowledgement waits for the flush that the crash prevented
            log.warning(
                "staging area %s: %d instances committed before a crash whose files did not reach the "
                "disk whole were rolled back (never acknowledged)",
                area,
                rolled_back,
            )

    return check


def recover(index: Index, store: ObjectStore) -> tuple[int, int]:
    """``store.recover`` for this index, with ``area_check`` where it applies."""
    return store.recover(index.has_object, area_check(index, store))
