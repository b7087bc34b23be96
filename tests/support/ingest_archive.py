"""The store path in process, for the ingest tests: a real SQLite index and a real local object store with
the STOW ingest service and its group committer (as a worker builds them)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sqlalchemy import event

from dicomd.index import Index, PreparedInstance
from dicomd.ingest.committer import GroupCommitter
from dicomd.ingest.prepare import StoreOutcome
from dicomd.ingest.service import IngestService
from dicomd.storage.local import LocalObjectStore


class Archive:
    def __init__(self, root: Path, *, index_dir: Path | None = None, overwrite: bool = False) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.index = Index(f"sqlite:///{(index_dir or root) / 'index.db'}")
        self.index.migrate()
        self.store = LocalObjectStore(root / "objects")
        self.committer = GroupCommitter(self.index, self.store, overwrite=overwrite, max_batch=64)
        self.ingest = IngestService(self.store, self.committer, bulk_threshold=1024)
        self.max_pages: int | None = None
        for engine in self.index.engines:  # the unflushed commits' own too
            event.listen(engine, "connect", self._limit_pages)

    def _limit_pages(self, dbapi_conn: Any, _record: Any) -> None:
        if self.max_pages is not None:
            dbapi_conn.execute(f"PRAGMA max_page_count={self.max_pages}")

    def fill_index(self) -> None:
        """Make the index's disk full: SQLite may not grow the database by a single page."""
        with self.index.engine.connect() as conn:
            self.max_pages = int(conn.exec_driver_sql("PRAGMA page_count").scalar_one())
        self.index.reconnect()

    def free_index(self) -> None:
        self.max_pages = None
        self.index.reconnect()

    def staged(self) -> list[Path]:
        staging = self.store.root / "staging"
        return [p for p in staging.rglob("*") if p.is_file() and not p.name.endswith(".lock")]

    async def prepare(self, data: bytes, chunks: int = 1) -> tuple[StoreOutcome, PreparedInstance | None]:
        """Stage and prepare one part, as api/stow.py does before the commit."""
        part = await self.ingest.stage(body(data, chunks))
        return await self.ingest.prepare(part, url_study=None, version=2)

    async def prepared(self, data: bytes) -> tuple[StoreOutcome, PreparedInstance]:
        """``prepare`` of a part that must prepare well."""
        outcome, prepared = await self.prepare(data)
        assert prepared is not None, outcome.messages
        return outcome, prepared

    async def stow(self, data: bytes, chunks: int = 1) -> StoreOutcome:
        """One part through the STOW steps: stage, prepare, commit (as api/stow.py runs them)."""
        outcome, prepared = await self.prepare(data, chunks)
        return outcome if prepared is None else await self.ingest.commit(outcome, prepared)

    def close(self) -> None:
        self.store.close()
        self.index.close()


async def body(data: bytes, chunks: int = 1) -> AsyncIterator[bytes]:
    """A request body of ``chunks`` pieces."""
    step = -(-len(data) // chunks)
    for start in range(0, len(data), step):
        yield data[start : start + step]


async def started_archive(root: Path) -> AsyncIterator[Archive]:
    """The body of an ``archive`` fixture: started, then stopped and closed."""
    archive = Archive(root)
    archive.committer.start()
    yield archive
    await archive.committer.stop()
    archive.close()
