"""Frames and bulk data ranges that cannot be amplified (issue 9): native frames described rather than
listed, encapsulated frame tables bounded by the file, deflated data sets inflated to a temporary file
with ranges into the inflated data set, and the index's encoding of frame tables.

The files are built by support/dicom_files.py."""

from __future__ import annotations

import hashlib
import io
import os
import random
import struct
import time
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset

from dicomd.dicom import deflate
from dicomd.dicom.model import ByteRange, InvalidDicom, NativeFrames
from dicomd.dicom.parser import InflatedReader, parse_bytes, parse_file
from dicomd.index import frames as index_frames
from dicomd.index import rows
from dicomd.index.types import NewInstance

from support.dicom_files import (
    DEFLATED,
    EXPLICIT,
    hashed,
    image_dataset,
    long_element,
    part10_head,
    patterned,
    write_part10,
)

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"

# ---- native frames: described, not listed ---------------------------------------------------------


def _old_native_frames(vpos: int, length: int, frame_bits: int, nframes: int) -> list[list[ByteRange]]:
    """Frames listed, one range each, as the reference."""
    out: list[list[ByteRange]] = []
    for i in range(nframes):
        start_bit = i * frame_bits
        start = start_bit // 8
        stop = (start_bit + frame_bits + 7) // 8
        if stop > length:
            break
        out.append([ByteRange(vpos + start, stop - start)])
    return out


@pytest.mark.parametrize(
    ("rows", "columns", "bits", "samples", "frames", "length"),
    [
        (3, 3, 1, 1, 4, 5),  # 9 bits a frame: frames straddle bytes
        (3, 3, 1, 1, 9, 5),  # too few bytes: the frames that fit
        (1, 1, 1, 1, 40, 4),  # one bit a frame, eight frames a byte
        (4, 6, 16, 1, 3, 144),
        (4, 6, 16, 1, 3, 150),  # trailing padding
        (2, 2, 8, 3, 5, 50),  # RGB, the last frame cut short
        (5, 5, 12, 1, 2, 75),
    ],
)
def test_native_frames_equal_the_old_list(
    rows: int, columns: int, bits: int, samples: int, frames: int, length: int
) -> None:
    ds = image_dataset(rows=rows, columns=columns, bits=bits, frames=frames, samples=samples)
    pixels = bytes(random.Random(length).randbytes(length))
    head, body = part10_head(ds, EXPLICIT)
    data = head + body + long_element(0x7FE00010, b"OB", length) + pixels
    p = parse_bytes(data)
    vpos = len(head) + len(body) + 12
    want = _old_native_frames(vpos, length, rows * columns * samples * bits, frames)
    assert p.number_of_frames == frames
    assert isinstance(p.frames, NativeFrames) and p.frames == want and list(p.frames) == want
    assert [p.frames[i] for i in range(-len(want), 0)] == want
    assert (len(want) < frames) == any("too few" in w for w in p.warnings)
    with pytest.raises(IndexError):
        p.frames[len(want)]


def test_frame_bomb_is_described_in_constant_time_and_space() -> None:
    """1x1 pixels of 1 bit, NumberOfFrames 2,000,000,000 and 1 MB of pixel data: three numbers, not a
    range per frame."""
    length = 1 << 20
    ds = image_dataset(rows=1, columns=1, bits=1, frames=2_000_000_000)
    head, body = part10_head(ds, EXPLICIT)
    data = head + body + long_element(0x7FE00010, b"OB", length) + bytes(range(256)) * (length // 256)
    t = time.perf_counter()
    p = parse_bytes(data)
    elapsed = time.perf_counter() - t
    assert elapsed < 0.5, f"{elapsed:.2f} s"
    assert p.number_of_frames == 2_000_000_000
    assert len(p.frames) == 8 * length
    vpos = len(head) + len(body) + 12
    assert p.frames[0] == [ByteRange(vpos, 1)]
    assert p.frames[8 * length - 1] == [ByteRange(vpos + length - 1, 1)]
    row = rows.instance_values(_new_instance(p), {})
    assert len(row["frames"]) < 100, row["frames"]


def _new_instance(p: Any) -> NewInstance:
    return NewInstance(1, p, "key", p.file_length)


# ---- encapsulated frame tables: bounded by the fragments ------------------------------------------


def _items(*values: bytes) -> bytes:
    return b"".join(struct.pack("<HHL", 0xFFFE, 0xE000, len(v)) + v for v in values)


def _encapsulated(ds: Dataset, bot: bytes, fragments: list[bytes]) -> bytes:
    head, body = part10_head(ds, JPEG_BASELINE)
    value = _items(bot, *fragments) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    return head + body + long_element(0x7FE00010, b"OB", 0xFFFFFFFF) + value


def test_offset_table_with_repeated_offsets_makes_no_empty_frames() -> None:
    frags = [bytes([i + 1]) * 6 for i in range(3)]
    ds = image_dataset(rows=8, columns=8, bits=8, frames=3)
    # every frame "starts" at the first fragment: taken as is, two empty frames and one of three fragments
    p = parse_bytes(_encapsulated(ds, struct.pack("<3L", 0, 0, 0), frags))
    assert any("offset table" in w for w in p.warnings)
    assert [len(f) for f in p.frames] == [1, 1, 1]  # one fragment a frame, as the count says
    # a table of a million zeros cannot make a million frames out of one fragment
    ds = image_dataset(rows=8, columns=8, bits=8, frames=1_000_000)
    p = parse_bytes(_encapsulated(ds, bytes(4_000_000), [b"\xff\xd8\xff\xdb" + b"x" * 8]))
    assert p.number_of_frames == 1_000_000
    assert len(p.frames) <= 1


def test_frame_tables_never_hold_more_frames_than_fragments() -> None:
    rng = random.Random(9)
    frags = [b"\xff\xd8\xff\xdb" + bytes([i]) * 4 for i in range(6)]
    starts = [12 * i for i in range(6)]  # item offsets relative to the first fragment's item
    for _ in range(300):
        n = rng.randrange(1, 12)
        offsets = sorted(rng.choice(starts) for _ in range(n))
        ds = image_dataset(rows=8, columns=8, bits=8, frames=rng.randrange(1, 12))
        p = parse_bytes(_encapsulated(ds, struct.pack(f"<{n}L", *offsets), frags))
        assert len(p.frames) <= len(frags)
        assert all(frame for frame in p.frames), offsets
        assert sum(map(len, p.frames)) <= len(frags)


# ---- deflated data sets ------------------------------------------------------------------------


def _deflated_sample(tmp_path: Path, ts: str, pixel_length: int = 4096) -> tuple[Path, bytes, bytes]:
    """A file with a large private OB value, a nested bulk value and pixel data; returns the path,
    the big private value and the pixel data."""
    big = random.Random(3).randbytes(3000)
    nested = random.Random(4).randbytes(2000)
    ds = image_dataset(rows=64, columns=pixel_length // 64, bits=8)
    ds.add_new(0x00290010, "LO", "DICOMD TEST")
    ds.add_new(0x00291010, "OB", big)
    item = Dataset()
    item.add_new(0x00420011, "OB", nested)
    item.add_new(0x00080100, "SH", "CODE")
    ds.add_new(0x00081111, "SQ", [item])
    pixels = random.Random(5).randbytes(pixel_length)
    path = tmp_path / f"sample-{ts}.dcm"
    write_part10(path, ds, ts, [long_element(0x7FE00010, b"OB", len(pixels)), pixels])
    return path, big, pixels


def test_deflated_instances_get_bulk_data_like_any_other(tmp_path: Path) -> None:
    path, big, pixels = _deflated_sample(tmp_path, DEFLATED)
    plain_path, _, _ = _deflated_sample(tmp_path, EXPLICIT)
    p = parse_file(path, bulk_threshold=1024)
    # the same data set as the same instance in Explicit VR Little Endian: same BulkDataURIs
    plain = parse_file(plain_path, bulk_threshold=1024)
    for q in (p, plain):  # fresh UIDs per file: compare the rest
        for key in ("00080018", "0020000D", "0020000E", "00100020"):
            del q.dataset[key]
    assert p.dataset == plain.dataset
    assert p.dataset["7FE00010"] == {"vr": "OB", "BulkDataURI": "bulkdata/7FE00010"}
    assert p.dataset["00291010"] == {"vr": "OB", "BulkDataURI": "bulkdata/00291010"}
    assert list(p.bulk) == list(plain.bulk) == ["00081111/0/00420011", "00291010", "7FE00010"]
    # ranges into the inflated data set
    data = path.read_bytes()
    inflated = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data[p.dataset_offset :])
    ref = pydicom.dcmread(path)
    assert inflated[p.bulk["00291010"].offset :][: len(big)] == big == ref[0x00291010].value
    r = p.bulk["00081111/0/00420011"]
    assert inflated[r.offset : r.offset + r.length] == ref[0x00081111][0][0x00420011].value
    r = p.bulk["7FE00010"]
    assert inflated[r.offset : r.offset + r.length] == pixels == ref.PixelData
    assert p.number_of_frames == 1
    [[frame]] = list(p.frames)
    assert inflated[frame.offset : frame.offset + frame.length] == pixels
    assert sorted(os.listdir(tmp_path)) == sorted([path.name, plain_path.name])  # no temporary left


def test_deflated_parse_inflates_next_to_the_file_in_bounded_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 MB of pixel data deflated to ~200 KB: inflated into an unnamed file next to the parsed one,
    memory-mapped, not into memory."""
    length = 200_000_000
    ds = image_dataset(rows=10_000, columns=20_000, bits=8)
    path = tmp_path / "bomb.dcm"
    size = write_part10(path, ds, DEFLATED, [long_element(0x7FE00010, b"OB", length), *patterned(length)])
    assert size < 1_000_000
    dirs: list[str | None] = []
    real = deflate.tempfile.TemporaryFile

    def spy(*args: Any, **kwargs: Any) -> Any:
        dirs.append(kwargs.get("dir"))
        return real(*args, **kwargs)

    monkeypatch.setattr(deflate.tempfile, "TemporaryFile", spy)
    tracemalloc.start()
    try:
        p = parse_file(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"peak {peak >> 20} MiB"
    assert dirs == [str(tmp_path)]
    assert os.listdir(tmp_path) == ["bomb.dcm"]  # nothing left behind
    assert p.bulk["7FE00010"].length == length
    assert len(p.dataset["7FE00010"]["BulkDataURI"]) < 100


def test_inflating_past_the_cap_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deflate, "MAX_INFLATED", 1 << 20)
    ds = image_dataset(rows=1024, columns=2048, bits=8)
    path = tmp_path / "big.dcm"
    write_part10(path, ds, DEFLATED, [long_element(0x7FE00010, b"OB", 2 << 20), bytes(2 << 20)])
    with pytest.raises(InvalidDicom, match="inflates to more than"):
        parse_file(path)
    assert os.listdir(tmp_path) == ["big.dcm"]


def test_inline_deflated_parses_as_stored_before(tmp_path: Path) -> None:
    """Deflated instances stored before ranges into the inflated data set existed have every binary
    value inline and no ranges: their metadata is rebuilt that way."""
    path, _, _ = _deflated_sample(tmp_path, DEFLATED)
    p = parse_file(path, inline_deflated=True)
    assert p.bulk == {} and p.frames == [] and p.number_of_frames == 1
    assert "InlineBinary" in p.dataset["7FE00010"] and "InlineBinary" in p.dataset["00291010"]
    # other transfer syntaxes are not affected
    plain_path, _, _ = _deflated_sample(tmp_path, EXPLICIT)
    assert parse_file(plain_path, inline_deflated=True).bulk == parse_file(plain_path).bulk


def test_inflated_reader_serves_any_range_in_bounded_pieces(tmp_path: Path) -> None:
    path, _, _ = _deflated_sample(tmp_path, DEFLATED, pixel_length=64 * 1024)
    data = path.read_bytes()
    p = parse_file(path)
    inflated = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data[p.dataset_offset :])
    rng = random.Random(2)
    with open(path, "rb") as f:
        reader = InflatedReader(f, piece=1000)
        for _ in range(200):
            offset = rng.randrange(len(inflated))
            length = rng.randrange(min(5000, len(inflated) - offset) + 1)
            pieces = list(reader.read(offset, length))  # forwards and backwards: restarts
            assert all(0 < len(piece) <= 1000 for piece in pieces)
            assert b"".join(pieces) == inflated[offset : offset + length]
        with pytest.raises(InvalidDicom):
            list(reader.read(len(inflated) - 10, 20))  # past the end: an error, not short data


def test_inflate_drains_what_zlib_holds_at_the_end_of_the_input(monkeypatch: pytest.MonkeyPatch) -> None:
    """zlib reads input ahead: with an output limit, the input can be used up while output is still
    held. Both the parse's inflate and the reader must drain it, not take the stream as cut short
    (output pieces of 1..300 bytes make that case common)."""
    rng = random.Random(5)
    for _ in range(40):
        payload = (
            rng.randbytes(rng.randrange(50)) + bytes(rng.randrange(5000)) + rng.randbytes(rng.randrange(50))
        )
        z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        deflated = z.compress(payload) + z.flush()
        for piece in range(1, 300, 3):
            monkeypatch.setattr(deflate, "_INFLATE_PIECE", piece)
            out = io.BytesIO()
            assert deflate._inflate_into(deflated, 0, len(deflated), out) == (len(payload), True)
            assert out.getvalue() == payload
            reader = InflatedReader(io.BytesIO(deflated), piece, start=0)
            assert b"".join(reader.read(0, len(payload))) == payload


# ---- the index's frames column ---------------------------------------------------------------


def test_frames_column_describes_native_frames_and_decodes_both_forms() -> None:
    raw = index_frames.encode_frames(NativeFrames(1000, 9, 4))
    assert raw == '{"offset":1000,"frame_bits":9,"frame_count":4}'
    table = index_frames.frame_table("k-native", raw)
    assert len(table) == 4 and table[3] == [(1003, 2)]
    assert list(table) == [[(1000, 2)], [(1001, 2)], [(1002, 2)], [(1003, 2)]]
    huge = index_frames.frame_table("k-huge", index_frames.encode_frames(NativeFrames(0, 1, 8 << 20)))
    assert len(huge) == 8 << 20 and huge[-1] == [(((8 << 20) - 1) // 8, 1)]
    # the listed form (encapsulated frames; native frames of archives from before): decoded once
    listed = index_frames.encode_frames([[ByteRange(10, 5), ByteRange(20, 5)], [ByteRange(30, 7)]])
    assert listed == "[[[10,5],[20,5]],[[30,7]]]"
    first = index_frames.frame_table("k-listed", listed)
    assert first == [[(10, 5), (20, 5)], [(30, 7)]]
    assert index_frames.frame_table("k-listed", listed) is first  # cached by object key: no parse
    assert index_frames.frame_table("k-empty", "[]") == []


def test_frame_table_cache_is_bounded() -> None:
    cache = index_frames.FrameTableCache(max_ranges=10)
    cache.put("a", [[(0, 1)]] * 6)
    cache.put("b", [[(0, 1)]] * 4)
    assert cache.get("a") is not None and cache.get("b") is not None
    cache.put("c", [[(0, 1)]] * 3)  # over the bound: the least recently used ("a") goes
    assert cache.get("a") is None
    assert cache.get("b") is not None and cache.get("c") is not None
    cache.put("d", [[(0, 1)]] * 11)  # bigger than the whole cache: not kept
    assert cache.get("d") is None


def test_patterned_pieces_join_seamlessly() -> None:
    digest = hashlib.sha256()
    pieces = list(hashed(patterned(3_000_000), digest))
    joined = b"".join(pieces)
    assert len(joined) == 3_000_000
    middle = joined[4096:-4096]
    assert middle[(1 << 16) * 5 :][:8] == struct.pack("<Q", 6) and middle.count(0) > len(middle) * 0.99
    assert digest.digest() == hashlib.sha256(joined).digest()
