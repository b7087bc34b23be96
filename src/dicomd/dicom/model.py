"""What one ingest pass over a DICOM file yields: the contract between parser, index and API."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
    bulk: dict[str, ByteRange] = field(default_factory=dict)
    # Pixel data frames: for native pixel data one range per frame; for encapsulated pixel data one
    # entry per frame whose fragments are listed (a frame may span several fragments).
    frames: list[list[ByteRange]] = field(default_factory=list)
    number_of_frames: int = 0
    # Human-readable warnings: invalid optional attributes (dropped from `dataset`), unknown charsets
    warnings: list[str] = field(default_factory=list)
    # Offset where the data set (after file meta) starts; total file length
    dataset_offset: int = 0
    file_length: int = 0
