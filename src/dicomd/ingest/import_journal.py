"""What `dicomd import` has imported: each file's path, size and modification time with the instance it
holds, so that a run that was interrupted (or repeated) skips the files it already stored without
reading them. A small SQLite file of its own next to the data (not the index: it is the importer's
memory of the source files, not archive data). A file is recorded only after its instance's index
commit; a hit is trusted only while the index still has that instance."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SourceFile:
    """A file to import as the walk found it: what a journal entry must match to be skipped."""

    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class JournalEntry:
    path: str
    size: int
    mtime_ns: int
    partition_key: int
    sop_instance_uid: str


_SCHEMA = """
CREATE TABLE IF NOT EXISTS imported_file (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    partition_key INTEGER NOT NULL,
    sop_instance_uid TEXT NOT NULL
) WITHOUT ROWID
"""


class ImportJournal:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # the importer looks up from its walk and records from its commit thread: one connection, a lock
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._lock = threading.Lock()
        # losing the last records in a crash only costs re-reading those files
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._db.commit()

    def lookup(self, sources: Sequence[SourceFile]) -> dict[str, tuple[int, str]]:
        """(partition key, SOP Instance UID) of each source recorded with its current size and mtime.
        One query: the importer asks a few hundred paths at a time, far below SQLite's parameter limit
        (32766)."""
        by_path = {s.path: s for s in sources}
        marks = ",".join("?" * len(by_path))
        with self._lock:
            rows = self._db.execute(
                "SELECT path, size, mtime_ns, partition_key, sop_instance_uid FROM imported_file "
                f"WHERE path IN ({marks})",
                list(by_path),
            ).fetchall()
        found: dict[str, tuple[int, str]] = {}
        for path, size, mtime_ns, partition_key, sop in rows:
            source = by_path[path]
            if source.size == size and source.mtime_ns == mtime_ns:
                found[path] = (partition_key, sop)
        return found

    def record(self, entries: Iterable[JournalEntry]) -> None:
        rows = [(e.path, e.size, e.mtime_ns, e.partition_key, e.sop_instance_uid) for e in entries]
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO imported_file VALUES (?, ?, ?, ?, ?)", rows)
            self._db.commit()

    def close(self) -> None:
        self._db.close()
