"""Object storage: the ``ObjectStore`` interface (base.py), its implementations (local.py: a directory;
cloud.py: S3, Azure Blob, GCS through obstore) and ``open_store``, which picks one from the settings."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from dicomd.storage.base import DICOM, METADATA, ObjectStore, Stager, StorageUnavailable, content_checksum

if TYPE_CHECKING:
    from dicomd.config import Settings

__all__ = [
    "DICOM",
    "METADATA",
    "ObjectStore",
    "Stager",
    "StorageUnavailable",
    "content_checksum",
    "open_store",
]


def open_store(settings: Settings) -> ObjectStore:
    """The object store the settings name: a directory (``file://``, the default: ``storage_path``) or a
    cloud store (``s3://``, ``az://``, ``gs://``), checked reachable. Raises StorageUnavailable (naming
    the store without credentials) when it is not, ValueError for invalid options."""
    url = settings.effective_storage_url
    if url.startswith("file://"):
        from dicomd.storage.local import LocalObjectStore

        return LocalObjectStore(Path(unquote(urlsplit(url).path)))
    from dicomd.storage.cloud import CloudObjectStore

    store = CloudObjectStore(
        url,
        settings.storage_options,
        staging_dir=settings.effective_staging_dir,
        timeout=settings.storage_timeout,
    )
    try:
        store.check()
    except BaseException:
        store.close()
        raise
    return store
