"""The C fast path on person names, private creators and binary values (OB OD OF OL OV OW) against
the pure Python loop: the same data set (values, types, key order), warnings, byte ranges and
recorded private creators; that scan really converts them (does not leave them all to Python); and
that the comparisons catch a wrong conversion (deliberately wrong scans must fail them)."""

from __future__ import annotations

import base64
import random
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import Any, cast

import orjson
import pytest
from test_dicom_fastscan import BUILT, _differs, _element, _file, _long, _outcome, _same, _scan
from test_dicom_parser import FILES

from dicomd.dicom import parser
from dicomd.dicom.model import ByteRange

pytestmark = pytest.mark.skipif(not BUILT, reason="built without the C fast path")

_EXPLICIT = b"1.2.840.10008.1.2.1\0"
_DEFLATED = b"1.2.840.10008.1.2.1.99"
_ITEM, _ITEM_END, _SEQ_END = (0xFFFE, 0xE000), (0xFFFE, 0xE00D), (0xFFFE, 0xE0DD)


def _part10(body: bytes, ts: bytes = _EXPLICIT) -> bytes:
    """A Part 10 file of this data set (deflated when the transfer syntax says so)."""
    meta_body = _long(0x00020001, "OB", b"\0\1") + _element(0x00020010, "UI", ts)
    meta = _element(0x00020000, "UL", struct.pack("<L", len(meta_body))) + meta_body
    if ts == _DEFLATED:
        z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        body = z.compress(body) + z.flush()
    return b"\0" * 128 + b"DICM" + meta + body


def _implicit(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value)) + value


def _seq(tag: int, *items: bytes, undefined: bool = False) -> bytes:
    """A sequence of these items (data set bytes), of defined or undefined lengths."""
    if undefined:
        body = b"".join(
            struct.pack("<HHL", *_ITEM, 0xFFFFFFFF) + item + struct.pack("<HHL", *_ITEM_END, 0)
            for item in items
        )
        return _long(tag, "SQ", body + struct.pack("<HHL", *_SEQ_END, 0), 0xFFFFFFFF)
    return _long(tag, "SQ", b"".join(struct.pack("<HHL", *_ITEM, len(item)) + item for item in items))


# -- person names ---------------------------------------------------------------------------------

# raw value -> JSON "Value" (None: {"vr": "PN"} alone), as _Parser.person_name makes it
_NAMES: list[tuple[bytes, list[Any] | None]] = [
    (b"", None),
    (b"  ", None),
    (b"\0\0", None),
    (b" \0", None),
    (b"=", None),
    (b"==  ", None),
    (b"Doe^John", [{"Alphabetic": "Doe^John"}]),
    (b"Doe^John^^^", [{"Alphabetic": "Doe^John^^^"}]),
    # the whole value is stripped, not each name nor each group
    (b"Doe ^John \\Roe \0", [{"Alphabetic": "Doe ^John "}, {"Alphabetic": "Roe"}]),
    (b"A =B \\C", [{"Alphabetic": "A ", "Ideographic": "B "}, {"Alphabetic": "C"}]),
    (b"A \0B ", [{"Alphabetic": "A \0B"}]),
    (b"A\tB\t", [{"Alphabetic": "A\tB\t"}]),
    (b"A\\\\B\0", [{"Alphabetic": "A"}, None, {"Alphabetic": "B"}]),
    (b"\\", [None, None]),
    (b"\\\\ ", [None, None, None]),
    (b" \\ ", [{"Alphabetic": " "}, None]),
    (b"A=B \\", [{"Alphabetic": "A", "Ideographic": "B "}, None]),
    (b"=\\=", [None, None]),
    (b"=B", [{"Alphabetic": "", "Ideographic": "B"}]),
    (b"==C", [{"Alphabetic": "", "Ideographic": "", "Phonetic": "C"}]),
    (b"A==", [{"Alphabetic": "A"}]),
    (b"A=B=C", [{"Alphabetic": "A", "Ideographic": "B", "Phonetic": "C"}]),
    (b"A=B=C=D=E", [{"Alphabetic": "A", "Ideographic": "B", "Phonetic": "C"}]),
    (b"A===D", [{"Alphabetic": "A", "Ideographic": "", "Phonetic": ""}]),
    (b"A=\\=B\\\0", [{"Alphabetic": "A"}, {"Alphabetic": "", "Ideographic": "B"}, None]),
    (b"Yamada^Tarou=^=^", [{"Alphabetic": "Yamada^Tarou", "Ideographic": "^", "Phonetic": "^"}]),
]


@pytest.mark.parametrize(("raw", "expected"), _NAMES, ids=[repr(r) for r, _ in _NAMES])
def test_scan_converts_ascii_person_names(raw: bytes, expected: list[Any] | None) -> None:
    element = _element(0x00100010, "PN", raw)
    ds: dict[str, Any] = {}
    assert _scan(element, 0, len(element), ds) == len(element)
    want = {"vr": "PN"} if expected is None else {"vr": "PN", "Value": expected}
    assert orjson.dumps(ds) == orjson.dumps({"00100010": want})  # key order within the names too
    padded = raw + b" " * (len(raw) % 2)
    for charset in (None, b"ISO_IR 100", b"ISO_IR 192", b"ISO 2022 IR 87"):
        _same(_file(_element(0x00100010, "PN", padded), _element(0x00091010, "PN", padded), charset=charset))


def test_person_names_in_a_run_and_in_items() -> None:
    names = b"".join(
        _element(0x00100010 + i, "PN", raw + b" " * (len(raw) % 2)) for i, (raw, _) in enumerate(_NAMES)
    )
    _same(_file(names, _seq(0x00081111, names, names), _seq(0x00081115, names, undefined=True)))


# -- private creators -----------------------------------------------------------------------------


def test_scan_records_private_creators_like_python() -> None:
    buf = (
        _element(0x00090010, "LO", b"GEMS_IDEN_01")
        + _element(0x00090011, "LO", b"A\\B ")  # two values: no creator
        + _element(0x00090012, "LO", b"  ")  # no value: no creator
        + _element(0x000900FF, "LO", b"LAST\0\0")
        + _element(0x0009000F, "LO", b"NOTA")  # below the creator range: an ordinary element
        + _element(0x00090100, "LO", b"NOTA")  # above it
        + _element(0x00080010, "LO", b"EVEN")  # an even group
        + _element(0x00291010, "LO", b"of the block 10")
    )
    ds: dict[str, Any] = {}
    creators: dict[int, str] = {0x00190010: "kept"}
    assert _scan(buf, 0, len(buf), ds, creators=creators) == len(buf)
    assert creators == {0x00190010: "kept", 0x00090010: "GEMS_IDEN_01", 0x000900FF: "LAST"}
    assert list(ds) == [
        "00090010",
        "00090011",
        "00090012",
        "000900FF",
        "0009000F",
        "00090100",
        "00080010",
        "00291010",
    ]
    assert ds["00090011"] == {"vr": "LO", "Value": ["A", "B"]}
    assert ds["00090012"] == {"vr": "LO"}


def _private_blocks() -> Iterator[tuple[str, bytes]]:
    """Data sets where the creators decide the VRs of later elements: explicit UN and elements
    written with an implicit VR header in the middle of an explicit VR data set."""
    creators = _element(0x00090010, "LO", b"GEMS_IDEN_01") + _element(
        0x00290010, "LO", b"SIEMENS CSA HEADER "
    )
    block = (
        _long(0x00091002, "UN", b"SUITE1")  # SH in GEMS_IDEN_01
        + _implicit(0x00091004, b"PROD")  # SH, read with an implicit header
        + _long(0x00091027, "UN", b"\x01\0\0\x80")  # SL
        + _long(0x00291010, "UN", bytes(range(80)))  # OB (CSA Image Header Info): bulk above 64
        + _implicit(0x00291020, bytes(range(40)))  # OB
    )
    other = _element(0x00090010, "LO", b"GEMS_ACQU_01") + _long(0x00091024, "UN", b"1.5 ")  # DS there
    yield "top level", creators + block
    yield "in items", _seq(0x00081111, creators + block, other, block, creators + block)
    # an item's creators are its own: the block after the sequence is read with the top level's
    yield "not inherited", creators + _seq(0x00081111, other + block) + block
    yield "undefined lengths", _seq(0x00081111, creators + block, other + block, undefined=True)
    yield "nested", _seq(0x00081111, creators + _seq(0x00081115, block, creators + block) + block)
    for raw in (b"GEMS_IDEN_01\0\0", b"GEMS_IDEN_01\\X", b"", b"GEMS IDEN 01", b"\xc9GEMS", b"GEMS\x1b$B"):
        yield f"creator {raw!r}", _element(0x00090010, "LO", raw + b" " * (len(raw) % 2)) + block
    for vr in ("SH", "ST", "LT", "CS", "PN", "UC"):  # other VRs: left to Python, which records text
        yield f"creator {vr}", (_long if vr == "UC" else _element)(0x00090010, vr, b"GEMS_IDEN_01") + block
    # an item of implicit VR inside the explicit VR data set (Python reads it: no scan there)
    implicit_item = _implicit(0x00090010, b"GEMS_IDEN_01") + _implicit(0x00091002, b"SUITE1")
    yield "implicit item", creators + _seq(0x00081111, implicit_item, creators + block) + block


@pytest.mark.parametrize("charset", [None, b"ISO_IR 100", b"ISO 2022 IR 87"])
def test_private_blocks_same_with_and_without_fast_path(charset: bytes | None) -> None:
    for _, body in _private_blocks():
        _same(_file(body, charset=charset))


def test_creators_decide_the_vrs_of_their_block() -> None:
    creators = _element(0x00090010, "LO", b"GEMS_IDEN_01")
    block = _long(0x00091002, "UN", b"SUITE1") + _implicit(0x00091004, b"PROD")
    other = _element(0x00090010, "LO", b"UNKNOWN CREATOR")
    data = _file(creators + _seq(0x00081111, other + block, block) + block)
    ds = parser.parse_bytes(data).dataset
    assert ds["00091002"] == {"vr": "SH", "Value": ["SUITE1"]}
    assert ds["00091004"] == {"vr": "SH", "Value": ["PROD"]}
    items = ds["00081111"]["Value"]
    assert items[0]["00091002"]["vr"] == items[1]["00091002"]["vr"] == "UN"
    _same(data)


def test_text_creators_are_recorded_whatever_the_path() -> None:
    """A creator is recorded when it has exactly one text value, whichever path reads it (the text
    fast path, element(), scan), so the VRs of its block do not depend on the character set."""
    for vr in ("LO", "SH", "ST", "LT", "UC", "CS"):
        for charset in (None, b"ISO 2022 IR 87"):
            creator = (_long if vr == "UC" else _element)(0x00090010, vr, b"GEMS_IDEN_01")
            data = _file(creator, _long(0x00091002, "UN", b"AB"), charset=charset)
            assert parser.parse_bytes(data).dataset["00091002"] == {"vr": "SH", "Value": ["AB"]}, (
                vr,
                charset,
            )
    # a person name or a number is no creator (pydicom looks creators up by their text)
    for vr, raw in (("PN", b"GEMS_IDEN_01"), ("US", b"\1\0")):
        data = _file(_element(0x00090010, vr, raw), _long(0x00091002, "UN", b"AB"))
        assert parser.parse_bytes(data).dataset["00091002"]["vr"] == "UN"


# -- binary values ----------------------------------------------------------------------------------

_BINARY_VRS = ("OB", "OD", "OF", "OL", "OV", "OW")
# tags whose binary values Python treats specially (pixel data, offset tables, ambiguous VRs in implicit VR)
_SPECIAL_TAGS = (
    0x7FE00010,
    0x7FE00008,
    0x7FE00009,
    0x7FE00001,
    0x60003000,
    0x601E3000,
    0x00283006,
    0x54000110,
    0x54001010,
)
# and others (0x00090010: a private creator slot, left to Python when not LO)
_PLAIN_TAGS = (0x00420011, 0x00660023, 0x00090010, 0x00091010, 0x60004000, 0x00283007)
_THRESHOLDS = (-(10**30), -1, 0, 1, 3, 64, 1024, 10**30)


def _lengths(threshold: int) -> list[int]:
    around = [threshold + d for d in (-1, 0, 1, 2)] if 0 <= threshold <= 1024 else []
    return sorted({0, 1, 2, 3, 4, 5, 7, 8, *(n for n in around if n >= 0)})


def _binary_run(threshold: int, seed: int) -> bytes:
    """Many binary values in a row (a private block: distinct tags), all VRs and lengths."""
    rng = random.Random(seed)
    out = [_element(0x00290010, "LO", b"SIEMENS CSA HEADER ")]
    tag = 0x00291000
    for n in _lengths(threshold):
        for vr in _BINARY_VRS:
            out.append(_long(tag, vr, rng.randbytes(n)))
            tag += 1
    return b"".join(out)


@pytest.mark.parametrize("threshold", _THRESHOLDS)
def test_binary_values_same_with_and_without_fast_path(threshold: int) -> None:
    rng = random.Random(threshold)
    run = _binary_run(threshold, threshold)
    _same(_file(run), threshold=threshold)
    _same(_file(_seq(0x00081111, run, run), run), threshold=threshold)
    _same(_part10(run, _DEFLATED), threshold=threshold)
    _same(_part10(run, _DEFLATED), threshold=threshold, inline_deflated=True)  # inline_bulk: all inline
    for n in _lengths(threshold):
        for vr in _BINARY_VRS:
            for tag in _PLAIN_TAGS + _SPECIAL_TAGS:
                value = rng.randbytes(n)
                _same(_file(_long(tag, vr, value)), threshold=threshold)
                _same(_file(_seq(0x00081111, _long(tag, vr, value))), threshold=threshold)


def test_binary_values_with_odd_lengths_undefined_lengths_and_truncation() -> None:
    head = _long(0x00420011, "OB", bytes(range(200)))
    cases = [
        _long(0x00420011, "OW", b"\1\2\3"),  # odd lengths: nothing to check, as in Python
        _long(0x00420011, "OD", b"\1" * 9),
        _long(
            0x00420011, "OB", b"\0" * 8 + struct.pack("<HHL", *_SEQ_END, 0), 0xFFFFFFFF
        ),  # undefined length
        _long(
            0x00420011,
            "OB",
            struct.pack("<HHL", *_ITEM, 2) + b"ab" + struct.pack("<HHL", *_SEQ_END, 0),
            0xFFFFFFFF,
        ),
        _long(0x00420011, "OB", b"ABCD", 6),  # runs past the end of the file
        _long(0x00420011, "OB", b"ABCD", 0xFFFFFFF0),
        _long(0x00420011, "OB", b"")[:10],  # a truncated header
        _long(0x00420011, "OB", b"")[:11],
        _seq(0x00081111, _long(0x00420011, "OB", b"ABCD", 6)),  # runs past its item
        _seq(0x00081111, _long(0x00420011, "OB", b"ABCD")[:-2], undefined=True),
    ]
    for case in cases:
        for threshold in (0, 2, 64):
            _same(_file(head, case), threshold=threshold)
            _same(_file(case, head), threshold=threshold)


def test_bulk_paths_in_items() -> None:
    big, small = bytes(range(65)), b"\xfb\xff\xfe"
    item = _long(0x00420011, "OB", big) + _long(0x00660023, "OW", small)
    nested = _seq(0x00081115, item, undefined=True) + _long(0x00091010, "OB", big)
    body = _long(0x00420011, "OB", big) + _seq(0x00081111, item, nested)
    data = _file(body)
    p = parser.parse_bytes(data, bulk_threshold=64)
    offset = data.index(big)
    assert list(p.bulk) == [
        "00420011",
        "00081111/0/00420011",
        "00081111/1/00081115/0/00420011",
        "00081111/1/00091010",
    ]
    assert p.bulk["00420011"] == ByteRange(offset, 65)
    items = p.dataset["00081111"]["Value"]
    assert items[0]["00420011"] == {"vr": "OB", "BulkDataURI": "bulkdata/00081111/0/00420011"}
    assert items[0]["00660023"] == {"vr": "OW", "InlineBinary": "+//+"}
    assert (
        items[1]["00081115"]["Value"][0]["00420011"]["BulkDataURI"]
        == "bulkdata/00081111/1/00081115/0/00420011"
    )
    _same(data)
    for threshold in (64, 65):
        # deflated: the same bulk data as any other file, its ranges into the inflated data set
        deflated = parser.parse_bytes(_part10(body, _DEFLATED), bulk_threshold=threshold)
        plain = parser.parse_bytes(_part10(body), bulk_threshold=threshold)
        assert deflated.dataset == plain.dataset and list(deflated.bulk) == list(plain.bulk)
        # as stored before those ranges were recorded: every value inline
        legacy = parser.parse_bytes(_part10(body, _DEFLATED), bulk_threshold=threshold, inline_deflated=True)
        assert legacy.bulk == {}
        assert legacy.dataset["00420011"] == {"vr": "OB", "InlineBinary": base64.b64encode(big).decode()}


def test_scan_converts_binary_values() -> None:
    values = [b"", b"\0", b"ab", b"abc", b"\xff" * 4, bytes(range(256)), bytes(range(64)), bytes(range(65))]
    buf = b"".join(
        _long(0x00091000 + i, vr, v)
        for i, (vr, v) in enumerate(zip(_BINARY_VRS + _BINARY_VRS[:2], values, strict=True))
    )
    for inline_bulk in (False, True):
        ds: dict[str, Any] = {}
        bulk: dict[str, ByteRange] = {}
        assert _scan(buf, 0, len(buf), ds, prefix="0008111A/3/", bulk=bulk, inline_bulk=inline_bulk) == len(
            buf
        )
        assert list(ds) == [f"0009{0x1000 + i:04X}" for i in range(len(values))]
        assert ds["00091000"] == {"vr": "OB"}
        assert ds["00091001"] == {"vr": "OD", "InlineBinary": "AA=="}
        assert ds["00091002"] == {"vr": "OF", "InlineBinary": "YWI="}
        assert ds["00091003"] == {"vr": "OL", "InlineBinary": "YWJj"}
        assert ds["00091004"] == {"vr": "OV", "InlineBinary": "/////w=="}
        assert ds["00091006"]["InlineBinary"].startswith("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g")
        if inline_bulk:
            assert not bulk
            assert {ds[k]["vr"] for k in ds} == set(_BINARY_VRS)
            assert ds["00091005"] == {
                "vr": "OW",
                "InlineBinary": base64.b64encode(bytes(range(256))).decode(),
            }
        else:
            offset = buf.index(bytes(range(256)))
            assert bulk == {
                "0008111A/3/00091005": ByteRange(offset, 256),
                "0008111A/3/00091007": ByteRange(buf.rindex(bytes(range(65))), 65),
            }
            assert ds["00091005"] == {"vr": "OW", "BulkDataURI": "bulkdata/0008111A/3/00091005"}
            assert ds["00091007"] == {"vr": "OD", "BulkDataURI": "bulkdata/0008111A/3/00091007"}


def test_scan_leaves_binary_values_to_python_without_an_int_threshold() -> None:
    buf = _element(0x00080060, "CS", b"MR") + _long(0x00091000, "OB", b"ab")
    ds: dict[str, Any] = {}
    assert _scan(buf, 0, len(buf), ds, threshold=cast(int, 64.0)) == 10
    assert list(ds) == ["00080060"]


# -- the benchmark's CT header and the bundled files ------------------------------------------------


def _ct_instances() -> list[bytes]:
    import bench.corpus as corpus  # not an installed package: importable through pytest's pythonpath

    c = corpus.Corpus(corpus.CorpusSpec(name="x", size="ct128", count=100, seed=11))
    return [c.instance(i) for i in (0, 5, 42)]


def test_scan_converts_the_benchmark_header_but_what_needs_python() -> None:
    """On the benchmark's CT header scan leaves only tracked attributes, pixel data and non-ASCII text
    to Python (person names, private creators, OB values and sequences are its own)."""
    real = parser._SCAN
    assert real is not None
    left: list[tuple[int, bytes, bytes]] = []

    def recording(buf: Any, pos: int, end: int, *args: Any) -> int:
        after = real(buf, pos, end, *args)
        if after + 8 <= end:  # an element header (a long one's length is not needed here)
            group, elem, vr, length = struct.unpack_from("<HH2sH", buf, after)
            left.append((group << 16 | elem, vr, bytes(buf[after + 8 : after + 8 + length])))
        return after

    for data in _ct_instances():
        _same(data, threshold=1024)
        _same(data, threshold=16)
        left.clear()
        _outcome(data, recording, 1024)
        assert left
        for tag, vr, raw in left:
            ascii_text = vr in (b"LO", b"LT", b"PN", b"SH", b"ST") and raw.isascii() and b"\x1b" not in raw
            special = vr == b"UN" or tag in parser._TRACKED or tag in parser.PIXEL_TAGS
            assert special or (vr in (b"LO", b"LT", b"PN", b"SH", b"ST") and not ascii_text), (hex(tag), vr)


@pytest.mark.parametrize("threshold", [0, 1024])
def test_bundled_files_same_with_other_thresholds(threshold: int) -> None:
    for path in FILES:
        _same(path.read_bytes(), threshold=threshold)


# -- a wrong conversion fails the comparisons ---------------------------------------------------------


def _mutant(kind: str) -> Callable[..., int]:
    """scan made wrong in one way, as a bug in _fastscan.c could make it."""
    real = parser._SCAN
    assert real is not None

    def scan(
        buf: Any,
        pos: int,
        end: int,
        ds: dict[str, Any],
        text_ok: bool,
        creators: Any,
        prefix: str,
        ctx: Any,
        levels: int,
        given_back: set[int],
    ) -> int:
        before = set(ds)
        if kind == "creators not recorded":
            creators = {}
        elif kind == "prefix ignored":
            prefix = ""
        elif kind == "threshold off by one":
            ctx = (ctx[0], ctx[1] + 1, *ctx[2:])
        elif kind == "inline_bulk ignored":
            ctx = (*ctx[:2], False, ctx[3])
        after = real(buf, pos, end, ds, text_ok, creators, prefix, ctx, levels, given_back)
        new = [k for k in ds if k not in before]
        for key in new:
            element = ds[key]
            names = element.get("Value") if element["vr"] == "PN" else None
            if kind == "names stripped per group" and names:
                for name in names:
                    for group in name or {}:
                        name[group] = name[group].rstrip(" ")
            elif kind == "empty names dropped" and names:
                element["Value"] = [name for name in names if name is not None]
            elif kind == "third group dropped" and names:
                for name in names:
                    (name or {}).pop("Phonetic", None)
            elif kind == "base64 unpadded" and "InlineBinary" in element:
                element["InlineBinary"] = element["InlineBinary"].rstrip("=")
            elif (
                kind == "empty binary as empty inline" and element["vr"] in _BINARY_VRS and len(element) == 1
            ):
                element["InlineBinary"] = ""
        if kind == "insertion order reversed":
            moved = {key: ds.pop(key) for key in new}
            ds.update(reversed(moved.items()))
        return after

    return scan


_MUTANTS = [
    "creators not recorded",
    "prefix ignored",
    "threshold off by one",
    "inline_bulk ignored",
    "names stripped per group",
    "empty names dropped",
    "third group dropped",
    "base64 unpadded",
    "empty binary as empty inline",
    "insertion order reversed",
]


@pytest.mark.parametrize("kind", _MUTANTS)
def test_a_wrong_conversion_is_caught(kind: str) -> None:
    scan = _mutant(kind)
    files = [(_file(body), 64, False) for _, body in _private_blocks()]
    names = b"".join(
        _element(0x00100010 + i, "PN", raw + b" " * (len(raw) % 2)) for i, (raw, _) in enumerate(_NAMES)
    )
    files.append((_file(names), 64, False))
    for threshold in (0, 3, 64):
        run = _binary_run(threshold, 1)
        files += [
            (_file(_seq(0x00081111, run)), threshold, False),
            (_part10(run, _DEFLATED), threshold, True),  # inline_bulk: only deflated data sets stored before
        ]
        # an item Python reads (it starts with UN), whose binary values scan converts with its prefix
        files.append((_file(_seq(0x00081111, _long(0x00091002, "UN", b"AB") + run)), threshold, False))
    assert any(_differs(data, scan, threshold, inline) for data, threshold, inline in files), kind
    # and the unchanged scan passes the same comparisons
    for data, threshold, inline in files:
        _same(data, threshold=threshold, inline_deflated=inline)


def test_fuzzed_new_kinds_same_with_and_without_fast_path() -> None:
    """Flipped bytes (lengths, VRs, tags) and truncations of a file full of names, creators, binary
    values and sequences: scan must bail exactly where Python warns, drops or raises."""
    names = b"".join(
        _element(0x00100010 + i, "PN", raw + b" " * (len(raw) % 2)) for i, (raw, _) in enumerate(_NAMES)
    )
    blocks = b"".join(body for _, body in _private_blocks())
    run = _binary_run(16, 2)
    data = _file(names, _seq(0x00081111, run + names, blocks), run, _seq(0x00081115, blocks, undefined=True))
    start = len(_file())
    rng = random.Random("new kinds")
    for _ in range(400):
        b = bytearray(data[: rng.randrange(start + 1, len(data) + 1)] if rng.random() < 0.2 else data)
        for _ in range(rng.choice((1, 2, 4))):
            b[rng.randrange(start, len(b))] = rng.choice((0, 1, 0x20, 0x3D, 0x5C, 0xFF, rng.randrange(256)))
        _same(bytes(b), threshold=rng.choice((0, 16, 64)))
