"""The parser's C fast path (dicomd/dicom/_fastscan.c) against its pure Python loop, the reference:
the same data set, warnings and byte ranges on every bundled file, on fuzzed files and on value edge
cases; and the whole parser suite also runs without the fast path (tests/dicom/test_dicom_parser.py).
Person names, private creators and binary values: tests/dicom/test_dicom_fastscan_more.py; sequences:
tests/dicom/test_dicom_fastscan_seq.py."""

from __future__ import annotations

import importlib.util
import os
import random
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from test_dicom_parser import FILES, FUZZ_FILES, _ids

from dicomd.dicom import parser
from dicomd.dicom.model import ByteRange, InvalidDicom

if parser._SCAN is None and os.environ.get("DICOMD_REQUIRE_FASTSCAN"):
    # CI builds where a compiler is known to be present: a silently skipped extension is a failure
    raise RuntimeError("dicomd.dicom._fastscan was not built (DICOMD_REQUIRE_FASTSCAN is set)")
# Skipped only when there is no extension at all: a stale one (which parser.py ignores) fails the tests.
BUILT = importlib.util.find_spec("dicomd.dicom._fastscan") is not None
pytestmark = pytest.mark.skipif(not BUILT, reason="built without the C fast path")

DATA = FILES[0].parents[1]


def _outcome(data: bytes, scan: Any, threshold: int = 64, inline_deflated: bool = False) -> Any:
    saved = parser._SCAN
    parser._SCAN = scan
    try:
        p = parser.parse_bytes(data, bulk_threshold=threshold, inline_deflated=inline_deflated)
    except InvalidDicom as exc:
        return ("invalid", str(exc))
    finally:
        parser._SCAN = saved
    # the bulk ranges in insertion order too (they follow the data set's order)
    return (p.dataset, p.warnings, list(p.bulk.items()), p.frames, p.transfer_syntax_uid, p.sop_instance_uid)


_STALE = "the extension is stale (parser.py ignores it): .venv/bin/pip install -e ."


def _same(data: bytes, scan: Any = None, threshold: int = 64, inline_deflated: bool = False) -> None:
    scan = scan or parser._SCAN
    assert scan is not None, _STALE
    fast = _outcome(data, scan, threshold, inline_deflated)
    slow = _outcome(data, None, threshold, inline_deflated)
    assert fast == slow
    if fast[0] != "invalid":  # also the JSON types (7 == 7.0 in Python, not in the JSON) and key order
        assert orjson.dumps(fast[0]) == orjson.dumps(slow[0])


def _differs(data: bytes, scan: Any, threshold: int, inline_deflated: bool = False) -> bool:
    """Whether a (deliberately wrong) scan fails the comparisons of _same on this file."""
    try:
        _same(data, scan, threshold, inline_deflated)
    except AssertionError:
        return True
    return False


def _scan(
    buf: bytes,
    pos: int,
    end: int,
    ds: dict[str, Any],
    text_ok: bool = True,
    creators: dict[int, str] | None = None,
    prefix: str = "",
    bulk: dict[str, ByteRange] | None = None,
    threshold: int = 64,
    inline_bulk: bool = False,
    levels: int = 64,
    given_back: set[int] | None = None,
) -> int:
    """The C scan called directly, with the parser's arguments (creators, bulk ctx, levels, sequence
    state) defaulted."""
    assert parser._SCAN is not None, _STALE
    creators = {} if creators is None else creators
    bulk = {} if bulk is None else bulk
    ctx = (bulk, threshold, inline_bulk, ByteRange)
    given = set() if given_back is None else given_back
    return parser._SCAN(buf, pos, end, ds, text_ok, creators, prefix, ctx, levels, given)


@pytest.mark.parametrize("path", FILES, ids=_ids)
def test_bundled_file_same_with_and_without_fast_path(path: Path) -> None:
    _same(path.read_bytes())


@pytest.mark.parametrize("name", FUZZ_FILES)
def test_fuzzed_files_same_with_and_without_fast_path(name: str) -> None:
    data = (DATA / "test_files" / name).read_bytes()
    rng = random.Random("fast" + name)
    for _ in range(150):
        b = bytearray(data[: rng.randrange(132, len(data) + 1)] if rng.random() < 0.2 else data)
        for _ in range(rng.choice((1, 2, 8))):
            pos = rng.randrange(min(len(b), 132 + 2000)) if rng.random() < 0.8 else rng.randrange(len(b))
            b[pos] = rng.randrange(256)
        _same(bytes(b))


def _element(tag: int, vr: str, value: bytes) -> bytes:
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(value)) + value


def _file(*elements: bytes, charset: bytes | None = None) -> bytes:
    meta_body = _element(0x00020010, "UI", b"1.2.840.10008.1.2.1\0")
    meta = _element(0x00020000, "UL", struct.pack("<L", len(meta_body))) + meta_body
    body = b""
    if charset is not None:
        body += _element(0x00080005, "CS", charset)
    body += _element(0x00080016, "UI", b"1.2.840.10008.5.1.4.1.1.7\0")
    body += _element(0x00080018, "UI", b"1.2.3.4\0")
    return b"\0" * 128 + b"DICM" + meta + body + b"".join(elements)


# value edge cases per VR: padding, blanks, separators, bad numbers, non-ASCII, escapes, overlong UIDs
_CASES: dict[str, list[bytes]] = {
    "CS": [b"", b" ", b"A ", b"A\\B", b"A\\\\B ", b"\\", b"A\0", b"\xc4\xd6", b"A\x1bB ", b" A "],
    "DA": [b"20240102", b"2024010 ", b"20240102\\20240103"],
    "TM": [b"101112.5 ", b"10\0\0"],
    "AS": [b"045Y"],
    "DT": [b"20240102101112.000000+0100 "],
    "AE": [b"", b"  ", b" AE1 ", b"AE1\\ AE2 ", b"A\tB\x1c ", b"\0AE\0", b"\\"],
    "UI": [
        b"",
        b"\0",
        b"1.2.3\0",
        b"1.2.3 ",
        b"1.2\\3.4",
        b"1.2\\\\3",
        b"1.a.3",
        b"1.2 3",
        b"1" * 64,
        b"1" * 66,
    ],
    "IS": [
        b"12",
        b" 12 ",
        b"12\0",
        b"-5\\+6",
        b"1\\ \\3",
        b"  ",
        b"1.0",
        b"1e3",
        b"x",
        b"1_0",
        b"\\",
        b"99999999",
    ],
    "DS": [
        b"1.5",
        b" 1.5 ",
        b"1.5\0",
        b"1\\2.5\\-3e2",
        b"1\\ \\3",
        b" ",
        b"inf",
        b"nan",
        b"1e999",
        b"1.5\t\0",
        b"x",
    ],
    "LO": [b"", b" ", b"Text ", b"A\\B \\\0", b"\xe9t\xe9", b"esc\x1b$B", b"\\"],
    "SH": [b"Short\0", b"  \\  "],
    "ST": [b"Some text\\with backslash  ", b"  ", b"\0\0"],
    "LT": [b"Line 1\r\nLine 2 "],
    "US": [b"", b"\x01\x00", b"\x01\x00\x02\x00", b"\xff\xff"],
    "SS": [b"\xff\xff", b"\x00\x80"],
    "UL": [b"\xff\xff\xff\xff", b"\x01\x00\x00"],
    "SL": [b"\x00\x00\x00\x80"],
    "FL": [b"\x00\x00\xc0\x3f", b"\x00\x00\x80\x7f"],
    "FD": [b"\x00\x00\x00\x00\x00\x00\xf8\x3f", b"\x00" * 16],
    "PN": [
        b"",
        b" ",
        b"\0",
        b"Doe^John",
        b"Doe^John \0",
        b"Doe ^John \\Roe^Jane  ",
        b"A\\\\B",
        b"\\",
        b" \\ ",
        b"=",
        b"A==",
        b"=B",
        b"==C",
        b"A=B=C",
        b"A=B=C=D",
        b"A===D",
        b"A=\\=B\\\0",
        b"A \0B ",
        b"M\xfcller^Hans",
        b"Yamada=\x1b$B;3ED\x1b(B",
    ],
}


def _edge_cases() -> Iterator[tuple[str, bytes]]:
    for vr, values in _CASES.items():
        for v in values:
            yield vr, v + (b" " if len(v) % 2 and vr not in ("US", "SS", "UL", "SL", "FL", "FD") else b"")


@pytest.mark.parametrize("charset", [None, b"ISO_IR 100", b"ISO 2022 IR 87", b"ISO_IR 192"])
def test_value_edge_cases_same_with_and_without_fast_path(charset: bytes | None) -> None:
    for vr, value in _edge_cases():
        for tag in (0x00181030, 0x00091010, 0x00090010, 0x00280100):  # public, private, creator, tracked
            _same(_file(_element(tag, vr, value), charset=charset))


def test_fast_path_converts_a_typical_header() -> None:
    data = _file(
        _element(0x00080060, "CS", b"CT"),
        _element(0x00180050, "DS", b"1.25"),
        _element(0x00200013, "IS", b"7 "),
        _element(0x00280010, "US", b"\x00\x02"),
        _element(0x00200032, "DS", b"-1\\2.5\\3 "),
    )
    dataset = parser.parse_bytes(data).dataset
    assert dataset["00080060"] == {"vr": "CS", "Value": ["CT"]}
    assert dataset["00180050"] == {"vr": "DS", "Value": [1.25]}
    assert dataset["00200013"] == {"vr": "IS", "Value": [7]}
    assert dataset["00280010"] == {"vr": "US", "Value": [512]}
    assert dataset["00200032"] == {"vr": "DS", "Value": [-1.0, 2.5, 3.0]}
    _same(data)


def test_range_outside_the_buffer_is_refused() -> None:
    with pytest.raises(ValueError):
        _scan(b"\0" * 16, 0, 32, {})
    with pytest.raises(ValueError):
        _scan(b"\0" * 16, 12, 8, {})


def test_scan_converts_simple_elements_and_stops_at_the_first_other_one() -> None:
    simple = (
        _element(0x00080060, "CS", b"MR")
        + _element(0x00200013, "IS", b"12")
        + _element(0x00280010, "US", b"\x10\x00")
        + _element(0x00100010, "PN", b"Doe^John")
    )
    other = _long(0x00091010, "UN", b"ACME")
    buf = simple + other + _element(0x00080070, "LO", b"ACME")
    ds: dict[str, Any] = {}
    assert _scan(buf, 0, len(buf), ds) == len(simple)  # UN is the Python loop's
    assert orjson.dumps(ds) == orjson.dumps(
        {
            "00080060": {"vr": "CS", "Value": ["MR"]},
            "00200013": {"vr": "IS", "Value": [12]},
            "00280010": {"vr": "US", "Value": [16]},
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]},
        }
    )
    after = len(simple) + len(other)
    assert _scan(buf, after, len(buf), ds) == len(buf)
    assert ds["00080070"] == {"vr": "LO", "Value": ["ACME"]}


# an item header (its length follows) and an element with an implicit VR header (a UI of 0 bytes)
_ITEM_HEAD = b"\xfe\xff\x00\xe0"
_IMPLICIT_UI = b"\x08\x00\x18\x00\x00\x00\x00\x00"


def _long(tag: int, vr: str, value: bytes, length: int | None = None) -> bytes:
    """An element with the 12-byte header of OB, OW, UN, SQ... (length: to write another one)."""
    n = len(value) if length is None else length
    return struct.pack("<HH2sHL", tag >> 16, tag & 0xFFFF, vr.encode(), 0, n) + value


@pytest.mark.parametrize(
    ("element", "text_ok"),
    [
        (_element(0x00080005, "CS", b"ISO_IR 100"), True),  # the character set: tracked by Python
        (_element(0x00280100, "US", b"\x10\x00"), True),  # Bits Allocated: tracked by Python
        (_element(0x00090010, "SH", b"ACME 1.0"), True),  # a private creator that is not LO
        (_element(0x00090010, "LO", b"ACM\xc9"), True),  # a private creator that is not ASCII
        (_element(0x00090010, "LO", b"ACME"), False),  # ... or under a character set that is not ASCII
        (_long(0x000900FF, "OB", b"AC"), True),  # ... or binary
        (_element(0x00080070, "LO", b"ACME"), False),  # text under a character set that is not ASCII
        (_element(0x00100010, "PN", b"Doe"), False),  # a name under a character set that is not ASCII
        (_element(0x00080070, "LO", b"\xc4CME"), True),  # non-ASCII text
        (_element(0x00100010, "PN", b"M\xfcller"), True),  # a non-ASCII name
        (_element(0x00100010, "PN", b"Yamada=\x1b$B;3ED\x1b(B"), True),  # a name with escapes
        (_element(0x00080016, "UI", b"1.2.x"), True),  # an invalid UID: Python warns and drops it
        (_element(0x00200032, "DS", b"1\\nan\\3 "), True),  # a non-finite number
        (_element(0x00280030, "US", b"\x01\x00\x02\x00"), True),  # two numbers
        (_long(0x00080070, "UN", b"ACME"), True),  # UN: Python looks up the real VR
        # a sequence of an implicit VR item (sequences: tests/dicom/test_dicom_fastscan_seq.py)
        (_long(0x00081111, "SQ", _ITEM_HEAD + b"\x08\x00\x00\x00" + _IMPLICIT_UI), True),
        (_long(0x7FE00010, "OW", b"\0\0"), True),  # Pixel Data: always bulk, frames
        (_long(0x7FE00001, "OV", b"\0" * 8), True),  # Extended Offset Table: frames
        (_long(0x7FE00008, "OF", b"\0" * 4), True),  # Float Pixel Data
        (_long(0x60023000, "OW", b"\0\0"), True),  # Overlay Data (ambiguous in implicit VR)
        (_long(0x00283006, "OW", b"\0\0"), True),  # LUT Data (ambiguous in implicit VR)
        (_long(0x54001010, "OW", b"\0\0"), True),  # Waveform Data (ambiguous in implicit VR)
        (_long(0x00420011, "OB", b"", 0xFFFFFFFF), True),  # undefined length
        (_long(0x00420011, "OB", b"ABCD", 6), True),  # runs past the end
        (_long(0x00420011, "OB", b"")[:10], True),  # a truncated header
        (_element(0x00080070, "LO", b"ACME")[:-2], True),  # runs past the end
        (b"\xfe\xff\x00\xe0\x00\x00\x00\x00", True),  # an item tag
    ],
)
def test_scan_leaves_what_needs_python_to_python(element: bytes, text_ok: bool) -> None:
    head = _element(0x00080060, "CS", b"MR")
    buf = head + element
    ds: dict[str, Any] = {}
    creators: dict[int, str] = {}
    bulk: dict[str, ByteRange] = {}
    assert _scan(buf, 0, len(buf), ds, text_ok, creators, bulk=bulk, threshold=0) == len(head)
    assert list(ds) == ["00080060"]
    assert not creators and not bulk


def test_the_built_extension_is_not_older_than_its_source() -> None:
    """An edited _fastscan.c takes effect only after `pip install -e .` rebuilds it: a stale build would
    make every test here test the old code (parser.py also ignores a build of an older scan API)."""
    from dicomd.dicom import _fastscan  # type: ignore[attr-defined]

    built = Path(_fastscan.__file__)
    source = built.with_name("_fastscan.c")
    if not source.exists():
        pytest.skip("not an editable install: no source beside the extension")
    assert built.stat().st_mtime >= source.stat().st_mtime, "rebuild it: .venv/bin/pip install -e ."
