"""Object storage: the ``ObjectStore`` interface (base.py), its implementations (local.py: a directory;
cloud.py: S3, Azure Blob, GCS through obstore) and ``open_store``, which picks one from the settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dicomd.storage.base import DICOM, METADATA, ObjectStore, Stager

if TYPE_CHECKING:
    from dicomd.config import Settings

__all__ = ["DICOM", "METADATA", "ObjectStore", "Stager", "open_store"]


def open_store(settings: Settings) -> ObjectStore:
    """The object store the settings name (``storage_url``; the default is a directory in data_dir)."""
    from dicomd.storage.local import LocalObjectStore

    return LocalObjectStore(settings.effective_storage_path)
