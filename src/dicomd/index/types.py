"""What the index takes and gives: instances to add, their outcomes, stored instances, change-feed entries."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import orjson

from dicomd.dicom.model import ParsedInstance
from dicomd.index.frames import FrameTable, frame_table

AddStatus = Literal["created", "replaced", "identical", "exists", "conflict"]
# same_file(stored object key, new object key): whether the two DICOM files hold the same bytes
SameFile = Callable[[str, str], bool]
Action = Literal["Create", "Update", "Delete"]
State = Literal["Current", "Replaced", "Deleted"]


@dataclass(slots=True)
class NewInstance:
    partition_key: int
    parsed: ParsedInstance
    object_key: str
    file_size: int


@dataclass(slots=True)
class PreparedInstance:
    """A NewInstance with its index row values computed by Index.prepare (pure CPU, no database).

    add_instances runs inside the writer lock, which serialises all worker processes; preparing
    beforehand (e.g. in the ingest parse thread) keeps that CPU work out of the lock.
    """

    item: NewInstance
    study: dict[str, Any]  # study row columns (attrs JSON included), without keys/counts/timestamps
    series: dict[str, Any]
    instance: dict[str, Any]


@dataclass(frozen=True, slots=True)
class UnsyncedBatch:
    """A group commit made ahead of the flush that makes it durable (see schema.unsynced_object): the
    staging area its files are in, each staged DICOM file's (size, CRC-32) by object key, and the keys
    of earlier batches of this process that its syncs have made durable since (their rows are dropped
    in the same transaction)."""

    staging_area: str
    checksums: Mapping[str, tuple[int, int]]
    synced: Sequence[str] = ()


@dataclass(slots=True)
class AddResult:
    """Outcome for one NewInstance.

    created: new instance; replaced: existed and overwrite=True (replaced_object_key is the old
    storage object, already queued for deletion); identical: existed with the same bytes (a re-send,
    whatever overwrite says), nothing changed; exists: existed and overwrite=False, nothing
    changed; conflict: the SOP Instance UID exists in this partition under a different study or
    series, nothing changed (the caller should not store or should delete the new object).
    """

    status: AddStatus
    replaced_object_key: str | None = None


@dataclass(slots=True)
class StoredInstance:
    """An indexed instance as retrieve/metadata/frames/bulk data need it.

    The frame and bulk data byte ranges are kept as their stored JSON and decoded on first access
    of `frames` / `bulk`: metadata and retrieve of large studies never need them (`has_bulk` tells
    whether there is bulk data without decoding). Ranges of a deflated instance are offsets into its
    inflated data set (see dicom/model.py).
    """

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    object_key: str
    file_size: int
    number_of_frames: int
    frames_json: str
    bulk_json: str
    instance_number: int | None
    _frames: FrameTable | None = field(default=None, init=False, repr=False, compare=False)
    _bulk: dict[str, tuple[int, int]] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def frames(self) -> FrameTable:
        """Byte ranges of each frame's data in the file (encapsulated: one or more fragments); native
        frames are computed from their description, listed tables are decoded once per worker."""
        if self._frames is None:
            self._frames = frame_table(self.object_key, self.frames_json)
        return self._frames

    @property
    def bulk(self) -> dict[str, tuple[int, int]]:
        """Byte range of each bulk data element by its path ("7FE00010", "00540016/0/00181072")."""
        if self._bulk is None:
            self._bulk = _parse_bulk(self.bulk_json) if self.bulk_json != "{}" else {}
        return self._bulk

    @property
    def has_bulk(self) -> bool:
        """Whether the instance has bulk data (BulkDataURIs in its metadata), without decoding."""
        return self.bulk_json != "{}"


def _parse_bulk(raw: str) -> dict[str, tuple[int, int]]:
    return {k: (v[0], v[1]) for k, v in orjson.loads(raw).items()}


@dataclass(slots=True)
class ChangeEntry:
    sequence: int
    partition_key: int
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    action: Action
    timestamp: datetime  # aware, UTC, millisecond precision
    state: State  # computed at read time from the instance's current object_key
    object_key: str
