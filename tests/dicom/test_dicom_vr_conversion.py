"""Explicit to implicit VR little endian by rewriting element headers (dicomd/dicom/vr_conversion.py), against
pydicom's parse and write (the reference): byte for byte on every bundled explicit VR little endian file
whose text pydicom does not re-encode, element for element (decoded values) on the others; sequences and
items of defined and undefined length, nested; what it does not convert (truncated data, an undefined-length
value that is not a sequence, too deep a nesting, data that is not explicit VR) gives None."""

from __future__ import annotations

import io
import warnings
import zlib
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.sequence import Sequence
from pynetdicom.dsutils import encode

from dicomd.dicom.vr_conversion import explicit_to_implicit
from dicomd.dimse.passthrough import data_set_of
from dicomd.dimse.q_syntax import DEFLATED_LE, EXPLICIT_LE, IMPLICIT_LE, implicit_bytes

from support.dicom_files import CHARSET_FILES, TEST_FILES, make_instance

NOT_CONVERTED = {"MR_truncated.dcm"}  # its pixel data run past the end of the file


def _explicit_files() -> list[Path]:
    found = []
    for path in sorted([*TEST_FILES.rglob("*.dcm"), *CHARSET_FILES.rglob("*.dcm")]):
        raw = path.read_bytes()
        if raw[128:132] != b"DICM":
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                syntax = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True).file_meta.TransferSyntaxUID
            except Exception:
                continue
        if syntax == EXPLICIT_LE:
            found.append(path)
    return found


EXPLICIT_FILES = _explicit_files()


def _values(ds: Dataset) -> list[tuple[Any, str]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.decode()
        return [(e.tag, str(e.value)) for e in ds.iterall() if e.tag.element != 0x0000]


def _reference(raw: bytes) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoded = encode(pydicom.dcmread(io.BytesIO(raw)), True, True, False)
    assert encoded is not None
    return encoded


def _implicit(data: bytes) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_dataset(io.BytesIO(data), True, True)


def test_the_bundled_files_are_many() -> None:
    assert len(EXPLICIT_FILES) >= 30


@pytest.mark.parametrize("path", EXPLICIT_FILES, ids=lambda p: p.name)
def test_a_bundled_file_converts_as_pydicom_converts_it(path: Path) -> None:
    raw = path.read_bytes()
    ours = explicit_to_implicit(data_set_of(raw))
    if path.name in NOT_CONVERTED:
        assert ours is None
        return
    assert ours is not None
    reference = _reference(raw)
    if path.parent != CHARSET_FILES:
        assert ours == reference
    else:  # pydicom re-encodes some names (another escape sequence, less padding): the same values
        assert _values(_implicit(ours)) == _values(_implicit(reference))


def _explicit(ds: Dataset) -> bytes:
    encoded = encode(ds, False, True, False)
    assert encoded is not None
    return encoded


def _nested(depth: int) -> Dataset:
    ds = Dataset()
    ds.PatientID = "NEST"
    inner = ds
    for level in range(depth):
        item = Dataset()
        item.CodeValue = f"L{level}"
        item.CodeMeaning = "x" * (level % 3)
        item.add_new(0x00091010, "UT", "a long text " * level)  # a long VR inside: its header shrinks
        inner.ContentSequence = Sequence([item, Dataset()])
        inner = item
    return ds


def _with_undefined_lengths(ds: Dataset) -> bytes:
    for element in ds.iterall():
        if element.VR == "SQ":
            element.is_undefined_length = True
            for item in element.value:
                item.is_undefined_length_sequence_item = True
    return _explicit(ds)


@pytest.mark.parametrize("undefined", [False, True])
def test_nested_sequences_of_defined_and_undefined_length(undefined: bool) -> None:
    ds = _nested(6)
    data = _with_undefined_lengths(ds) if undefined else _explicit(ds)
    ours = explicit_to_implicit(data)
    assert ours is not None and ours == encode(ds, True, True, False)  # (pydicom keeps the lengths' kind)
    if undefined:
        assert ours.count(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00") == 6  # each sequence keeps its delimiter
        assert ours.count(b"\xfe\xff\x0d\xe0\x00\x00\x00\x00") == 12  # and each item


def test_a_generated_ct_and_its_deflated_form() -> None:
    raw = make_instance()
    ours = implicit_bytes(EXPLICIT_LE, IMPLICIT_LE, data_set_of(raw))
    assert ours is not None and ours == _reference(raw)
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = compressor.compress(bytes(data_set_of(raw))) + compressor.flush()
    assert implicit_bytes(DEFLATED_LE, IMPLICIT_LE, deflated) == ours
    assert implicit_bytes(DEFLATED_LE, IMPLICIT_LE, b"not deflate data") is None
    assert implicit_bytes(IMPLICIT_LE, EXPLICIT_LE, ours) is None  # not a header-only conversion


@pytest.mark.parametrize(
    "data",
    [
        b"\x10\x00\x10\x00PN\x0a\x00Doe^J",  # cut short
        b"\x10\x00\x10\x00PN",  # a header cut short
        b"\x10\x00\x10\x00\x0a\x00\x00\x00Doe^John^X",  # implicit VR, not explicit
        b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\x00\x00\x00\x00",  # encapsulated
        b"\x09\x00\x10\x10UN\x00\x00\xff\xff\xff\xff\xfe\xff\xdd\xe0\x00\x00\x00\x00",  # UN, undefined length
        b"\xfe\xff\x00\xe0\x00\x00\x00\x00",  # an item among the elements
        b"\x40\x00\x30\xa7SQ\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\xff\xff\xff\xff",  # an unended item
        b"\x40\x00\x30\xa7SQ\x00\x00\x10\x00\x00\x00\xfe\xff\x00\xe0\x20\x00\x00\x00",  # item past its end
    ],
)
def test_what_it_does_not_convert_gives_none(data: bytes) -> None:
    assert explicit_to_implicit(data) is None


def test_too_deep_a_nesting_gives_none_not_a_crash() -> None:
    item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    sequence = b"\x40\x00\x30\xa7SQ\x00\x00\xff\xff\xff\xff"
    data = (sequence + item) * 100_000
    assert explicit_to_implicit(data) is None


def test_an_empty_data_set() -> None:
    assert explicit_to_implicit(b"") == b""
