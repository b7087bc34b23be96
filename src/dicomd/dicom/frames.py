"""Pixel data frames (pydicom's ``encaps`` in dicomd's terms): the items of encapsulated data, the frames
of native pixel data as one description (offset, bits a frame, count), and the frames of encapsulated
pixel data from its offset tables or its fragments.

Encapsulated frames are listed, one entry per frame, never more than the fragments (8 bytes of file
each): an offset table whose frames do not strictly increase is ignored, and so is one with more entries
than there are fragments, before it is unpacked. At most MAX_FRAGMENTS fragments are recorded: past that
the items are only checked (so a truncated value still raises), and the instance has no frames.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable
from typing import Any

from .model import ByteRange, JsonDataset, NativeFrames
from .tags import (
    BITS_ALLOCATED,
    COLUMNS,
    ITEM_TAG,
    NUMBER_OF_FRAMES,
    PHOTOMETRIC_INTERPRETATION,
    PIXEL_DATA_KEYS,
    ROWS,
    SAMPLES_PER_PIXEL,
    SEQUENCE_DELIMITATION_TAG,
    UNDEFINED_LENGTH,
)

# (value offset, length) of each item of encapsulated data
Fragments = list[tuple[int, int]]

# Fragments recorded per value: far above any real multi-frame (a whole-slide level of 256-pixel tiles
# at 2^20 frames is ~68 gigapixels), while bounding what an item (8 bytes of file) costs: ~100 bytes of
# Python per fragment here, ~25 bytes of `frames` JSON per range in the index row.
MAX_FRAGMENTS = 1 << 20


class UnrecordedFragments(list[tuple[int, int]]):
    """The fragments of a value with more than MAX_FRAGMENTS items: none recorded, `items` read."""

    def __init__(self, items: int) -> None:
        super().__init__()
        self.items = items


# the top-level pixel data value: (tag, value offset, value length, fragments or None if native)
PixelValue = tuple[int, int, int, Fragments | None]
Frames = list[list[ByteRange]] | NativeFrames

# first bytes of a JPEG (SOI + marker), JPEG 2000 codestream (SOC + SIZ) or JP2 signature box
_FRAME_MARKERS = frozenset(
    [bytes((0xFF, 0xD8, 0xFF, m)) for m in range(0xC0, 0x100)] + [b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0c"]
)


def read_fragments(
    unpack_item: Callable[..., tuple[Any, ...]], buf: Any, pos: int, end: int
) -> tuple[Fragments, int] | None:
    """Items of encapsulated data up to the sequence delimiter and the offset after it; None when the
    value is not made of items. `unpack_item` reads an item header (group, element, length)."""
    frags: Fragments = []
    while pos + 8 <= end:
        group, elem, length = unpack_item(buf, pos)
        tag = group << 16 | elem
        if tag == SEQUENCE_DELIMITATION_TAG:
            return frags, pos + 8
        if tag != ITEM_TAG or length == UNDEFINED_LENGTH or pos + 8 + length > end:
            return None
        if len(frags) == MAX_FRAGMENTS:
            del frags
            return _skip_fragments(unpack_item, buf, pos, end)
        frags.append((pos + 8, length))
        pos += 8 + length
    return None


def _skip_fragments(
    unpack_item: Callable[..., tuple[Any, ...]], buf: Any, pos: int, end: int
) -> tuple[Fragments, int] | None:
    """read_fragments past MAX_FRAGMENTS items: the same checks, nothing recorded."""
    count = MAX_FRAGMENTS
    while pos + 8 <= end:
        group, elem, length = unpack_item(buf, pos)
        tag = group << 16 | elem
        if tag == SEQUENCE_DELIMITATION_TAG:
            return UnrecordedFragments(count), pos + 8
        if tag != ITEM_TAG or length == UNDEFINED_LENGTH or pos + 8 + length > end:
            return None
        count += 1
        pos += 8 + length
    return None


def _first_int(ds: JsonDataset, key: str) -> int | None:
    el = ds.get(key)
    if not el:
        return None
    v = el.get("Value")
    if not v or not isinstance(v[0], int | float):
        return None
    return int(v[0])


def pixel_frames(
    ds: JsonDataset,
    pixel: PixelValue | None,
    eot: tuple[int, int] | None,
    buf: Any,
    byte_order: str,
    inline_bulk: bool,
    warnings: list[str],
) -> tuple[Frames, int]:
    """The frames of the top-level pixel data and the number of frames. `eot`: the Extended Offset
    Table's (value offset, length); no frames when values are inline (`inline_bulk`)."""
    if pixel is None:
        nf = _first_int(ds, NUMBER_OF_FRAMES)
        has_pixels = any(k in ds for k in PIXEL_DATA_KEYS)
        return [], (max(nf or 1, 1) if has_pixels else 0)
    _, vpos, length, frags = pixel
    nframes = _first_int(ds, NUMBER_OF_FRAMES)
    if nframes is None or nframes < 1:
        nframes = 1
    if inline_bulk:
        return [], nframes
    if frags is None:
        return native_frames(ds, vpos, length, nframes, warnings), nframes
    return encapsulated_frames(frags, nframes, eot, buf, byte_order, warnings), nframes


def native_frames(ds: JsonDataset, vpos: int, length: int, nframes: int, warnings: list[str]) -> Frames:
    rows = _first_int(ds, ROWS)
    cols = _first_int(ds, COLUMNS)
    spp = _first_int(ds, SAMPLES_PER_PIXEL) or 1
    bits = _first_int(ds, BITS_ALLOCATED)
    if not rows or not cols or not bits:
        warnings.append("Pixel Data without Rows/Columns/Bits Allocated: frames unknown")
        return []
    photometric = ds.get(PHOTOMETRIC_INTERPRETATION, {}).get("Value") or [""]
    if photometric[0] == "YBR_FULL_422" and spp == 3:
        # native YBR_FULL_422 stores two samples per pixel (PS3.3 C.7.6.3.1.2)
        spp = 2
    frame_bits = rows * cols * spp * bits
    if frame_bits <= 0:
        warnings.append("Pixel Data with a negative frame size: frames unknown")
        return []
    # frame i ends at byte ceil((i + 1) * frame_bits / 8): whole frames fit up to 8 * length bits
    count = min(nframes, 8 * length // frame_bits)
    if count < nframes:
        warnings.append(f"Pixel Data holds {length} bytes, too few for {nframes} frames of {frame_bits} bits")
    return NativeFrames(vpos, frame_bits, count) if count else []


def encapsulated_frames(
    frags: Fragments,
    nframes: int,
    eot: tuple[int, int] | None,
    buf: Any,
    byte_order: str,
    warnings: list[str],
) -> list[list[ByteRange]]:
    if isinstance(frags, UnrecordedFragments):
        warnings.append(
            f"Encapsulated Pixel Data has {frags.items} items, more than {MAX_FRAGMENTS}: frames unknown"
        )
        return []
    if not frags:
        warnings.append("Encapsulated Pixel Data without items")
        return []
    bot_pos, bot_len = frags[0]
    data = frags[1:]
    if not data:
        warnings.append("Encapsulated Pixel Data without fragments")
        return []
    # offsets in the tables are relative to the first fragment's item tag
    first_item = data[0][0] - 8
    starts = {off - 8 - first_item: i for i, (off, _) in enumerate(data)}
    # the offset table: (value offset, entries, format) of the Extended one if usable, else the Basic one
    table: tuple[int, int, str] | None = None
    if eot is not None and eot[1] % 8 == 0 and eot[1]:
        table = (eot[0], eot[1] // 8, "Q")
    elif bot_len >= 4 and bot_len % 4 == 0:
        table = (bot_pos, bot_len // 4, "L")
    if table is not None:
        # strictly increasing: each frame gets at least one fragment, so a table cannot name more
        # frames than the file holds fragments (a repeated offset would make empty frames); one with
        # more entries is not unpacked (it may be nearly the whole file)
        tpos, count, fmt = table
        idx = (
            [starts.get(o) for o in struct.unpack_from(f"{byte_order}{count}{fmt}", buf, tpos)]
            if count <= len(data)
            else [None]
        )
        if all(i is not None for i in idx) and all(
            a < b  # type: ignore[operator]
            for a, b in itertools.pairwise(idx)
        ):
            bounds = [*idx, len(data)]
            return [
                [ByteRange(o, n) for o, n in data[bounds[k] : bounds[k + 1]]]  # type: ignore[misc]
                for k in range(len(idx))
            ]
        warnings.append("Pixel Data offset table does not match the fragments; ignored")
    if len(data) == nframes:
        return [[ByteRange(o, n)] for o, n in data]
    if nframes == 1:
        return [[ByteRange(o, n) for o, n in data]]
    # several frames, no usable table: a fragment starting with a codestream marker starts a frame
    heads = [i for i, (o, n) in enumerate(data) if n >= 4 and buf[o : o + 4] in _FRAME_MARKERS]
    if len(heads) == nframes and heads[0] == 0:
        bounds = [*heads, len(data)]
        return [[ByteRange(o, n) for o, n in data[bounds[k] : bounds[k + 1]]] for k in range(nframes)]
    warnings.append(f"Cannot map {len(data)} Pixel Data fragments to {nframes} frames; frames left empty")
    return []
