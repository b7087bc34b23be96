"""Start-up preparation shared by the ``serve``, ``import`` and ``optimize`` commands (and by an
application created with ``migrate=True``): kept apart from the web application so that the commands that
serve nothing do not import it."""

from __future__ import annotations

from dicomd.config import Settings
from dicomd.index.store import Index
from dicomd.storage import open_store
from dicomd.storage.local import make_private_dir


def prepare(settings: Settings, index: Index | None = None, *, lock_timeout: float | None = None) -> None:
    """Start-up work (``serve`` before its workers start, ``import``, ``optimize``): data dirs, migration,
    recovery of the staged objects of processes that died. Safe next to a running server: a schema at
    head is only read, and recovery leaves the staging areas of live processes alone."""
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
