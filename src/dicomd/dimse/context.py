"""What the DIMSE handlers use: one per DICOM listener process, built by dimse/listener.py."""

from __future__ import annotations

from dataclasses import dataclass

from dicomd.config import Settings
from dicomd.index.store import Index
from dicomd.ingest.service import IngestService
from dicomd.storage import ObjectStore


@dataclass(frozen=True)
class Gateway:
    settings: Settings
    index: Index
    store: ObjectStore
    ingest: IngestService  # the STOW ingest path (staging, validation, group commit)
    peers: dict[str, tuple[str, int]]  # C-MOVE destinations: AE title -> (host, port), from dicom_peers
