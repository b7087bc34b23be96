"""The C fast path on sequences (SQ) against the pure Python loop: the same data set (values, types,
key order), warnings, byte ranges and errors on crafted sequences (empty ones, empty items, defined and
undefined lengths, nesting up to and beyond the depth limit, binary values and private creators in
items, implicit VR items, truncated or misplaced delimiters) and on fuzzed ones; that scan converts a
sequence whole or leaves it whole to Python (nothing added to the data set or the bulk dict); that it
leaks nothing; and that the comparisons catch a wrong conversion (deliberately wrong scans)."""

from __future__ import annotations

import random
import struct
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from test_dicom_fastscan import BUILT, _differs, _element, _file, _long, _outcome, _same, _scan
from test_dicom_fastscan_more import _DEFLATED, _NAMES, _implicit, _part10
from test_dicom_parser import FILES

from dicomd.dicom import parser
from dicomd.dicom.model import ByteRange

pytestmark = pytest.mark.skipif(not BUILT, reason="built without the C fast path")

_UNDEFINED = 0xFFFFFFFF
_ITEM_UNDEFINED = struct.pack("<HHL", 0xFFFE, 0xE000, _UNDEFINED)  # an item header of undefined length
_ITEM_END = struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
_SEQ_END = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
_T, _U, _V = 0x00081110, 0x00081111, 0x00082218  # sequence tags

_CODE = (
    _element(0x00080100, "SH", b"CTTAP ")
    + _element(0x00080102, "SH", b"L ")
    + _element(0x00080104, "LO", b"CT ")
)
_REF = _element(0x00081150, "UI", b"1.2.840.10008.3.1.2.3.1\0") + _element(0x00081155, "UI", b"1.2.3.4\0")
_BIG = bytes(range(70))
_BIN = _long(0x00420011, "OB", _BIG) + _long(0x00660023, "OW", b"\1\2\3\4")
_NUMBERS = (
    _element(0x00180050, "DS", b"1.25")
    + _element(0x00200013, "IS", b"7 ")
    + _element(0x00181150, "IS", b"12")
)
_PERSON_NAMES = b"".join(
    _element(0x00100010 + i, "PN", raw + b" " * (len(raw) % 2)) for i, (raw, _) in enumerate(_NAMES)
)
_IDEN = _element(0x00090010, "LO", b"GEMS_IDEN_01")
_ACQU = _element(0x00090010, "LO", b"GEMS_ACQU_01")
_SUITE = _long(0x00091002, "UN", b"SUITE1")  # SH under GEMS_IDEN_01, UN without a creator


def _item(body: bytes = b"", *, undefined: bool = False, length: int | None = None) -> bytes:
    if undefined:
        return _ITEM_UNDEFINED + body + _ITEM_END
    return struct.pack("<HHL", 0xFFFE, 0xE000, len(body) if length is None else length) + body


def _sq(tag: int, *items: bytes, undefined: bool = False) -> bytes:
    """A sequence of these items (already with their headers)."""
    if undefined:
        return _long(tag, "SQ", b"".join(items) + _SEQ_END, _UNDEFINED)
    return _long(tag, "SQ", b"".join(items))


def _nest(levels: int, undefined: bool = False, inner: bytes = _CODE) -> bytes:
    """`levels` sequences, each the one item of the one above; `inner` in the innermost item."""
    body = inner
    for i in range(levels):
        body = _sq(_T + i % 3, _item(body, undefined=undefined != bool(i % 2)), undefined=undefined)
    return body


# sequences scan converts whole (the Python loop never sees them)
def _converted() -> Iterator[tuple[str, bytes]]:
    yield "empty, defined length", _sq(_T)
    yield "empty, undefined length", _sq(_T, undefined=True)
    yield (
        "empty items",
        _sq(_T, _item(), _item(undefined=True), _item()) + _sq(_U, _item(undefined=True), undefined=True),
    )
    yield (
        "items of both lengths",
        _sq(_T, _item(_REF), _item(_CODE, undefined=True))
        + _sq(_U, _item(_CODE), _item(_REF, undefined=True), undefined=True),
    )
    yield "between elements", _CODE + _sq(_T, _item(_REF)) + _NUMBERS + _sq(_U, _item(_CODE)) + _REF
    yield (
        "nested",
        _sq(
            _T,
            _item(
                _CODE
                + _sq(_U, _item(_REF), _item(_CODE + _sq(_V, _item(_CODE), undefined=True), undefined=True))
                + _REF
            ),
            _item(_sq(_U), undefined=True),
        ),
    )
    yield (
        "binary values in items",
        _sq(_T, _item(_BIN), _item(_sq(_U, _item(_BIN, undefined=True), _item(_BIN)) + _BIN, undefined=True))
        + _BIN,
    )
    yield "names and numbers in items", _sq(_T, _item(_PERSON_NAMES), _item(_NUMBERS, undefined=True))
    # an item's private creators are its own: the UN after the sequence has no creator (UN), or the
    # top level's (SH)
    yield "creator in an item", _sq(_T, _item(_IDEN + _CODE)) + _SUITE
    yield "creators at both levels", _IDEN + _sq(_T, _item(_ACQU), _item(_sq(_U, _item(_ACQU)))) + _SUITE
    yield "private sequence", _IDEN + _sq(0x00091001, _item(_REF), undefined=True) + _SUITE
    yield "same sequence twice", _sq(_T, _item(_BIN)) + _REF + _sq(_T, _item(_CODE), _item(_BIN))
    yield "Pixel Data as a sequence", _sq(0x7FE00010, _item(_REF))
    yield (
        "sequence delimiter with a length",
        _long(_T, "SQ", _item(_REF) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 4), _UNDEFINED),
    )
    # Python ignores what follows a sequence delimiter in a sequence of defined length
    yield "sequence delimiter in a defined sequence", _long(_T, "SQ", _item(_REF) + _SEQ_END + _item(_CODE))
    # an empty sequence: the item after it is at the top level, where Python raises
    yield "sequence delimiter first", _long(_T, "SQ", _SEQ_END + _item(_REF), _UNDEFINED)
    yield "64 levels", _nest(64)
    yield "64 levels, undefined lengths", _nest(64, True, _BIN)


# sequences scan leaves to Python: Python reads them differently, warns, or raises
def _left() -> Iterator[tuple[str, bytes]]:
    yield "implicit VR item", _sq(_T, _item(_REF), _item(_implicit(0x00081150, b"1.2.3\0")))
    yield (
        "implicit VR item, undefined lengths",
        _sq(
            _T,
            _item(_implicit(0x00081150, b"1.2.3\0") + _implicit(0x00081155, b"1.2\0"), undefined=True),
            undefined=True,
        ),
    )
    yield "implicit VR header in an item", _sq(_T, _item(_REF + _implicit(0x00080104, b"Chest ")))
    yield "implicit VR item nested", _sq(_T, _item(_CODE + _sq(_U, _item(_implicit(0x00080104, b"Chest ")))))
    yield "UN in an item", _sq(_T, _item(_REF + _SUITE))
    yield "creator and its block in an item", _sq(_T, _item(_IDEN + _SUITE)) + _SUITE
    yield "SH creator in an item", _sq(_T, _item(_element(0x00090010, "SH", b"GEMS_IDEN_01") + _SUITE))
    yield (
        "character set in an item",
        _sq(_T, _item(_element(0x00080005, "CS", b"ISO_IR 100") + _element(0x00080104, "LO", b"Stra\xdfe "))),
    )
    yield "Bits Allocated in an item", _sq(_T, _item(_element(0x00280100, "US", b"\x10\x00") + _REF))
    yield "non-ASCII text in an item", _sq(_T, _item(_REF), _item(_element(0x00080104, "LO", b"Stra\xdfe ")))
    yield "invalid value in an item", _sq(_T, _item(_element(0x00081150, "UI", b"1.2.x ")))
    yield "Pixel Data in an item", _sq(_T, _item(_long(0x7FE00010, "OW", b"\0\0")))
    yield (
        "UN sequence of undefined length",
        _long(_T, "UN", _item(_implicit(0x00081150, b"1.2.3\0"), undefined=True) + _SEQ_END, _UNDEFINED),
    )
    yield "SQ on a creator slot", _sq(0x00090010, _item(_REF))
    yield "missing item delimiter", _long(_T, "SQ", _ITEM_UNDEFINED + _REF + _SEQ_END, _UNDEFINED)
    yield (
        "no item delimiter before the sequence's end",
        _long(_T, "SQ", _item(_CODE) + _ITEM_UNDEFINED + _REF),
    )
    yield "missing sequence delimiter", _long(_T, "SQ", _item(_REF), _UNDEFINED) + _CODE
    yield (
        "sequence delimiter in an item",
        _long(_T, "SQ", _ITEM_UNDEFINED + _REF + _SEQ_END + _ITEM_END + _SEQ_END, _UNDEFINED),
    )
    yield "item delimiter in a defined item", _sq(_T, _item(_REF + _ITEM_END))
    yield "item delimiter in a defined item, then more", _sq(_T, _item(_REF + _ITEM_END + _CODE))
    yield (
        "item delimiter with a length",
        _long(
            _T, "SQ", _ITEM_UNDEFINED + _REF + struct.pack("<HHL", 0xFFFE, 0xE00D, 2) + _SEQ_END, _UNDEFINED
        ),
    )
    yield (
        "item delimiter with a VR-like length",
        _long(
            _T,
            "SQ",
            _ITEM_UNDEFINED + _REF + struct.pack("<HH2sH", 0xFFFE, 0xE00D, b"OB", 0) + _SEQ_END,
            _UNDEFINED,
        ),
    )
    yield "item delimiter in a defined sequence", _long(_T, "SQ", _item(_REF) + _ITEM_END)
    yield "element in a sequence", _long(_T, "SQ", _item(_CODE) + _REF)
    yield "item overruns its sequence", _long(_T, "SQ", _item(_REF, length=len(_REF) + 2))
    yield "item shorter than its elements", _long(_T, "SQ", _item(_REF, length=len(_REF) - 2) + b"\0\0")
    yield "bytes left in an item", _sq(_T, _item(_REF + b"\0\0\0\0"))
    yield "bytes left in a sequence", _long(_T, "SQ", _item(_REF) + b"\0\0\0\0")
    yield "sequence overruns the file", _long(_T, "SQ", _item(_REF), len(_item(_REF)) + 8)
    yield "65 levels", _nest(65)
    yield "65 levels, undefined lengths", _nest(65, True)
    # below an item Python reads (it starts with UN) the levels left are fewer
    yield "63 levels below a Python item", _sq(_U, _item(_SUITE + _nest(63)))
    yield "64 levels below a Python item", _sq(_U, _item(_SUITE + _nest(64, True)))


_CHARSETS = (None, b"ISO_IR 100", b"ISO 2022 IR 87")


@pytest.mark.parametrize("threshold", [0, 3, 64, 1024])
def test_crafted_sequences_same_with_and_without_fast_path(threshold: int) -> None:
    for _, body in [*_converted(), *_left()]:
        for charset in _CHARSETS:
            _same(_file(body, charset=charset), threshold=threshold)
        _same(_part10(body, _DEFLATED), threshold=threshold)
        _same(_part10(body, _DEFLATED), threshold=threshold, inline_deflated=True)  # inline_bulk: all inline


def _stops(data: bytes, threshold: int = 64) -> list[tuple[int, bytes]]:
    """Where scan stopped (tag, VR bytes) while the parser read this file."""
    real = parser._SCAN
    assert real is not None
    stops: list[tuple[int, bytes]] = []

    def recording(buf: Any, pos: int, end: int, *args: Any) -> int:
        after = real(buf, pos, end, *args)
        if after + 8 <= end:
            group, elem, vr = struct.unpack_from("<HH2s", buf, after)
            stops.append((group << 16 | elem, vr))
        return after

    _outcome(data, recording, threshold)
    return stops


@pytest.mark.parametrize("name", [name for name, _ in _converted()])
def test_scan_converts_these_sequences_whole(name: str) -> None:
    body = dict(_converted())[name]
    # only the UN of the private blocks is left (and an item tag at the top level)
    assert all(vr == b"UN" or tag >> 16 == 0xFFFE for tag, vr in _stops(_file(body))), name


def test_scan_converts_sequences_below_an_item_python_reads() -> None:
    """The outer item starts with a UN: Python reads that sequence, and scan the 63 levels below."""
    body = dict(_left())["63 levels below a Python item"]
    stops = _stops(_file(body))
    assert stops[0] == (_U, b"SQ")
    assert all(vr != b"SQ" for _, vr in stops[1:]), stops


@pytest.mark.parametrize("name", [name for name, _ in _left()])
def test_scan_leaves_these_sequences_to_python(name: str) -> None:
    body = dict(_left())[name]
    top = [tag for tag, _ in _stops(_file(body))]
    assert top and top[0] in (_T, _U, 0x00090010), name


def test_truncated_sequences_same_with_and_without_fast_path() -> None:
    """The file cut anywhere in its sequences: Python raises (or warns at the top level)."""
    body = b"".join(body for name, body in _converted() if "levels" not in name)
    data = _file(body)
    start = len(_file())
    for cut in range(start, len(data) + 1):
        _same(data[:cut], threshold=16)


def test_fuzzed_sequences_same_with_and_without_fast_path() -> None:
    """Flipped bytes (lengths, VRs, item tags, delimiters) and truncations of a file of sequences."""
    body = b"".join(body for name, body in _converted() if "levels" not in name)
    data = _file(body, _nest(6, True, _BIN), _nest(5, False, _REF))
    start = len(_file())
    rng = random.Random("sequences")
    for _ in range(600):
        b = bytearray(data[: rng.randrange(start + 1, len(data) + 1)] if rng.random() < 0.2 else data)
        for _ in range(rng.choice((1, 2, 4))):
            b[rng.randrange(start, len(b))] = rng.choice(
                (0, 1, 0x20, 0x41, 0x5C, 0xE0, 0xDD, 0x0D, 0xFE, 0xFF, rng.randrange(256))
            )
        _same(bytes(b), threshold=rng.choice((0, 16, 64)))


def test_bundled_files_sequences_converted_by_scan() -> None:
    """Most sequences of the bundled files are scan's (and the results are the same: see
    test_dicom_fastscan.py, which runs every bundled file with and without the fast path)."""
    sequences = left = 0
    for path in FILES:
        data = path.read_bytes()
        left += sum(vr == b"SQ" for _, vr in _stops(data))
        sequences += orjson.dumps(_outcome(data, None)[0]).count(b'"vr":"SQ"')
    # 414 sequences, 30 left to Python (items with a character set, AT, UT or several numbers)
    assert sequences > 300
    assert left < sequences / 10


def test_scan_records_the_sequences_it_gives_back_and_leaves_them_to_python() -> None:
    given: set[int] = set()
    chain = _nest(3, True, _CODE + _SUITE)  # the UN in the innermost item: all three given back
    assert _scan(chain, 0, len(chain), {}, given_back=given) == 0
    assert len(given) == 3 and 0 in given
    body = _nest(2)
    ds: dict[str, Any] = {}
    assert _scan(body, 0, len(body), ds, given_back={0}) == 0 and ds == {}  # given back before
    assert _scan(body, 0, len(body), ds, given_back={1}) == len(body) and ds  # another offset


def test_sequences_beside_the_way_to_what_python_reads_are_still_converted() -> None:
    """Inside a sequence given back, the sequences not holding the element that made scan give up (here
    the first inner one) are scan's; those on the way to it are Python's, and not tried again."""
    body = _sq(_T, _item(_sq(_T + 1, _item(_CODE)) + _sq(_T + 2, _item(_CODE + _SUITE))))
    assert [tag for tag, _ in _stops(_file(body))] == [_T, _T + 2, 0x00091002]
    _same(_file(body))


def test_a_sequence_given_back_is_not_converted_again_at_every_level() -> None:
    """64 nested sequences whose innermost item ends in a UN: scan gives the outermost back, and the
    Python parser reads each level. Converting the nested ones again up to the UN at every level would
    be quadratic; each byte is converted at most twice."""
    inner = _element(0x00181050, "DS", b"1\\" * 31000 + b"1 ") + _long(0x00091002, "UN", b"SUITE1")
    data = _file(_nest(64, True, inner))
    assert len(data) < 64 << 10  # prepared on the event loop (see ingest/service.py)

    def best(scan: Any) -> float:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            _outcome(data, scan, 1024)
            times.append(time.perf_counter() - started)
        return min(times)

    _same(data, threshold=1024)
    assert best(parser._SCAN) < 3 * best(None)


# -- scan itself: whole or nothing -------------------------------------------------------------------


def test_scan_converts_sequences() -> None:
    head = _element(0x00080060, "CS", b"CT")
    buf = (
        head
        + _sq(_T)
        + _sq(_U, _item(), _item(undefined=True), undefined=True)
        + _sq(
            _V,
            _item(_CODE + _long(0x00420011, "OB", _BIG)),
            _item(
                _sq(0x00081115, _item(_long(0x00420011, "OB", _BIG), undefined=True)) + _IDEN, undefined=True
            ),
        )
        + _element(0x00200013, "IS", b"7 ")
    )
    ds: dict[str, Any] = {}
    creators: dict[int, str] = {}
    bulk: dict[str, ByteRange] = {}
    assert _scan(buf, 0, len(buf), ds, creators=creators, prefix="00400275/2/", bulk=bulk) == len(buf)
    code = {
        "00080100": {"vr": "SH", "Value": ["CTTAP"]},
        "00080102": {"vr": "SH", "Value": ["L"]},
        "00080104": {"vr": "LO", "Value": ["CT"]},
    }
    expected = {
        "00080060": {"vr": "CS", "Value": ["CT"]},
        "00081110": {"vr": "SQ", "Value": []},
        "00081111": {"vr": "SQ", "Value": [{}, {}]},
        "00082218": {
            "vr": "SQ",
            "Value": [
                {**code, "00420011": {"vr": "OB", "BulkDataURI": "bulkdata/00400275/2/00082218/0/00420011"}},
                {
                    "00081115": {
                        "vr": "SQ",
                        "Value": [
                            {
                                "00420011": {
                                    "vr": "OB",
                                    "BulkDataURI": "bulkdata/00400275/2/00082218/1/00081115/0/00420011",
                                }
                            }
                        ],
                    },
                    "00090010": {"vr": "LO", "Value": ["GEMS_IDEN_01"]},
                },
            ],
        },
        "00200013": {"vr": "IS", "Value": [7]},
    }
    assert orjson.dumps(ds) == orjson.dumps(expected)
    first = buf.index(_BIG)
    assert list(bulk.items()) == [
        ("00400275/2/00082218/0/00420011", ByteRange(first, 70)),
        ("00400275/2/00082218/1/00081115/0/00420011", ByteRange(buf.index(_BIG, first + 1), 70)),
    ]
    assert creators == {}  # the item's creator is its own


# converted first in each (with a bulk range, so something is kept aside when the sequence is left)
_GOOD = _item(_CODE + _long(0x00420011, "OB", _BIG))


def _bails() -> Iterator[tuple[str, bytes]]:
    implicit = _implicit(0x00081150, b"1.2.3\0")
    yield "implicit VR item", _sq(_T, _GOOD, _item(implicit))
    yield (
        "implicit VR item, undefined length",
        _sq(_T, _GOOD, _item(implicit, undefined=True), undefined=True),
    )
    yield "implicit VR header in an item", _sq(_T, _GOOD, _item(_REF + implicit))
    yield "UN in an item", _sq(_T, _GOOD, _item(_REF + _SUITE))
    yield "character set in an item", _sq(_T, _GOOD, _item(_element(0x00080005, "CS", b"ISO_IR 100")))
    yield "Bits Allocated in an item", _sq(_T, _GOOD, _item(_element(0x00280100, "US", b"\x10\x00")))
    yield "non-ASCII text in an item", _sq(_T, _GOOD, _item(_element(0x00080104, "LO", b"Stra\xdfe ")))
    yield "Pixel Data in an item", _sq(_T, _GOOD, _item(_long(0x7FE00010, "OW", b"\0\0")))
    yield "SH creator in an item", _sq(_T, _GOOD, _item(_element(0x00090010, "SH", b"ACME")))
    yield "nested", _sq(_T, _GOOD, _item(_sq(_U, _GOOD, _item(_SUITE)), undefined=True))
    yield "SQ on a creator slot", _sq(0x00090010, _GOOD)
    yield "missing item delimiter", _long(_T, "SQ", _GOOD + _ITEM_UNDEFINED + _REF + _SEQ_END, _UNDEFINED)
    yield "no item delimiter before the end", _long(_T, "SQ", _GOOD + _ITEM_UNDEFINED + _REF)
    yield (
        "item delimiter with a length",
        _long(
            _T,
            "SQ",
            _GOOD + _ITEM_UNDEFINED + _REF + struct.pack("<HHL", 0xFFFE, 0xE00D, 2) + _SEQ_END,
            _UNDEFINED,
        ),
    )
    yield "item delimiter in a defined item", _sq(_T, _GOOD, _item(_REF + _ITEM_END))
    yield "missing sequence delimiter", _long(_T, "SQ", _GOOD, _UNDEFINED)
    yield "truncated sequence delimiter", _long(_T, "SQ", _GOOD + _SEQ_END[:6], _UNDEFINED)
    yield "element in the sequence", _long(_T, "SQ", _GOOD + _REF)
    yield "item overruns", _long(_T, "SQ", _GOOD + _item(_REF, length=len(_REF) + 2))
    yield "bytes left in an item", _sq(_T, _GOOD, _item(_REF + b"\0\0"))
    yield "bytes left in the sequence", _long(_T, "SQ", _GOOD + b"\0\0\0\0")
    yield "sequence overruns", _long(_T, "SQ", _GOOD, len(_GOOD) + 2)
    yield "truncated header", _long(_T, "SQ", b"")[:10]
    yield "65 levels", _nest(65, True, _BIN)


@pytest.mark.parametrize("name", [name for name, _ in _bails()])
def test_scan_leaves_whole_sequences_to_python(name: str) -> None:
    head = _element(0x00080060, "CS", b"MR")
    buf = head + dict(_bails())[name]
    ds: dict[str, Any] = {}
    creators: dict[int, str] = {}
    bulk: dict[str, ByteRange] = {}
    assert _scan(buf, 0, len(buf), ds, creators=creators, bulk=bulk) == len(head)
    assert list(ds) == ["00080060"]
    assert not creators and not bulk
    _same(_file(buf))


def test_scan_leaves_sequences_of_text_to_python_under_other_character_sets() -> None:
    buf = _sq(_T, _GOOD)
    ds: dict[str, Any] = {}
    bulk: dict[str, ByteRange] = {}
    assert _scan(buf, 0, len(buf), ds, text_ok=False, bulk=bulk) == 0
    assert not ds and not bulk
    plain = _sq(_T, _item(_REF + _long(0x00420011, "OB", _BIG)))  # no text that depends on it
    assert _scan(plain, 0, len(plain), ds, text_ok=False, bulk=bulk) == len(plain)
    assert list(bulk) == ["00081110/0/00420011"]


@pytest.mark.parametrize("undefined", [False, True])
def test_levels_bound_the_nesting(undefined: bool) -> None:
    for depth in (1, 2, 5):
        buf = _nest(depth, undefined)
        for levels in (-(10**30), -1, *range(depth + 2)):
            ds: dict[str, Any] = {}
            converted = levels >= depth
            assert _scan(buf, 0, len(buf), ds, levels=levels) == (len(buf) if converted else 0)
            assert bool(ds) == converted
    # whatever the caller allows, the recursion has a bound (and never less than the parser's 64)
    ds = {}
    assert _scan(_nest(64, undefined), 0, len(_nest(64, undefined)), ds, levels=10**30) > 0
    deep = _nest(5000, undefined)
    assert _scan(deep, 0, len(deep), {}, levels=10**30) == 0


def _growth(run: Callable[[], Any], rounds: int = 3000) -> int:
    """Bytes of Python memory still allocated after `rounds` more runs (after a warm-up)."""
    for _ in range(50):
        run()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(rounds):
            run()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


class _Boom(Exception):
    pass


def _boom(*_: Any) -> Any:
    raise _Boom


def test_errors_in_sequences_propagate_and_leave_nothing() -> None:
    """An exception in the middle of a nested sequence (here from ByteRange) leaves ds and the bulk
    dict as they were."""
    assert parser._SCAN is not None
    head = _element(0x00080060, "CS", b"MR")
    buf = head + _sq(_T, _item(_CODE), _item(_sq(_U, _GOOD, undefined=True)))
    ds: dict[str, Any] = {}
    bulk: dict[str, ByteRange] = {}
    with pytest.raises(_Boom):
        parser._SCAN(buf, 0, len(buf), ds, True, {}, "", (bulk, 64, False, _boom), 64, set())
    assert list(ds) == ["00080060"] and not bulk


def test_sequences_leak_nothing() -> None:
    scan = parser._SCAN
    assert scan is not None
    prefix = "".join(["00400275/", "2/"])  # a str of its own
    converted = b"".join(body for name, body in _converted() if "levels" not in name) + _nest(64, True, _BIN)
    bails = [body for _, body in _bails()]

    def run() -> None:
        scan(converted, 0, len(converted), {}, True, {}, prefix, ({}, 64, False, ByteRange), 64, set())
        for body in bails:
            scan(body, 0, len(body), {}, True, {}, prefix, ({}, 64, False, ByteRange), 64, set())
        try:
            scan(converted, 0, len(converted), {}, True, {}, prefix, ({}, 64, False, _boom), 64, set())
        except _Boom:
            pass
        else:
            raise AssertionError("no error")

    # the cached objects scan hands out (data set keys, VR strings) allocate nothing when leaked:
    # their reference counts tell
    sample: dict[str, Any] = {}
    scan(converted, 0, len(converted), sample, True, {}, prefix, ({}, 64, False, ByteRange), 64, set())
    cached = [next(k for k, e in sample.items() if e["vr"] == "SQ"), sample[next(iter(sample))]["vr"]]
    refs = [sys.getrefcount(o) for o in (prefix, *cached)]
    assert _growth(run, 300) < 30_000
    assert [sys.getrefcount(o) for o in (prefix, *cached)] == refs


# -- a wrong conversion fails the comparisons ---------------------------------------------------------


def _shifted(path: str, prefix: str) -> str:
    """The tag path with the index of its first item in this scan call one higher."""
    parts = path[len(prefix) :].split("/")
    parts[1] = str(int(parts[1]) + 1)
    return prefix + "/".join(parts)


def _walk(items: list[dict[str, Any]], fn: Callable[[dict[str, Any]], None]) -> None:
    for item in items:
        for element in item.values():
            fn(element)
            if element["vr"] == "SQ":
                _walk(element["Value"], fn)


def _mutant(kind: str) -> Callable[..., int]:
    """scan made wrong in one way, as a bug in the sequence code of _fastscan.c could make it."""
    real = parser._SCAN
    assert real is not None

    def scan(
        buf: Any,
        pos: int,
        end: int,
        ds: dict[str, Any],
        text_ok: bool,
        creators: dict[int, str],
        prefix: str,
        ctx: Any,
        levels: int,
        given_back: set[int],
    ) -> int:
        before = set(ds)
        bulk_before = set(ctx[0])
        if kind == "levels off by one":
            levels += 1
        elif kind == "levels ignored":
            levels = 10**6
        after = real(buf, pos, end, ds, text_ok, creators, prefix, ctx, levels, given_back)
        for key in [k for k in ds if k not in before and ds[k]["vr"] == "SQ"]:
            items = ds[key]["Value"]
            if kind == "items reversed":
                items.reverse()
            elif kind == "last item dropped" and items:
                items.pop()
            elif kind == "empty items dropped":
                items[:] = [item for item in items if item]
            elif kind == "Value before vr":
                ds[key] = {"Value": items, "vr": "SQ"}
            elif kind == "nested sequences emptied":
                _walk(items, lambda e: e.update(Value=[]) if e["vr"] == "SQ" else None)
            elif kind == "item creators kept":
                for item in items:
                    for k, e in item.items():
                        tag = int(k, 16)
                        if (
                            (tag >> 16) & 1
                            and 0x10 <= tag & 0xFFFF < 0x100
                            and len(e.get("Value") or ()) == 1
                        ):
                            creators[tag & 0xFFFF00FF] = e["Value"][0]
            elif kind == "item index off by one in bulk paths":

                def shift(e: dict[str, Any]) -> None:
                    if "BulkDataURI" in e:
                        e["BulkDataURI"] = "bulkdata/" + _shifted(e["BulkDataURI"][9:], prefix)

                _walk(items, shift)
        if kind == "item index off by one in bulk paths":
            bulk = ctx[0]
            entries = list(bulk.items())
            bulk.clear()
            bulk.update((k if k in bulk_before else _shifted(k, prefix), v) for k, v in entries)
        return after

    return scan


_MUTANTS = [
    "levels off by one",
    "levels ignored",
    "items reversed",
    "last item dropped",
    "empty items dropped",
    "Value before vr",
    "nested sequences emptied",
    "item creators kept",
    "item index off by one in bulk paths",
]


@pytest.mark.parametrize("kind", _MUTANTS)
def test_a_wrong_sequence_conversion_is_caught(kind: str) -> None:
    scan = _mutant(kind)
    files = [_file(body) for _, body in [*_converted(), *_left()]]
    assert any(_differs(data, scan, 64) for data in files), kind
    for data in files:  # and the unchanged scan passes the same comparisons
        _same(data, threshold=64)
