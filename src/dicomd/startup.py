"""Start-up preparation shared by the ``serve``, ``import`` and ``optimize`` commands (and by an
application created with ``migrate=True``): kept apart from the web application so that the commands that
serve nothing do not import it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from dicomd.config import Settings
from dicomd.index.store import Index
from dicomd.ingest import shared_flush
from dicomd.ingest.committer import GroupCommitter
from dicomd.ingest.service import IngestService
from dicomd.jobs.sweep import OrphanSweep, SweepResult
from dicomd.storage import open_store
from dicomd.storage.local import make_private_dir


def migrate_index(settings: Settings, *, lock_timeout: float | None = None) -> str:
    """``dicomd migrate``: bring the index's schema to this code's head under the database's migration
    lock (safe while replicas run and start), and say what was done. Raises SchemaTooNew when a newer
    dicomd migrated it."""
    make_private_dir(settings.data_dir)
    index = Index(settings.effective_index_url, lock_timeout=lock_timeout)
    try:
        before, after = index.migrate()
    finally:
        index.close()
    if before == after:
        return f"the index schema is up to date (revision {after})"
    return f"the index schema was migrated from revision {before or '(none)'} to {after}"


def sweep_orphans(settings: Settings, *, grace_period: float | None = None) -> SweepResult | None:
    """``dicomd sweep``: one pass of the orphan sweep now (jobs/sweep.py), under the same lease as the
    servers' passes; None when one of them is sweeping. ``grace_period`` overrides
    ``orphan_grace_period`` (an archive known to be idle, e.g. in tests)."""
    index = Index(settings.effective_index_url)
    try:
        index.check_schema()
        store = open_store(settings)
        try:
            grace = settings.orphan_grace_period if grace_period is None else grace_period
            return OrphanSweep(index, store, grace_period=grace).run_once()
        finally:
            store.close()
    finally:
        index.close()


def prepare(settings: Settings, index: Index | None = None, *, lock_timeout: float | None = None) -> None:
    """Start-up work (``serve`` before its workers start, ``import``, ``optimize``): data dirs, migration,
    recovery of the staged objects of processes that died. Safe next to a running server: a schema at
    head is only read, and recovery leaves the staging areas of live processes alone. Raises
    SchemaTooNew when a newer dicomd migrated the index: this one must not serve it."""
    make_private_dir(settings.data_dir)
    own = index is None
    index = index or Index(settings.effective_index_url, lock_timeout=lock_timeout)
    try:
        index.migrate()
        store = open_store(settings)
        try:
            shared_flush.recover(index, store)
        finally:
            store.close()
    finally:
        if own:
            index.close()


async def open_ingest(
    settings: Settings, *, migrate: bool, lone_request: Callable[[], bool] | None = None
) -> IngestService:
    """The store path of a serving process (a web worker, the DICOM listener): its index, object store,
    group committer (started) and ingest service; ``close_ingest`` ends them. With ``migrate`` the index is
    prepared here; otherwise the supervisor migrated it and a schema newer than this code (a newer replica
    migrated since) is refused."""
    index = Index(
        settings.effective_index_url,
        delete_grace_period=settings.delete_grace_period,
        pool_size=settings.db_pool_size,
        timeout=settings.db_timeout,
    )
    if migrate:
        prepare(settings, index)
    else:
        await asyncio.to_thread(index.check_schema)
    store = open_store(settings)
    # a process that died (and that this one may be replacing) left its staged parts behind
    await asyncio.to_thread(shared_flush.recover, index, store)
    committer = GroupCommitter(
        index, store, overwrite=settings.duplicate_policy == "overwrite", max_batch=settings.commit_batch
    )
    committer.start()
    return IngestService(store, committer, bulk_threshold=settings.bulk_threshold, lone_request=lone_request)


async def close_ingest(ingest: IngestService) -> None:
    """After the commit in progress: stop the committer, then close the store and the index."""
    await ingest.committer.stop()
    ingest.store.close()
    ingest.committer.index.close()
