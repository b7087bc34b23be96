"""Fast single-pass DICOM Part 10 parser: file -> DICOM JSON (PS3.18 F.2) + bulk byte ranges + frames.

One pass over the file (mmap'ed by `parse_file`), no pydicom DataElement objects. Large binary values
are never copied: they are recorded as absolute byte ranges of the stored file, so memory stays
bounded whatever the size of the pixel data.

The JSON equals pydicom 3's ``Dataset.to_json_dict`` element for element (the test suite checks this
on every bundled test file), with these deliberate differences:

* Binary values (OB, OD, OF, OL, OV, OW, UN) longer than ``bulk_threshold`` bytes, and Pixel Data /
  Float / Double Float Pixel Data always, become ``{"vr": .., "BulkDataURI": "bulkdata/<tagpath>"}``
  with the range in ``ParsedInstance.bulk[<tagpath>]``. pydicom compares the *base64* size instead.
  tagpath is ``GGGGEEEE`` at top level and ``<seqtag>/<itemindex>/<tag>`` when nested.
* Where pydicom's ``to_json_dict`` raises (invalid IS/DS such as "1A", numeric values whose length is
  not a multiple of the value size, AT shorter than 4 bytes, unknown explicit VRs, ambiguous VRs that
  cannot be resolved) the element is dropped and a warning is added to ``ParsedInstance.warnings``.
  Empty values inside a multi-valued IS, DS or PN (pydicom raises) are emitted as ``null``.
* DS values that are not finite (NaN, inf) are dropped with a warning (JSON cannot carry them).
* UI values with characters other than digits and "." or longer than 64 characters are dropped
  with a warning (pydicom keeps them); leading zeros in components are tolerated.
* Ambiguous VRs pydicom leaves unresolved (e.g. "OB or OW" for AirCounts, "US or SS or OW" for
  GrayLookupTableData) are emitted as "OW" (the only choice in Implicit VR, PS3.5 A.1); unresolved
  "US or SS" tags are resolved with Pixel Representation like the ones pydicom knows about.
* Truncation: a value running past the end of the file is dropped with a warning at top level
  (parsing stops there); a truncated Pixel Data value, sequence or item, or a truncated element
  header, raises ``InvalidDicom``. pydicom silently keeps such truncated values.
* Deflated Explicit VR Little Endian: the data set is inflated to an unnamed temporary file next to
  the parsed file (capped at ``MAX_INFLATED``, a refusal) and parsed from there, memory-mapped. Binary
  values follow the same bulk data rule as in any other file; their ``bulk``/``frames`` ranges are
  offsets into the inflated data set (0 = its first byte), and readers inflate again as they stream
  (``InflatedReader``). Byte ranges into the stored file cannot exist, the deflate stream has no
  random access. (dicomd once kept every binary value of deflated files inline, with no ranges:
  ``inline_deflated`` parses an instance stored that way as it was.)
* Pixel Data encoded as UN with undefined length is read as encapsulated pixel data (OB), not as
  a sequence.
* Files without the 128-byte preamble + "DICM" prefix are rejected (STOW requires Part 10).
* Frames of native pixel data are uniform and described, not listed (``NativeFrames``: offset, bits
  a frame, count). With Bits Allocated 1 they are bit-packed: frame i covers bits [i*n, (i+1)*n) and
  its range is the enclosing bytes (neighbouring frames may share a byte). Encapsulated frames are
  listed, one entry per frame, never more than the fragments (8 bytes of file each): an offset table
  that does not strictly increase is ignored.

This module holds the read loop (element headers, VR look-up, sequences, bulk data ranges) and the public
functions. Beside it: `values` converts values, `ambiguous` resolves ambiguous VRs from the data set's
`context`, `frames` describes the pixel data frames, `deflate` inflates, `meta` finds where the data set
starts; `tags` and `uids` name the tags and UIDs.
"""

from __future__ import annotations

import base64
import mmap
import os
import struct
import zlib
from collections.abc import Callable
from typing import Any

from pydicom.datadict import DicomDictionary, dictionary_VR, private_dictionary_VR

from .ambiguous import AMBIGUOUS_VRS, LUT_DESCRIPTOR_TAGS, resolve_later, resolve_now
from .charset import DEFAULT_CHARSET, resolve_charset
from .context import DataSetContext, record_creator
from .deflate import MAX_INFLATED, InflatedDataSet, InflatedReader, may_be_deflated
from .frames import PixelValue, pixel_frames, read_fragments
from .meta import meta_end
from .model import ByteRange, InvalidDicom, JsonDataset, JsonElement, ParsedInstance
from .tags import (
    BITS_ALLOCATED_TAG,
    EXTENDED_OFFSET_TABLE_TAG,
    ITEM_DELIMITATION_TAG,
    ITEM_TAG,
    LUT_DESCRIPTOR_TAG,
    PIXEL_DATA_TAG,
    PIXEL_DATA_TAGS,
    PIXEL_REPRESENTATION_TAG,
    SEQUENCE_DELIMITATION_TAG,
    SERIES_INSTANCE_UID,
    SOP_CLASS_UID,
    SOP_INSTANCE_UID,
    SPECIFIC_CHARACTER_SET_TAG,
    STUDY_INSTANCE_UID,
    TRANSFER_SYNTAX_UID,
    UNDEFINED_LENGTH,
    WAVEFORM_BITS_ALLOCATED_TAG,
)
from .uids import DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN
from .values import (
    BINARY_VRS,
    LONG_VRS,
    NUMBER_FORMATS,
    NUMBER_SIZE,
    STR_CONVERTERS,
    TEXT_CONVERTERS,
    TEXT_MULTI,
    TEXT_SINGLE,
    VR_FROM_BYTES,
    DropElement,
    attribute_tags,
    numbers,
)

__all__ = ["MAX_INFLATED", "InflatedReader", "may_be_deflated", "parse_bytes", "parse_file"]

PIXEL_TAGS = PIXEL_DATA_TAGS  # always bulk data, whatever the threshold (tags.PIXEL_DATA_TAGS)
# Tables whose methods the loop calls, bound by assignment: CPython compiles a method call on a name bound
# by import into an attribute load that makes a bound method on every call.
_VR_FROM_BYTES = VR_FROM_BYTES
_STR_CONVERTERS = STR_CONVERTERS
# Sequences nested deeper than this are malicious, not clinical.
_MAX_DEPTH = 64

# tag -> VR of the public dictionary, built once (repeating groups are resolved on demand)
_DICT_VR: dict[int, str] = {tag: entry[0] for tag, entry in DicomDictionary.items()}
_VR_CACHE: dict[int, str | None] = {}
_KEY_CACHE: dict[int, str] = {}
_CACHE_LIMIT = 200_000

# attributes later elements depend on: charset, Pixel Representation, Bits Allocated, LUT Descriptor,
# Waveform Bits Allocated
_TRACKED = frozenset(
    (
        SPECIFIC_CHARACTER_SET_TAG,
        PIXEL_REPRESENTATION_TAG,
        BITS_ALLOCATED_TAG,
        LUT_DESCRIPTOR_TAG,
        WAVEFORM_BITS_ALLOCATED_TAG,
    )
)

# The C fast path for runs of simple explicit VR little endian elements (see _fastscan.c), when the
# package was built with it; the Python loop below stays the reference and handles everything else.
# scan(buf, pos, end, ds, text_ok, creators, prefix, (bulk, threshold, inline_bulk, ByteRange),
#      levels: sequence levels still allowed, _MAX_DEPTH - depth, given_back: see _Parser.scan_seq) -> pos
_Scan = Callable[
    [Any, int, int, dict[str, Any], bool, dict[int, str], str, tuple[Any, ...], int, set[int]], int
]
try:
    from dicomd.dicom import _fastscan  # type: ignore[attr-defined]

    if getattr(_fastscan, "API", 1) != 5:  # built from an older _fastscan.c: pip install -e . rebuilds it
        raise ImportError("dicomd.dicom._fastscan is a stale build")
    _fastscan.set_stop_tags(sorted(_TRACKED | {SPECIFIC_CHARACTER_SET_TAG}))
    _SCAN: _Scan | None = _fastscan.scan
except ImportError:  # built without a C compiler (or a stale build): pure Python, same results
    _SCAN = None


def _dict_vr(tag: int) -> str | None:
    """Public dictionary VR including repeating groups (60xx etc.), None if unknown."""
    try:
        return _DICT_VR[tag]
    except KeyError:
        pass
    try:
        return _VR_CACHE[tag]
    except KeyError:
        pass
    vr: str | None
    if (tag >> 16) & 1:
        vr = None  # private: never in the public dictionary (pydicom's fast lookup agrees)
    else:
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            vr = None
    if len(_VR_CACHE) < _CACHE_LIMIT:
        _VR_CACHE[tag] = vr
    return vr


def _key(tag: int) -> str:
    try:
        return _KEY_CACHE[tag]
    except KeyError:
        k = f"{tag:08X}"
        if len(_KEY_CACHE) < _CACHE_LIMIT:
            _KEY_CACHE[tag] = k
        return k


def _tag_name(tag: int) -> str:
    entry = DicomDictionary.get(tag)
    name = entry[4] if entry and entry[4] else ("PrivateTag" if (tag >> 16) & 1 else "UnknownTag")
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {name}"


class _Fixup:
    """An ambiguous-VR element resolved once the whole data set tree is known."""

    __slots__ = ("ctx", "ds", "key", "length", "path", "tag", "vpos", "vr")

    def __init__(
        self,
        ctx: DataSetContext,
        ds: JsonDataset,
        key: str,
        tag: int,
        vr: str,
        vpos: int,
        length: int,
        path: str,
    ) -> None:
        self.ctx = ctx
        self.ds = ds
        self.key = key
        self.tag = tag
        self.vr = vr
        self.vpos = vpos
        self.length = length
        self.path = path


# dispatch classes for the hot loop
_K_STR, _K_NUM, _K_TEXT, _K_SQ = 1, 2, 3, 4
_KIND: dict[str, int] = {
    **dict.fromkeys(STR_CONVERTERS, _K_STR),
    **dict.fromkeys(NUMBER_FORMATS, _K_NUM),
    **dict.fromkeys(TEXT_MULTI | TEXT_SINGLE, _K_TEXT),
    "SQ": _K_SQ,
}


_Unpack = Callable[..., tuple[Any, ...]]


def _unpackers(e: str) -> tuple[_Unpack, _Unpack, _Unpack, _Unpack, dict[str, _Unpack]]:
    return (
        struct.Struct(e + "HH2sH").unpack_from,  # explicit VR header
        struct.Struct(e + "HHL").unpack_from,  # implicit VR header, item headers
        struct.Struct(e + "L").unpack_from,
        struct.Struct(e + "H").unpack_from,
        {vr: struct.Struct(e + code).unpack_from for vr, (code, _) in NUMBER_FORMATS.items()},
    )


_UNPACKERS = {"<": _unpackers("<"), ">": _unpackers(">")}


class _Parser:
    def __init__(self, buf: Any, end: int, little: bool, bulk_threshold: int, inline_bulk: bool) -> None:
        self.buf = buf  # bytes or mmap: slicing yields bytes, struct can unpack from it
        self.end = end
        self.little = little
        self.threshold = bulk_threshold
        self.inline_bulk = inline_bulk
        e = "<" if little else ">"
        self.e = e
        self.u_expl, self.u_impl, self.u_l, self.u_h, self.u_single = _UNPACKERS[e]
        self.warnings: list[str] = []
        self.bulk: dict[str, ByteRange] = {}
        self.scan_bulk = (self.bulk, bulk_threshold, inline_bulk, ByteRange)  # what _SCAN needs of binary()
        # offsets of the sequences _SCAN gave back (every one open where it gave up): it leaves them to
        # this parser from then on, so it does not convert the nested ones of a sequence it gave back
        # again up to the same element, once per level (quadratic work on a hostile chain)
        self.scan_seq: set[int] = set()
        self.fixups: list[_Fixup] = []
        self.depth = 0
        self.pixel: PixelValue | None = None  # top-level pixel data
        self.eot: tuple[int, int] | None = None  # Extended Offset Table value range

    # -- structure ------------------------------------------------------------------------------

    def detect_implicit(self, pos: int, end: int, assumed_implicit: bool, top: bool) -> bool:
        """pydicom's heuristic: a data set whose first element has no letters where the VR would be
        is implicit VR (sequence items may switch to implicit; the top level may switch both ways)."""
        if not top and assumed_implicit:
            return True
        if pos + 6 > end:
            return assumed_implicit
        b0 = self.buf[pos + 4]
        b1 = self.buf[pos + 5]
        found_implicit = not (0x40 < b0 < 0x5B and 0x40 < b1 < 0x5B)
        if found_implicit != assumed_implicit and top:
            self.warnings.append(
                f"Data set is encoded as {'implicit' if found_implicit else 'explicit'} VR, "
                "not as its transfer syntax says; read as found"
            )
        return found_implicit

    def read_dataset(
        self, pos: int, end: int, implicit: bool, ctx: DataSetContext, prefix: str, delimited: bool, top: bool
    ) -> tuple[JsonDataset, int]:
        """Parse elements from `pos` up to `end` (or up to an item delimiter when `delimited`)."""
        buf = self.buf
        u_expl = self.u_expl
        u_impl = self.u_impl
        ds: JsonDataset = {}
        if top or not implicit:  # items of an implicit VR sequence stay implicit
            implicit = self.detect_implicit(pos, end, implicit, top)
            ctx.implicit = implicit
        scan = _SCAN if self.little and not implicit else None
        while pos < end:
            if scan is not None:
                pos = scan(
                    buf,
                    pos,
                    end,
                    ds,
                    ctx.charset.ascii_ok,
                    ctx.creators,
                    prefix,
                    self.scan_bulk,
                    _MAX_DEPTH - self.depth,
                    self.scan_seq,
                )
                if pos >= end:
                    break
            if pos + 8 > end:
                raise InvalidDicom(f"truncated element header at offset {pos}")
            if implicit:
                group, elem, length = u_impl(buf, pos)
                vr: str | None = None
                vpos = pos + 8
            else:
                group, elem, vrb, length = u_expl(buf, pos)
                vr = _VR_FROM_BYTES.get(vrb)
                if vr is not None:
                    if vr in LONG_VRS:
                        if pos + 12 > end:
                            raise InvalidDicom(f"truncated element header at offset {pos}")
                        length = self.u_l(buf, pos + 8)[0]
                        vpos = pos + 12
                    else:
                        vpos = pos + 8
                elif not (b"AA" <= vrb <= b"ZZ"):
                    # not a VR at all: some writers switch to implicit VR mid-data set
                    group, elem, length = u_impl(buf, pos)
                    vpos = pos + 8
                else:
                    vr = vrb.decode("latin-1")  # unknown VR with letters: 2-byte length (pydicom)
                    vpos = pos + 8
            tag = group << 16 | elem
            if tag == ITEM_DELIMITATION_TAG:
                if not delimited:
                    # pydicom ends the data set here too
                    self.warnings.append(
                        f"Unexpected item delimiter at offset {pos}; rest of data set ignored"
                    )
                    return ds, (end if top else pos + 8)
                return ds, pos + 8
            if tag in (SEQUENCE_DELIMITATION_TAG, ITEM_TAG):
                what = "sequence delimiter" if tag == SEQUENCE_DELIMITATION_TAG else "item"
                raise InvalidDicom(f"unexpected {what} at offset {pos}")
            if length == UNDEFINED_LENGTH:
                pos = self.read_undefined(tag, vr, vpos, end, implicit, ctx, ds, prefix, top)
                continue
            vend = vpos + length
            if vend > end:
                if top and end == self.end and tag not in PIXEL_DATA_TAGS:
                    self.warnings.append(
                        f"{_tag_name(tag)}: value length {length} runs past the end of the file; "
                        "element dropped and rest of file ignored"
                    )
                    return ds, end
                raise InvalidDicom(
                    f"{_tag_name(tag)}: value length {length} at offset {vpos} runs past the end of "
                    f"its {'file' if end == self.end else 'container'}"
                )
            if vr is None:
                vr = _DICT_VR.get(tag) or self.implicit_vr(tag, ctx)
            elif vr == "UN":
                vr = self.replace_un(tag, length, ctx)
            # fast paths for the common VRs; everything else goes through element()
            kind = _KIND.get(vr, 0)
            if kind == _K_STR:
                key = _KEY_CACHE.get(tag) or _key(tag)
                if length:
                    try:
                        value = _STR_CONVERTERS[vr](buf[vpos:vend].decode("latin-1"))
                    except DropElement as exc:
                        self.warnings.append(f"{_tag_name(tag)}: {exc}; element dropped")
                        pos = vend
                        continue
                    ds[key] = {"vr": vr} if value is None else {"vr": vr, "Value": value}
                else:
                    value = None
                    ds[key] = {"vr": vr}
                if tag == SPECIFIC_CHARACTER_SET_TAG:
                    self.track(tag, value, ctx)
                elif group & 1 and 0x0010 <= elem < 0x0100:
                    record_creator(ctx, tag, value)
            elif kind == _K_NUM and length == NUMBER_SIZE[vr]:
                # single numeric value: the overwhelmingly common case
                value = [self.u_single[vr](buf, vpos)[0]]
                ds[_KEY_CACHE.get(tag) or _key(tag)] = {"vr": vr, "Value": value}
                if tag in _TRACKED:
                    self.track(tag, value, ctx)
            elif kind == _K_TEXT and ctx.charset.ascii_ok:
                raw = buf[vpos:vend]
                if raw.isascii() and 27 not in raw:
                    key = _KEY_CACHE.get(tag) or _key(tag)
                    values: list[Any] | None
                    if vr in TEXT_SINGLE:
                        text = raw.decode("ascii").rstrip("\0 ")
                        values = [text] if text else None
                    else:
                        values = [v.rstrip("\0 ") for v in raw.decode("ascii").split("\\")]
                        if len(values) == 1 and not values[0]:
                            values = None
                    ds[key] = {"vr": vr} if values is None else {"vr": vr, "Value": values}
                    if group & 1 and 0x0010 <= elem < 0x0100:
                        record_creator(ctx, tag, values)
                else:
                    self.element(tag, vr, vpos, length, ctx, ds, prefix, top)
            elif kind == _K_SQ:
                key = _key(tag)
                items, _ = self.read_sequence(vpos, vend, False, implicit, ctx, prefix + key, tag)
                ds[key] = {"vr": "SQ", "Value": items}
            else:
                self.element(tag, vr, vpos, length, ctx, ds, prefix, top)
            pos = vend
        if delimited:
            raise InvalidDicom(f"item without item delimiter before offset {end}")
        return ds, pos

    def read_undefined(
        self,
        tag: int,
        vr: str | None,
        vpos: int,
        end: int,
        implicit: bool,
        ctx: DataSetContext,
        ds: JsonDataset,
        prefix: str,
        top: bool,
    ) -> int:
        """An undefined-length element: a sequence, or encapsulated (fragmented) data."""
        if vr == "UN":
            # PS3.5 6.2.2: UN of undefined length is an implicit VR LE sequence - except Pixel Data,
            # which is then encapsulated pixel data (pydicom would try to read it as a sequence)
            vr = "OB" if tag == PIXEL_DATA_TAG else "SQ"
        if vr is None:
            vr = _dict_vr(tag)
            if vr is None and vpos + 8 <= end and self.u_impl(self.buf, vpos)[0:2] == (0xFFFE, 0xE000):
                vr = "SQ"
        if vr == "SQ":
            key = _key(tag)
            items, after = self.read_sequence(vpos, end, True, implicit, ctx, prefix + key, tag)
            ds[key] = {"vr": "SQ", "Value": items}
            return after
        fragments = read_fragments(self.u_impl, self.buf, vpos, end)
        if fragments is None:
            # not made of items: scan for the delimiter like pydicom does
            delim = struct.pack(self.e + "HH", 0xFFFE, 0xE0DD)
            idx = self.buf.find(delim, vpos, end)
            if idx < 0:
                raise InvalidDicom(f"{_tag_name(tag)}: undefined length value without sequence delimiter")
            length = idx - vpos
            after = idx + 8
            if after > end:
                raise InvalidDicom(f"{_tag_name(tag)}: truncated sequence delimiter")
        else:
            frags, after = fragments
            length = after - 8 - vpos
            if top and tag == PIXEL_DATA_TAG:
                self.pixel = (tag, vpos, length, frags)
        if vr is None:
            vr = self.implicit_vr(tag, ctx)
        if tag == PIXEL_DATA_TAG and vr == "OB or OW":
            vr = "OB"  # encapsulated Pixel Data is OB (PS3.5 A.4)
        self.element(tag, vr, vpos, length, ctx, ds, prefix, top, undefined=True)
        return after

    def read_sequence(
        self, pos: int, end: int, delimited: bool, implicit: bool, ctx: DataSetContext, path: str, tag: int
    ) -> tuple[list[JsonDataset], int]:
        """Items of a sequence and the offset after it (after the delimiter when undefined length)."""
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise InvalidDicom(f"sequences nested deeper than {_MAX_DEPTH} levels")
        u = self.u_impl
        items: list[JsonDataset] = []
        while True:
            if pos >= end and not delimited:
                break
            if pos + 8 > end:
                raise InvalidDicom(f"{_tag_name(tag)}: truncated sequence at offset {pos}")
            group, elem, length = u(self.buf, pos)
            itag = group << 16 | elem
            if itag == SEQUENCE_DELIMITATION_TAG:
                pos += 8
                break
            if itag != ITEM_TAG:
                raise InvalidDicom(
                    f"{_tag_name(tag)}: expected an item, found ({group:04X},{elem:04X}) at offset {pos}"
                )
            item_ctx = DataSetContext(ctx, ctx.charset, implicit)
            prefix = f"{path}/{len(items)}/"
            if length == UNDEFINED_LENGTH:
                item, pos = self.read_dataset(pos + 8, end, implicit, item_ctx, prefix, True, False)
            else:
                iend = pos + 8 + length
                if iend > end:
                    raise InvalidDicom(f"{_tag_name(tag)}: item length {length} at offset {pos} overruns")
                item, pos = self.read_dataset(pos + 8, iend, implicit, item_ctx, prefix, False, False)
            items.append(item)
        self.depth -= 1
        return items, pos

    # -- VR resolution --------------------------------------------------------------------------

    def implicit_vr(self, tag: int, ctx: DataSetContext) -> str:
        vr = _dict_vr(tag)
        if vr is not None:
            return vr
        if (tag >> 16) & 1:
            return self.private_vr(tag, ctx)
        if tag & 0xFFFF == 0:
            return "UL"  # group length
        return "UN"

    def private_vr(self, tag: int, ctx: DataSetContext) -> str:
        elem = tag & 0xFFFF
        if 0x0010 <= elem < 0x0100:
            return "LO"  # private creator
        if elem & 0xFF00:
            creator = ctx.creators.get((tag & 0xFFFF0000) | (elem >> 8))
            if creator:
                try:
                    return private_dictionary_VR(tag, creator)
                except KeyError:
                    pass
        return "UN"

    def replace_un(self, tag: int, length: int, ctx: DataSetContext) -> str:
        # pydicom's replace_un_with_known_vr: an explicit UN of a known tag is read with its real VR
        if (tag >> 16) & 1:
            return self.private_vr(tag, ctx)
        if length < 0xFFFF:
            vr = _dict_vr(tag)
            if vr is not None:
                return vr
        return "UN"

    # -- values ---------------------------------------------------------------------------------

    def element(
        self,
        tag: int,
        vr: str,
        vpos: int,
        length: int,
        ctx: DataSetContext,
        ds: JsonDataset,
        prefix: str,
        top: bool,
        undefined: bool = False,
    ) -> None:
        key = _key(tag)
        try:
            if vr in BINARY_VRS:
                ds[key] = self.binary(tag, vr, vpos, length, prefix + key, top)
                if top:
                    if tag in PIXEL_DATA_TAGS and self.pixel is None and length:
                        self.pixel = (tag, vpos, length, None)
                    elif tag == EXTENDED_OFFSET_TABLE_TAG:
                        self.eot = (vpos, length)
                if tag == PIXEL_DATA_TAG:
                    ctx.has_pixel_data = True
                return
            if vr in AMBIGUOUS_VRS:
                if tag == PIXEL_DATA_TAG:
                    ctx.has_pixel_data = True
                self.ambiguous(tag, vr, vpos, length, ctx, ds, key, prefix, top, undefined)
                return
            conv = _STR_CONVERTERS.get(vr)
            if conv is not None:
                value = conv(self.buf[vpos : vpos + length].decode("latin-1")) if length else None
            elif vr in NUMBER_FORMATS:
                value = numbers(vr, self.buf, vpos, length, self.e)
                if value and vr == "SS" and tag in LUT_DESCRIPTOR_TAGS and len(value) > 1 and value[0] < 0:
                    value[0] += 65536  # pydicom's LUT Descriptor fix for explicit SS
            elif vr in TEXT_CONVERTERS:
                if length:
                    value, msgs = TEXT_CONVERTERS[vr](self.buf[vpos : vpos + length], ctx.charset)
                    for m in msgs:
                        self.warnings.append(f"{_tag_name(tag)}: {m}")
                else:
                    value = None
            elif vr == "AT":
                value = attribute_tags(self.buf, vpos, length, self.e) if length else None
            else:
                raise DropElement(f"unknown VR {vr!r}")
        except DropElement as exc:
            self.warnings.append(f"{_tag_name(tag)}: {exc}; element dropped")
            return
        ds[key] = {"vr": vr} if value is None else {"vr": vr, "Value": value}
        if tag in _TRACKED:
            self.track(tag, value, ctx)
        elif (tag >> 16) & 1 and 0x0010 <= (tag & 0xFFFF) < 0x0100:
            record_creator(ctx, tag, value)

    def track(self, tag: int, value: list[Any] | None, ctx: DataSetContext) -> None:
        """Remember the attributes later elements depend on (charset, ambiguous VR resolution)."""
        if tag == SPECIFIC_CHARACTER_SET_TAG:
            values = tuple(v for v in value) if value else ()
            cs = resolve_charset(values)
            for w in cs.warnings:
                if w not in self.warnings:
                    self.warnings.append(w)
            ctx.charset = cs
        elif tag == PIXEL_REPRESENTATION_TAG:
            ctx.has_pr = True
            ctx.pr = value[0] if value else None
        elif tag == BITS_ALLOCATED_TAG:
            ctx.bits_allocated = value[0] if value else None
        elif tag == LUT_DESCRIPTOR_TAG:
            ctx.lut_desc0 = value[0] if value else None
        elif tag == WAVEFORM_BITS_ALLOCATED_TAG:
            ctx.wba = value[0] if value else None

    def binary(self, tag: int, vr: str, vpos: int, length: int, path: str, top: bool) -> JsonElement:
        if not length:
            return {"vr": vr}
        if not self.inline_bulk and (length > self.threshold or tag in PIXEL_DATA_TAGS):
            self.bulk[path] = ByteRange(vpos, length)
            return {"vr": vr, "BulkDataURI": "bulkdata/" + path}
        return {"vr": vr, "InlineBinary": base64.b64encode(self.buf[vpos : vpos + length]).decode("ascii")}

    def ambiguous(
        self,
        tag: int,
        vr: str,
        vpos: int,
        length: int,
        ctx: DataSetContext,
        ds: JsonDataset,
        key: str,
        prefix: str,
        top: bool,
        undefined: bool,
    ) -> None:
        """An element of ambiguous VR (only seen in implicit VR or for explicit UN), resolved like
        pydicom: now, or once the whole data set tree is read (a fixup)."""
        real = resolve_now(tag, vr, ctx, undefined)
        if real is None:
            if vr == "US or SS":
                if tag == LUT_DESCRIPTOR_TAG and length >= 2:
                    ctx.lut_desc0 = self.u_h(self.buf, vpos)[0]  # LUT Data's VR depends on it (== 1)
                ds[key] = {"vr": "US"}  # holds the element's place in the data set until resolved
            else:
                ds[key] = {"vr": "OB"}
            self.fixups.append(_Fixup(ctx, ds, key, tag, vr, vpos, length, prefix + key))
        elif real == "US":
            value = numbers("US", self.buf, vpos, length, self.e)
            ds[key] = {"vr": "US"} if not value else {"vr": "US", "Value": value}
        else:
            ds[key] = self.binary(tag, real, vpos, length, prefix + key, top)
            if tag == PIXEL_DATA_TAG and top and self.pixel is None and length:
                self.pixel = (tag, vpos, length, None)

    def resolve_fixups(self) -> None:
        for fx in self.fixups:
            try:
                real = resolve_later(fx.vr, fx.ctx)
                if fx.vr == "US or SS":
                    value = numbers(real, self.buf, fx.vpos, fx.length, self.e)
                    fx.ds[fx.key] = {"vr": real} if not value else {"vr": real, "Value": value}
                else:
                    fx.ds[fx.key] = self.binary(fx.tag, real, fx.vpos, fx.length, fx.path, False)
            except DropElement as exc:
                del fx.ds[fx.key]
                self.warnings.append(f"{_tag_name(fx.tag)}: {exc}; element dropped")


def _parse(
    buf: Any, size: int, bulk_threshold: int, temp_dir: str | None, inline_deflated: bool
) -> ParsedInstance:
    if size < 132 or buf[128:132] != b"DICM":
        raise InvalidDicom("not a DICOM Part 10 file: no 'DICM' prefix after the 128-byte preamble")
    try:
        return _parse_checked(buf, size, bulk_threshold, temp_dir, inline_deflated)
    except InvalidDicom:
        raise
    except RecursionError:
        raise InvalidDicom("sequences nested too deeply") from None
    except (struct.error, ValueError, IndexError, KeyError, TypeError, OverflowError, zlib.error) as exc:
        raise InvalidDicom(f"malformed DICOM data: {type(exc).__name__}: {exc}") from None


def _parse_checked(
    buf: Any, size: int, bulk_threshold: int, temp_dir: str | None, inline_deflated: bool
) -> ParsedInstance:
    # -- file meta: group 0002, explicit VR LE (the heuristic also copes with implicit meta) --------
    meta_parser = _Parser(buf, size, True, bulk_threshold, False)
    pos = 132
    data_set = meta_end(buf, size)
    meta_ctx = DataSetContext(None, DEFAULT_CHARSET, False)
    meta, _ = meta_parser.read_dataset(pos, data_set, False, meta_ctx, "", False, True)
    ts_el = meta.get(TRANSFER_SYNTAX_UID, {}).get("Value")
    ts = ts_el[0] if ts_el and isinstance(ts_el[0], str) else ""
    warnings = [w for w in meta_parser.warnings if not w.startswith("Data set is encoded")]

    # -- data set encoding ------------------------------------------------------------------------
    implicit = False
    little = True
    deflated = False
    if data_set >= size:
        pass
    elif not ts:
        # pydicom's guess: a valid VR after the first tag means explicit; a huge group means BE
        if data_set + 6 <= size:
            group = struct.unpack_from("<H", buf, data_set)[0]
            vrb = bytes(buf[data_set + 4 : data_set + 6])
            if vrb in VR_FROM_BYTES:
                implicit = False
                little = group < 1024
            else:
                implicit = True
        warnings.append("File Meta Information has no Transfer Syntax UID; encoding guessed")
    elif ts == IMPLICIT_VR_LITTLE_ENDIAN:
        implicit = True
    elif ts == EXPLICIT_VR_BIG_ENDIAN:
        little = False
    elif ts == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        deflated = True

    if not deflated:
        parser = _Parser(buf, size, little, bulk_threshold, False)
        return _parse_dataset(parser, data_set, size, implicit, warnings, ts, data_set, size)
    with InflatedDataSet(buf, data_set, size, temp_dir) as (inflated, length, complete):
        if not complete:
            warnings.append("Deflated data set is truncated")
        parser = _Parser(inflated, length, True, bulk_threshold, inline_deflated)
        # nothing of the map outlives the parse: values are copied out, ranges are numbers
        return _parse_dataset(parser, 0, length, implicit, warnings, ts, data_set, size)


def _parse_dataset(
    parser: _Parser,
    start: int,
    end: int,
    implicit: bool,
    warnings: list[str],
    ts: str,
    dataset_offset: int,
    size: int,
) -> ParsedInstance:
    parser.warnings = warnings
    ctx = DataSetContext(None, DEFAULT_CHARSET, implicit)
    ds, _ = parser.read_dataset(start, end, implicit, ctx, "", False, True)
    parser.resolve_fixups()
    frames, nframes = pixel_frames(
        ds, parser.pixel, parser.eot, parser.buf, parser.e, parser.inline_bulk, parser.warnings
    )

    return ParsedInstance(
        transfer_syntax_uid=ts,
        study_instance_uid=_first_str(ds, STUDY_INSTANCE_UID),
        series_instance_uid=_first_str(ds, SERIES_INSTANCE_UID),
        sop_instance_uid=_first_str(ds, SOP_INSTANCE_UID),
        sop_class_uid=_first_str(ds, SOP_CLASS_UID),
        dataset=ds,
        bulk=parser.bulk,
        frames=frames,
        number_of_frames=nframes,
        warnings=parser.warnings,
        dataset_offset=dataset_offset,
        file_length=size,
    )


def _first_str(ds: JsonDataset, key: str) -> str:
    el = ds.get(key)
    if not el:
        return ""
    v = el.get("Value")
    return v[0] if v and isinstance(v[0], str) else ""


def parse_bytes(
    data: bytes | memoryview,
    *,
    bulk_threshold: int = 1024,
    temp_dir: str | None = None,
    inline_deflated: bool = False,
) -> ParsedInstance:
    """Parse a DICOM Part 10 file held in memory (byte ranges are offsets into `data`). A deflated data
    set is inflated to a temporary file in `temp_dir` (None: the system's temporary directory)."""
    buf = data if isinstance(data, bytes) else bytes(data)
    return _parse(buf, len(buf), bulk_threshold, temp_dir, inline_deflated)


def parse_file(
    path: str | os.PathLike[str], *, bulk_threshold: int = 1024, inline_deflated: bool = False
) -> ParsedInstance:
    """Parse a DICOM Part 10 file; the file is mmap'ed and large values are skipped, not read. A deflated
    data set is inflated to a temporary file in the file's directory.

    `inline_deflated`: keep every binary value of a deflated data set inline and record no ranges, as
    dicomd stored deflated instances before it recorded ranges into the inflated data set (to rebuild
    their metadata as it was)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 132:
            raise InvalidDicom("not a DICOM Part 10 file: shorter than preamble + 'DICM'")
        temp_dir = os.path.dirname(os.path.abspath(path))
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return _parse(mm, size, bulk_threshold, temp_dir, inline_deflated)
