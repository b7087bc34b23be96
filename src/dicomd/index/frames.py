"""Frame byte ranges as stored in the instance table's `frames` column, and their decoding.

Native frames are uniform: {"offset": o, "frame_bits": b, "frame_count": n} describes them (a list
would hold one range per frame, and a small file may declare billions of frames). Encapsulated
frames, and native frames stored before the description existed, are a list of frames, each a list
of [offset, length] (at most one entry per fragment, each 8 bytes of file, and no more than
dicom.frames.MAX_FRAGMENTS = 2^20 in all, ~25 MiB of JSON: an instance with more fragments is stored
without frames). Both decode without a migration; listed tables are decoded once per worker
(FRAME_TABLES) unless bigger than that cache.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import overload

import orjson

from dicomd.dicom.model import ByteRange, NativeFrames

FrameTable = Sequence[Sequence[tuple[int, int]]]


def encode_frames(frames: Sequence[list[ByteRange]]) -> str:
    """The `frames` column value of an instance's frames."""
    if isinstance(frames, NativeFrames):
        return orjson.dumps(
            {"offset": frames.offset, "frame_bits": frames.frame_bits, "frame_count": len(frames)}
        ).decode()
    return orjson.dumps([[[r.offset, r.length] for r in frame] for frame in frames]).decode()


class NativeRanges(Sequence[list[tuple[int, int]]]):
    """Decoded native frames: each frame's range computed on access."""

    __slots__ = ("_frames",)

    def __init__(self, frames: NativeFrames) -> None:
        self._frames = frames

    def __len__(self) -> int:
        return len(self._frames)

    @overload
    def __getitem__(self, index: int) -> list[tuple[int, int]]: ...
    @overload
    def __getitem__(self, index: slice) -> list[list[tuple[int, int]]]: ...
    def __getitem__(self, index: int | slice) -> list[tuple[int, int]] | list[list[tuple[int, int]]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return [self._frames.range(index + len(self) if index < 0 else index)]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


class FrameTableCache:
    """Listed frame tables decoded once per worker, by object key (unique per stored version, so an
    entry is never stale), least recently used out, bounded by the ranges held (~100 bytes each).
    Thread-safe: instances are found in threads, frames served on the event loop."""

    def __init__(self, max_ranges: int) -> None:
        self.max_ranges = max_ranges
        self._entries: OrderedDict[str, tuple[list[list[tuple[int, int]]], int]] = OrderedDict()
        self._ranges = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> list[list[tuple[int, int]]] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: str, table: list[list[tuple[int, int]]]) -> None:
        ranges = sum(map(len, table))
        if ranges > self.max_ranges:
            return  # bigger than the whole cache: decoded per request (a worker's memory comes first)
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = (table, ranges)
            self._ranges += ranges
            while self._ranges > self.max_ranges:
                _, (_, old) = self._entries.popitem(last=False)
                self._ranges -= old


FRAME_TABLES = FrameTableCache(1 << 18)


def frame_table(object_key: str, raw: str) -> FrameTable:
    """The frames of a stored instance from its `frames` column value."""
    if raw.startswith("{"):
        d = orjson.loads(raw)
        return NativeRanges(NativeFrames(d["offset"], d["frame_bits"], d["frame_count"]))
    if raw == "[]":
        return []
    table = FRAME_TABLES.get(object_key)
    if table is None:
        table = _parse_frames(raw)
        FRAME_TABLES.put(object_key, table)
    return table


def _parse_frames(raw: str) -> list[list[tuple[int, int]]]:
    return [[(r[0], r[1]) for r in frame] for frame in orjson.loads(raw)]
