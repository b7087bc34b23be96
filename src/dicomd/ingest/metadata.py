"""Metadata objects: the DICOM JSON of an instance, derived from its DICOM file at ingest.

The DICOM file is the record; its metadata object can always be derived again. Each object ends with a
newline, a byte compact JSON never contains elsewhere (orjson escapes control characters in strings), so
an object cut short (a crash before the flush reached it) can be told from a complete one; readers
rebuild a missing or cut-short object from the DICOM file and put it back. Objects written before the
marker existed are checked once by parsing them, and get the marker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from dicomd.dicom.parser import PIXEL_TAGS, parse_file
from dicomd.storage import DICOM, METADATA, ObjectStore

log = logging.getLogger(__name__)

_END = b"\n"
# no threshold: every binary value inline but pixel data (which always goes to bulk data)
_NO_THRESHOLD = 1 << 62

BulkRanges = Mapping[str, tuple[int, int]]


def encode(dataset: dict[str, Any]) -> bytes:
    return orjson.dumps(dataset, option=orjson.OPT_APPEND_NEWLINE)  # the end marker, without a copy


def is_complete(blob: bytes) -> bool:
    return blob.startswith(b"{") and blob.endswith(b"}" + _END)


def read_metadata(
    store: ObjectStore, key: str, bulk: Callable[[], BulkRanges], data: bytes | None = None
) -> bytes:
    """The instance's DICOM JSON object (without the end marker).

    `data` is the stored object when the caller read it already (``ObjectStore.read_many``, b"" for a
    missing one); None reads it here. A missing or incomplete object is rebuilt from the DICOM file;
    `bulk` gives the bulk data ranges the index recorded at ingest (asked only then), so that the rebuilt
    object names the same bulk data whatever the bulk threshold is now. Raises FileNotFoundError when
    the instance itself is gone.
    """
    blob = data if data is not None else _read_stored(store, key)
    if is_complete(blob):
        return blob[:-1]
    if _is_unmarked_object(blob):
        _put(store, key, blob + _END)
        return blob
    log.warning("rebuilding metadata object %s from its DICOM file", key)  # random key: no PHI
    return rebuild(store, key, bulk())[:-1]


def _read_stored(store: ObjectStore, key: str) -> bytes:
    try:
        return store.read(key, METADATA)
    except FileNotFoundError:
        return b""


def _is_unmarked_object(blob: bytes) -> bool:
    """A whole object as written before the end marker existed. Parsing tells: no proper prefix of a
    JSON object that ends with '}' is itself a JSON object."""
    if not blob.startswith(b"{") or not blob.endswith(b"}"):
        return False
    try:
        return isinstance(orjson.loads(blob), dict)
    except orjson.JSONDecodeError:
        return False


def ingest_threshold(bulk: BulkRanges) -> int:
    """A bulk threshold that splits the instance's binary values into inline and bulk data exactly as at
    ingest: values longer than the threshold were bulk data, pixel data always."""
    lengths = [length for path, (_, length) in bulk.items() if int(path[-8:], 16) not in PIXEL_TAGS]
    return min(lengths) - 1 if lengths else _NO_THRESHOLD


def rebuild(store: ObjectStore, key: str, bulk: BulkRanges) -> bytes:
    """Derive the metadata object again from the DICOM file and put it in place.

    Deflated instances stored before dicomd recorded ranges into their inflated data set have no bulk
    data at all (every binary value inline, pixel data too): no recorded bulk data rebuilds them so. It
    changes nothing for other instances without bulk data: they have no pixel data value to inline.
    """
    with store.local_file(key, DICOM) as path:
        parsed = parse_file(path, bulk_threshold=ingest_threshold(bulk), inline_deflated=not bulk)
    blob = encode(parsed.dataset)
    _put(store, key, blob)  # (an instance deleted meanwhile keeps no metadata: see replace_derived)
    return blob


def _put(store: ObjectStore, key: str, blob: bytes) -> None:
    """Replace the metadata object atomically (readers see the old object or the new one). Best effort:
    on a read-only or full disk the caller serves the object anyway and the next reader tries again."""
    try:
        store.replace_derived(key, METADATA, blob)
    except OSError:
        log.warning("could not write metadata object %s", key, exc_info=True)
