"""Stored instances without a server, for the pixel functions' tests: objects are files in a directory,
their frame and bulk data byte ranges recorded as ingest records them. Holds no tests itself."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from dicomd.dicom.parser import parse_bytes
from dicomd.index.frames import encode_frames
from dicomd.index.types import StoredInstance


class FileStore:
    """The part of ObjectStore the pixel functions use: objects are files in a directory."""

    reads_are_local = True

    def __init__(self, root: Path) -> None:
        self.root = root

    def open_object(self, key: str, suffix: str = ".dcm") -> BinaryIO:
        return open(self.root / key, "rb")


def stored_instance(key: str, parsed: Any, size: int) -> StoredInstance:
    """The index's view of a parsed instance (dicom.parser's result) stored under ``key``."""
    return StoredInstance(
        study_instance_uid=parsed.study_instance_uid,
        series_instance_uid=parsed.series_instance_uid,
        sop_instance_uid=parsed.sop_instance_uid,
        sop_class_uid=parsed.sop_class_uid,
        transfer_syntax_uid=parsed.transfer_syntax_uid,
        object_key=key,
        file_size=size,
        number_of_frames=parsed.number_of_frames,
        frames_json=encode_frames(parsed.frames),
        bulk_json=orjson.dumps({p: [r.offset, r.length] for p, r in parsed.bulk.items()}).decode(),
        instance_number=None,
    )


def put(store: FileStore, data: bytes) -> StoredInstance:
    """Store ``data`` as ingest would: parsed once, its frame and bulk data byte ranges recorded."""
    key = uuid.uuid4().hex
    (store.root / key).write_bytes(data)
    return stored_instance(key, parse_bytes(data, temp_dir=str(store.root)), len(data))
