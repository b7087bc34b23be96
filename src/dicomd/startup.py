"""Start-up preparation shared by the ``serve``, ``import`` and ``optimize`` commands (and by an
application created with ``migrate=True``): kept apart from the web application so that the commands that
serve nothing do not import it."""

from __future__ import annotations

from dicomd.config import Settings
from dicomd.index.store import Index
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
            store.recover(index.has_object)
        finally:
            store.close()
    finally:
        if own:
            index.close()
