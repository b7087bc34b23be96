"""Object storage: the ``ObjectStore`` interface (base.py) and its implementations (local.py)."""

from dicomd.storage.base import DICOM, METADATA, ObjectStore, Stager

__all__ = ["DICOM", "METADATA", "ObjectStore", "Stager"]
