"""What one ingest pass over a DICOM file yields: the contract between parser, index and API."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

# A DICOM JSON element (PS3.18 F.2), e.g. {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]}
JsonElement = dict[str, Any]
# A DICOM JSON data set: "GGGGEEEE" (upper-case hex) -> element
JsonDataset = dict[str, JsonElement]


class InvalidDicom(Exception):
    """The bytes are not a DICOM Part 10 file we can read (truncated, malformed, not DICOM)."""


@dataclass(slots=True)
class ByteRange:
    """Absolute byte offset and length of a value inside the stored file."""

    offset: int
    length: int


class NativeFrames(Sequence[list[ByteRange]]):
    """The frames of native pixel data, described instead of listed: they are uniform, frame i covers
    bits [i * frame_bits, (i + 1) * frame_bits) of the value at `offset`, so a file that declares two
    billion frames costs three numbers, not a range per frame. With Bits Allocated 1 frames are
    bit-packed and a frame's range is the enclosing bytes (neighbouring frames may share a byte)."""

    __slots__ = ("frame_bits", "frame_count", "offset")

    def __init__(self, offset: int, frame_bits: int, frame_count: int) -> None:
        if frame_bits <= 0 or frame_count < 0:
            raise ValueError(f"invalid native frames: {frame_bits} bits, {frame_count} frames")
        self.offset = offset
        self.frame_bits = frame_bits
        self.frame_count = frame_count

    def _key(self) -> tuple[int, int, int]:
        return self.offset, self.frame_bits, self.frame_count

    def range(self, index: int) -> tuple[int, int]:
        """(offset, length) of frame `index` (0-based)."""
        if not 0 <= index < self.frame_count:
            raise IndexError(index)
        start_bit = index * self.frame_bits
        start = start_bit // 8
        return self.offset + start, (start_bit + self.frame_bits + 7) // 8 - start

    def __len__(self) -> int:
        return self.frame_count

    @overload
    def __getitem__(self, index: int) -> list[ByteRange]: ...
    @overload
    def __getitem__(self, index: slice) -> list[list[ByteRange]]: ...
    def __getitem__(self, index: int | slice) -> list[ByteRange] | list[list[ByteRange]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.frame_count))]
        if index < 0:
            index += self.frame_count
        return [ByteRange(*self.range(index))]

    def __iter__(self) -> Iterator[list[ByteRange]]:
        return (self[i] for i in range(self.frame_count))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, NativeFrames):
            return self._key() == other._key()
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return len(other) == self.frame_count and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "NativeFrames(offset={}, frame_bits={}, frame_count={})".format(*self._key())


@dataclass(slots=True)
class ParsedInstance:
    # File meta information
    transfer_syntax_uid: str
    # Identity (taken from the data set, not the file meta); "" when absent
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    # The whole top-level data set as DICOM JSON (UTF-8 decoded), large binary values replaced by
    # {"vr": .., "BulkDataURI": "bulkdata/<tagpath>"} - a URI relative to the instance's URL.
    # The group 0002 file meta elements are not included. SpecificCharacterSet is kept as in the file.
    dataset: JsonDataset
    # byte ranges of each bulk value, keyed by the same <tagpath> used in BulkDataURI
    # tagpath: "7FE00010" at top level, "00540016/0/00181072"-style for nested (seq tag / item index / tag)
    # Offsets are into the file, except for the Deflated transfer syntax: there they are into the
    # inflated data set (0 = its first byte), which readers inflate again as they stream.
    bulk: dict[str, ByteRange] = field(default_factory=dict)
    # Pixel data frames (offsets as for `bulk`): native pixel data is a NativeFrames (uniform frames,
    # described); encapsulated pixel data one entry per frame whose fragments are listed (a frame may
    # span several fragments; never more entries than fragments, each of which takes 8 bytes of file).
    frames: Sequence[list[ByteRange]] = field(default_factory=list)
    number_of_frames: int = 0
    # Human-readable warnings: invalid optional attributes (dropped from `dataset`), unknown charsets
    warnings: list[str] = field(default_factory=list)
    # Offset where the data set (after file meta) starts; total file length
    dataset_offset: int = 0
    file_length: int = 0
