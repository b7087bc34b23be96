"""Metadata objects: the DICOM JSON of an instance, derived from its DICOM file at ingest.

Only the DICOM file is irreplaceable, so only it is made durable before a store is acknowledged; the
metadata object is written without a flush and rebuilt from the DICOM file whenever a reader finds it
missing or incomplete (after a crash, or if it was damaged). Each object ends with a newline, a byte
compact JSON never contains elsewhere (orjson escapes control characters in strings), so a file cut short
by a crash can always be told from a complete one.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import orjson

from dicomd.dicom.parser import parse_file
from dicomd.storage.local import DICOM, METADATA, LocalObjectStore, new_key

_END = b"\n"


def encode(dataset: dict[str, Any]) -> bytes:
    return orjson.dumps(dataset) + _END


def is_complete(blob: bytes) -> bool:
    return blob.startswith(b"{") and blob.endswith(b"}" + _END)


def read_metadata(store: LocalObjectStore, key: str, bulk_threshold: int) -> bytes:
    """The instance's DICOM JSON object (without the end marker), rebuilt from its DICOM file when the
    stored one is missing or incomplete. Raises FileNotFoundError when the instance itself is gone."""
    try:
        blob = store.read(key, METADATA)
    except FileNotFoundError:
        blob = b""
    if is_complete(blob):
        return blob[:-1]
    return rebuild(store, key, bulk_threshold)[:-1]


def rebuild(store: LocalObjectStore, key: str, bulk_threshold: int) -> bytes:
    """Derive the metadata object again from the DICOM file and put it in place (atomically: concurrent
    readers see the old file or the new one, never a partial one)."""
    with store.open_object(key, DICOM) as f:
        path = f.name
        blob = encode(parse_file(path, bulk_threshold=bulk_threshold).dataset)
    target = os.path.join(os.path.dirname(path), f"{key}.{METADATA}")
    temporary = f"{target}.{new_key()}.tmp"
    try:
        with open(temporary, "wb") as out:
            out.write(blob)
        os.replace(temporary, target)
    except OSError:
        # read-only or full disk: serve the rebuilt object anyway, the next reader tries again
        with contextlib.suppress(OSError):
            os.unlink(temporary)
    return blob
