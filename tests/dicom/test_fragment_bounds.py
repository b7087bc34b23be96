"""Encapsulated Pixel Data whose items would amplify memory: offset tables with more entries than there
are fragments are ignored before they are unpacked, and no more than MAX_FRAGMENTS fragments are recorded
(past that the items are only checked and the instance has no frames, so its index row stays small).

Bounds are generous (a shared 2-core machine); the code before the fix exceeds each several times."""

from __future__ import annotations

import struct
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dicomd.dicom import frames as dicom_frames
from dicomd.dicom.model import InvalidDicom
from dicomd.dicom.parser import parse_file
from dicomd.index.frames import encode_frames

from support.dicom_files import image_dataset, long_element, part10_head

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG = b"\xff\xd8\xff\xdb" + b"x" * 8
MIB = 1 << 20


def _item(length: int) -> bytes:
    return struct.pack("<HHL", 0xFFFE, 0xE000, length)


DELIMITER = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)


def _write(path: Path, frames: int, *chunks: bytes, eot: bytes | None = None) -> Path:
    head, body = part10_head(image_dataset(rows=8, columns=8, bits=8, frames=frames), JPEG_BASELINE)
    with path.open("wb") as f:
        f.write(head + body)
        if eot is not None:  # Extended Offset Table (7FE0,0001) OV, before Pixel Data
            f.write(long_element(0x7FE00001, b"OV", len(eot)) + eot)
        f.write(long_element(0x7FE00010, b"OB", 0xFFFFFFFF))
        for chunk in chunks:
            f.write(chunk)
    return path


def _measured(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """fn's result, seconds and peak traced MiB."""
    tracemalloc.start()
    try:
        t = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t
        peak = tracemalloc.get_traced_memory()[1] / MIB
    finally:
        tracemalloc.stop()
    return result, seconds, peak


@pytest.fixture
def small_cap(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setattr(dicom_frames, "MAX_FRAGMENTS", 1000, raising=False)
    yield 1000


# ---- offset tables longer than the fragments -------------------------------------------------------


def test_basic_offset_table_with_more_entries_than_fragments_is_not_unpacked(tmp_path: Path) -> None:
    # 16 Mi zero entries (64 MiB) before one fragment: before the fix, all unpacked (~+500 MiB traced)
    bot = bytes(64 * MIB)
    path = _write(tmp_path / "bot.dcm", 1, _item(len(bot)), bot, _item(len(JPEG)), JPEG, DELIMITER)
    p, seconds, peak = _measured(lambda: parse_file(path))
    assert any("offset table does not match" in w for w in p.warnings)
    [[frame]] = p.frames  # the one fragment is the one frame
    assert frame.length == len(JPEG)
    assert peak < 16, f"{peak:.0f} MiB traced"
    assert seconds < 10


def test_extended_offset_table_with_more_entries_than_fragments_is_not_unpacked(tmp_path: Path) -> None:
    eot = bytes(64 * MIB)  # 8 Mi zero entries, two fragments
    path = _write(
        tmp_path / "eot.dcm", 2, _item(0), _item(len(JPEG)), JPEG, _item(len(JPEG)), JPEG, DELIMITER, eot=eot
    )
    p, seconds, peak = _measured(lambda: parse_file(path))
    assert any("offset table does not match" in w for w in p.warnings)
    assert [len(f) for f in p.frames] == [1, 1]  # one fragment a frame, as the count says
    assert peak < 16, f"{peak:.0f} MiB traced"
    assert seconds < 10


def test_offset_tables_that_fit_are_still_used(tmp_path: Path) -> None:
    # two frames of two fragments each (items of 20 and 12 bytes): the table names fragments 0 and 2
    frags = [_item(len(JPEG)) + JPEG, _item(4) + b"tail"] * 2
    bot = struct.pack("<2L", 0, 32)
    p = parse_file(_write(tmp_path / "ok.dcm", 2, _item(len(bot)), bot, *frags, DELIMITER))
    assert not p.warnings
    assert [[r.length for r in f] for f in p.frames] == [[len(JPEG), 4], [len(JPEG), 4]]
    eot = struct.pack("<2Q", 0, 32)
    p = parse_file(_write(tmp_path / "eot-ok.dcm", 2, _item(0), *frags, DELIMITER, eot=eot))
    assert not p.warnings
    assert [[r.length for r in f] for f in p.frames] == [[len(JPEG), 4], [len(JPEG), 4]]


# ---- fragments past the cap ------------------------------------------------------------------------


def test_fragments_past_the_cap_are_skipped_in_bounded_memory(tmp_path: Path, small_cap: int) -> None:
    # 512 Ki empty items (4 MiB of file), cap lowered to 1000 (tracemalloc slows every allocation):
    # before the fix, every item recorded (~200 MiB traced) and a ~8 MiB `frames` value for the index row
    n = MIB // 2
    path = _write(tmp_path / "frag.dcm", 1, _item(0), _item(0) * n, DELIMITER)
    p, seconds, peak = _measured(lambda: parse_file(path))
    assert p.frames == []
    assert encode_frames(p.frames) == "[]"  # the index row: frames unknown, requests 404
    assert p.number_of_frames == 1
    assert any(f"has {n + 1} items, more than {small_cap}" in w for w in p.warnings)
    assert peak < 16, f"{peak:.0f} MiB traced"
    assert seconds < 60


def test_the_cap_stops_recording(tmp_path: Path) -> None:
    # the real cap, one item past it: before the fix, a frame of 2^20 ranges (~25 MiB of `frames` JSON)
    cap = 1 << 20
    path = _write(tmp_path / "frag.dcm", 1, _item(0), _item(0) * cap, DELIMITER)
    t = time.perf_counter()
    p = parse_file(path)
    assert time.perf_counter() - t < 30
    assert p.frames == []
    assert encode_frames(p.frames) == "[]"
    assert any(f"has {cap + 1} items, more than {cap}" in w for w in p.warnings)
    assert cap == dicom_frames.MAX_FRAGMENTS


def test_fragments_up_to_the_cap_are_recorded(tmp_path: Path, small_cap: int) -> None:
    frag = _item(len(JPEG)) + JPEG
    p = parse_file(_write(tmp_path / "cap.dcm", small_cap - 1, _item(0), frag * (small_cap - 1), DELIMITER))
    assert not p.warnings
    assert len(p.frames) == small_cap - 1
    p = parse_file(_write(tmp_path / "over.dcm", small_cap, _item(0), frag * small_cap, DELIMITER))
    assert p.frames == []
    assert any(f"has {small_cap + 1} items" in w for w in p.warnings)
    assert p.dataset["7FE00010"]["vr"] == "OB"


def test_items_past_the_cap_are_still_checked(tmp_path: Path, small_cap: int) -> None:
    many = _item(0) * (2 * small_cap)
    # no sequence delimiter: truncated, as below the cap
    with pytest.raises(InvalidDicom):
        parse_file(_write(tmp_path / "trunc.dcm", 1, many))
    with pytest.raises(InvalidDicom):
        parse_file(_write(tmp_path / "trunc-small.dcm", 1, _item(0) * 3))
    # an item running past the end of the file
    with pytest.raises(InvalidDicom):
        parse_file(_write(tmp_path / "overrun.dcm", 1, many, _item(100), b"x"))
