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
"""

from __future__ import annotations

import base64
import itertools
import math
import mmap
import os
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator
from typing import IO, Any

from pydicom.datadict import DicomDictionary, dictionary_VR, private_dictionary_VR
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, STANDARD_VR

from .charset import (
    DEFAULT_CHARSET,
    Charset,
    decode_person_names,
    decode_text_single,
    decode_text_values,
    resolve_charset,
)
from .model import ByteRange, InvalidDicom, JsonDataset, JsonElement, NativeFrames, ParsedInstance

__all__ = ["MAX_INFLATED", "InflatedReader", "may_be_deflated", "parse_bytes", "parse_file"]

# Deflated data sets are inflated to a temporary file; refuse anything bigger (zip bombs fill disks).
MAX_INFLATED = 512 * 1024 * 1024
# The inflate reads and writes pieces of this size: memory stays flat whatever the ratio (1:1000 for zeros)
_INFLATE_PIECE = 1 << 20
# Sequences nested deeper than this are malicious, not clinical.
_MAX_DEPTH = 64

_ITEM = 0xFFFEE000
_ITEM_DELIM = 0xFFFEE00D
_SEQ_DELIM = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010
_PIXEL_TAGS = frozenset((0x7FE00008, 0x7FE00009, 0x7FE00010))
PIXEL_TAGS = _PIXEL_TAGS  # always bulk data, whatever the threshold
_CHARSET_TAG = 0x00080005

_DEFLATED_TS = "1.2.840.10008.1.2.1.99"
_DEFLATED_TS_BYTES = _DEFLATED_TS.encode()
_IMPLICIT_TS = "1.2.840.10008.1.2"
_EXPLICIT_LE_TS = "1.2.840.10008.1.2.1"
_EXPLICIT_BE_TS = "1.2.840.10008.1.2.2"

_VR_FROM_BYTES: dict[bytes, str] = {str(vr).encode(): str(vr) for vr in STANDARD_VR}
_LONG_VRS = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)
_BINARY_VRS = frozenset(("OB", "OD", "OF", "OL", "OV", "OW", "UN"))
_AMBIGUOUS_VRS = frozenset(("US or SS", "US or SS or OW", "US or OW", "OB or OW"))

# tag -> VR of the public dictionary, built once (repeating groups are resolved on demand)
_DICT_VR: dict[int, str] = {tag: entry[0] for tag, entry in DicomDictionary.items()}
_VR_CACHE: dict[int, str | None] = {}
_KEY_CACHE: dict[int, str] = {}
_CACHE_LIMIT = 200_000

# pydicom's tables for ambiguous VR correction (filewriter._correct_ambiguous_vr_element)
_OB_OW_WAVEFORM_TAGS = frozenset((0x54000110, 0x54000112, 0x5400100A, 0x54001010))
_LUT_DESCRIPTOR_TAGS = frozenset((0x00281101, 0x00281102, 0x00281103, 0x00283002))
_LUT_DATA = 0x00283006
# attributes later elements depend on: charset, Pixel Representation, Bits Allocated, LUT Descriptor,
# Waveform Bits Allocated
_TRACKED = frozenset((0x00080005, 0x00280103, 0x00280100, 0x00283002, 0x54001004))

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
    _fastscan.set_stop_tags(sorted(_TRACKED | {_CHARSET_TAG}))
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


def _record_creator(ctx: _Ctx, tag: int, value: list[Any] | None) -> None:
    """Remember a private creator (odd group, element 0x0010-0x00FF) of a single text value: the
    implicit VRs of its block's elements (and explicit UN) are looked up by it, like pydicom does."""
    if value and len(value) == 1 and isinstance(value[0], str):
        ctx.creators[tag & 0xFFFF00FF] = value[0]  # (group << 16) | block


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


class _Drop(Exception):
    """An element value that cannot be represented: drop it and warn (message says why)."""


class _Ctx:
    """Per data set state: charset, encoding, and what ambiguous-VR resolution needs."""

    __slots__ = (
        "bits_allocated",
        "charset",
        "creators",
        "has_pixel_data",
        "has_pr",
        "implicit",
        "lut_desc0",
        "parent",
        "pr",
        "wba",
    )

    def __init__(self, parent: _Ctx | None, charset: Charset, implicit: bool) -> None:
        self.parent = parent
        self.charset = charset
        self.implicit = implicit
        self.pr: int | None = None  # Pixel Representation value in this data set (converted)
        self.has_pr = False
        self.has_pixel_data = False
        self.bits_allocated: int | None = None
        self.wba: int | None = None  # Waveform Bits Allocated
        self.lut_desc0: int | None = None
        self.creators: dict[int, str] = {}  # (group << 16 | block) -> private creator


class _Fixup:
    """An ambiguous-VR element resolved once the whole data set tree is known."""

    __slots__ = ("ctx", "ds", "key", "length", "path", "tag", "vpos", "vr")

    def __init__(
        self, ctx: _Ctx, ds: JsonDataset, key: str, tag: int, vr: str, vpos: int, length: int, path: str
    ) -> None:
        self.ctx = ctx
        self.ds = ds
        self.key = key
        self.tag = tag
        self.vr = vr
        self.vpos = vpos
        self.length = length
        self.path = path


# ---------------------------------------------------------------------------------------------------
# value converters for VRs whose value is a string of the default repertoire (decoded as latin-1
# like pydicom's default "iso8859"). Each returns the JSON "Value" list, or None when empty.


def _multi_string(s: str) -> list[Any] | None:
    # pydicom's multi_string: strip trailing padding of the whole value, then split
    s = s.rstrip(" \x00")
    if not s:
        return None
    return s.split("\\")


def _ae(s: str) -> list[Any] | None:
    values = [v.strip() for v in s.split("\\")]
    if len(values) == 1 and not values[0]:
        return None
    return values


def _ui(s: str) -> list[Any] | None:
    s = s.rstrip("\0 ").rstrip(" \x00")
    if not s:
        return None
    values = [v.strip() for v in s.split("\\")]
    for v in values:
        # leading zeros and the like are tolerated (common in the wild); garbage is not
        if len(v) > 64 or v.strip("0123456789."):
            raise _Drop(f"invalid UI value {v[:80]!r}")
    return values


def _ur(s: str) -> list[Any] | None:
    s = s.rstrip()
    if not s:
        return None
    return s.split("\\")  # pydicom's value setter splits UR on backslashes


def _is(s: str) -> list[Any] | None:
    if "\\" not in s:
        try:
            return [int(s)]  # int() ignores surrounding whitespace, as pydicom's IS does
        except ValueError:
            pass
    s = s.rstrip(" \x00")
    if not s.strip():
        return None
    out: list[Any] = []
    for v in s.split("\\"):
        if not v.strip():
            out.append(None)
            continue
        try:
            out.append(int(v))
        except ValueError:
            # pydicom accepts float strings ("1.0", "1e3") and truncates non-integers
            try:
                out.append(int(float(v)))
            except (ValueError, OverflowError):
                raise _Drop(f"invalid IS value {v!r}") from None
    return out


def _ds(s: str) -> list[Any] | None:
    if "\\" not in s:
        try:
            f = float(s)  # float() ignores surrounding whitespace, as pydicom's DS does
            if f - f == 0.0:  # finite
                return [f]
        except ValueError:
            pass
    s = s.strip().rstrip(" \x00")
    if not s:
        return None
    out: list[Any] = []
    for v in s.split("\\"):
        if not v.strip():
            out.append(None)
            continue
        try:
            f = float(v)
        except ValueError:
            raise _Drop(f"invalid DS value {v!r}") from None
        if not math.isfinite(f):
            raise _Drop(f"non-finite DS value {v!r}")
        out.append(f)
    return out


_STR_CONVERTERS: dict[str, Callable[[str], list[Any] | None]] = {
    "AS": _multi_string,
    "CS": _multi_string,
    "DA": _multi_string,
    "DT": _multi_string,
    "TM": _multi_string,
    "AE": _ae,
    "UI": _ui,
    "UR": _ur,
    "IS": _is,
    "DS": _ds,
}

_NUMBER_FORMATS: dict[str, tuple[str, int]] = {
    "US": ("H", 2),
    "SS": ("h", 2),
    "UL": ("L", 4),
    "SL": ("l", 4),
    "FL": ("f", 4),
    "FD": ("d", 8),
    "SV": ("q", 8),
    "UV": ("Q", 8),
}
_NUMBER_SIZE = {vr: size for vr, (_, size) in _NUMBER_FORMATS.items()}
_TEXT_MULTI = frozenset(("SH", "LO", "UC"))
_TEXT_SINGLE = frozenset(("ST", "LT", "UT"))
# dispatch classes for the hot loop
_K_STR, _K_NUM, _K_TEXT, _K_SQ = 1, 2, 3, 4
_KIND: dict[str, int] = {
    **dict.fromkeys(_STR_CONVERTERS, _K_STR),
    **dict.fromkeys(_NUMBER_FORMATS, _K_NUM),
    **dict.fromkeys(_TEXT_MULTI | _TEXT_SINGLE, _K_TEXT),
    "SQ": _K_SQ,
}


_Unpack = Callable[..., tuple[Any, ...]]


def _unpackers(e: str) -> tuple[_Unpack, _Unpack, _Unpack, _Unpack, dict[str, _Unpack]]:
    return (
        struct.Struct(e + "HH2sH").unpack_from,  # explicit VR header
        struct.Struct(e + "HHL").unpack_from,  # implicit VR header, item headers
        struct.Struct(e + "L").unpack_from,
        struct.Struct(e + "H").unpack_from,
        {vr: struct.Struct(e + code).unpack_from for vr, (code, _) in _NUMBER_FORMATS.items()},
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
        # again up to the same element, once per level (a hostile 64-level chain cost 45x the Python parse)
        self.scan_seq: set[int] = set()
        self.fixups: list[_Fixup] = []
        self.depth = 0
        # top-level pixel data: (tag, value offset, value length, fragments or None if native)
        self.pixel: tuple[int, int, int, list[tuple[int, int]] | None] | None = None
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
        self, pos: int, end: int, implicit: bool, ctx: _Ctx, prefix: str, delimited: bool, top: bool
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
                    if vr in _LONG_VRS:
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
            if tag == _ITEM_DELIM:
                if not delimited:
                    # pydicom ends the data set here too
                    self.warnings.append(
                        f"Unexpected item delimiter at offset {pos}; rest of data set ignored"
                    )
                    return ds, (end if top else pos + 8)
                return ds, pos + 8
            if tag in (_SEQ_DELIM, _ITEM):
                raise InvalidDicom(
                    f"unexpected {'sequence delimiter' if tag == _SEQ_DELIM else 'item'} at offset {pos}"
                )
            if length == _UNDEFINED:
                pos = self.read_undefined(tag, vr, vpos, end, implicit, ctx, ds, prefix, top)
                continue
            vend = vpos + length
            if vend > end:
                if top and end == self.end and tag not in _PIXEL_TAGS:
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
                    except _Drop as exc:
                        self.warnings.append(f"{_tag_name(tag)}: {exc}; element dropped")
                        pos = vend
                        continue
                    ds[key] = {"vr": vr} if value is None else {"vr": vr, "Value": value}
                else:
                    value = None
                    ds[key] = {"vr": vr}
                if tag == _CHARSET_TAG:
                    self.track(tag, value, ctx)
                elif group & 1 and 0x0010 <= elem < 0x0100:
                    _record_creator(ctx, tag, value)
            elif kind == _K_NUM and length == _NUMBER_SIZE[vr]:
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
                    if vr in _TEXT_SINGLE:
                        text = raw.decode("ascii").rstrip("\0 ")
                        values = [text] if text else None
                    else:
                        values = [v.rstrip("\0 ") for v in raw.decode("ascii").split("\\")]
                        if len(values) == 1 and not values[0]:
                            values = None
                    ds[key] = {"vr": vr} if values is None else {"vr": vr, "Value": values}
                    if group & 1 and 0x0010 <= elem < 0x0100:
                        _record_creator(ctx, tag, values)
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
        ctx: _Ctx,
        ds: JsonDataset,
        prefix: str,
        top: bool,
    ) -> int:
        """An undefined-length element: a sequence, or encapsulated (fragmented) data."""
        if vr == "UN":
            # PS3.5 6.2.2: UN of undefined length is an implicit VR LE sequence - except Pixel Data,
            # which is then encapsulated pixel data (pydicom would try to read it as a sequence)
            vr = "OB" if tag == _PIXEL_DATA else "SQ"
        if vr is None:
            vr = _dict_vr(tag)
            if vr is None and vpos + 8 <= end and self.u_impl(self.buf, vpos)[0:2] == (0xFFFE, 0xE000):
                vr = "SQ"
        if vr == "SQ":
            key = _key(tag)
            items, after = self.read_sequence(vpos, end, True, implicit, ctx, prefix + key, tag)
            ds[key] = {"vr": "SQ", "Value": items}
            return after
        fragments = self.read_fragments(vpos, end)
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
            if top and tag == _PIXEL_DATA:
                self.pixel = (tag, vpos, length, frags)
        if vr is None:
            vr = self.implicit_vr(tag, ctx)
        if tag == _PIXEL_DATA and vr == "OB or OW":
            vr = "OB"  # encapsulated Pixel Data is OB (PS3.5 A.4)
        self.element(tag, vr, vpos, length, ctx, ds, prefix, top, undefined=True)
        return after

    def read_fragments(self, pos: int, end: int) -> tuple[list[tuple[int, int]], int] | None:
        """Items of encapsulated data up to the sequence delimiter: [(value offset, length)], end."""
        u = self.u_impl
        frags: list[tuple[int, int]] = []
        while pos + 8 <= end:
            group, elem, length = u(self.buf, pos)
            tag = group << 16 | elem
            if tag == _SEQ_DELIM:
                return frags, pos + 8
            if tag != _ITEM or length == _UNDEFINED or pos + 8 + length > end:
                return None
            frags.append((pos + 8, length))
            pos += 8 + length
        return None

    def read_sequence(
        self, pos: int, end: int, delimited: bool, implicit: bool, ctx: _Ctx, path: str, tag: int
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
            if itag == _SEQ_DELIM:
                pos += 8
                break
            if itag != _ITEM:
                raise InvalidDicom(
                    f"{_tag_name(tag)}: expected an item, found ({group:04X},{elem:04X}) at offset {pos}"
                )
            item_ctx = _Ctx(ctx, ctx.charset, implicit)
            prefix = f"{path}/{len(items)}/"
            if length == _UNDEFINED:
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

    def implicit_vr(self, tag: int, ctx: _Ctx) -> str:
        vr = _dict_vr(tag)
        if vr is not None:
            return vr
        if (tag >> 16) & 1:
            return self.private_vr(tag, ctx)
        if tag & 0xFFFF == 0:
            return "UL"  # group length
        return "UN"

    def private_vr(self, tag: int, ctx: _Ctx) -> str:
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

    def replace_un(self, tag: int, length: int, ctx: _Ctx) -> str:
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
        ctx: _Ctx,
        ds: JsonDataset,
        prefix: str,
        top: bool,
        undefined: bool = False,
    ) -> None:
        key = _key(tag)
        try:
            if vr in _BINARY_VRS:
                ds[key] = self.binary(tag, vr, vpos, length, prefix + key, top)
                if top:
                    if tag in _PIXEL_TAGS and self.pixel is None and length:
                        self.pixel = (tag, vpos, length, None)
                    elif tag == 0x7FE00001:
                        self.eot = (vpos, length)
                if tag == _PIXEL_DATA:
                    ctx.has_pixel_data = True
                return
            if vr in _AMBIGUOUS_VRS:
                if tag == _PIXEL_DATA:
                    ctx.has_pixel_data = True
                self.ambiguous(tag, vr, vpos, length, ctx, ds, key, prefix, top, undefined)
                return
            conv = _STR_CONVERTERS.get(vr)
            if conv is not None:
                value = conv(self.buf[vpos : vpos + length].decode("latin-1")) if length else None
            elif vr in _NUMBER_FORMATS:
                value = self.numbers(vr, vpos, length)
                if value and vr == "SS" and tag in _LUT_DESCRIPTOR_TAGS and len(value) > 1 and value[0] < 0:
                    value[0] += 65536  # pydicom's LUT Descriptor fix for explicit SS
            elif vr in _TEXT_MULTI:
                value = self.text_multi(tag, vpos, length, ctx) if length else None
            elif vr in _TEXT_SINGLE:
                value = self.text_single(tag, vpos, length, ctx) if length else None
            elif vr == "PN":
                value = self.person_name(tag, vpos, length, ctx) if length else None
            elif vr == "AT":
                value = self.at(vpos, length) if length else None
            else:
                raise _Drop(f"unknown VR {vr!r}")
        except _Drop as exc:
            self.warnings.append(f"{_tag_name(tag)}: {exc}; element dropped")
            return
        ds[key] = {"vr": vr} if value is None else {"vr": vr, "Value": value}
        if tag in _TRACKED:
            self.track(tag, value, ctx)
        elif (tag >> 16) & 1 and 0x0010 <= (tag & 0xFFFF) < 0x0100:
            _record_creator(ctx, tag, value)

    def track(self, tag: int, value: list[Any] | None, ctx: _Ctx) -> None:
        """Remember the attributes later elements depend on (charset, ambiguous VR resolution)."""
        if tag == _CHARSET_TAG:
            values = tuple(v for v in value) if value else ()
            cs = resolve_charset(values)
            for w in cs.warnings:
                if w not in self.warnings:
                    self.warnings.append(w)
            ctx.charset = cs
        elif tag == 0x00280103:
            ctx.has_pr = True
            ctx.pr = value[0] if value else None
        elif tag == 0x00280100:
            ctx.bits_allocated = value[0] if value else None
        elif tag == 0x00283002:
            ctx.lut_desc0 = value[0] if value else None
        elif tag == 0x54001004:
            ctx.wba = value[0] if value else None

    def numbers(self, vr: str, vpos: int, length: int) -> list[Any] | None:
        if not length:
            return None
        code, size = _NUMBER_FORMATS[vr]
        if length % size:
            raise _Drop(f"value length {length} is not a multiple of {size} for VR {vr}")
        return list(struct.unpack_from(f"{self.e}{length // size}{code}", self.buf, vpos))

    def at(self, vpos: int, length: int) -> list[Any]:
        if length < 4:
            raise _Drop(f"AT value of {length} bytes")
        n = length // 4
        vals = struct.unpack_from(f"{self.e}{2 * n}H", self.buf, vpos)
        return [f"{vals[i]:04X}{vals[i + 1]:04X}" for i in range(0, 2 * n, 2)]

    def _raw_text(self, vpos: int, length: int) -> bytes:
        return self.buf[vpos : vpos + length]  # type: ignore[no-any-return]

    def _charset_warnings(self, tag: int, msgs: list[str]) -> None:
        for m in msgs:
            self.warnings.append(f"{_tag_name(tag)}: {m}")

    def text_multi(self, tag: int, vpos: int, length: int, ctx: _Ctx) -> list[Any] | None:
        raw = self._raw_text(vpos, length)
        cs = ctx.charset
        if cs.ascii_ok and raw.isascii() and b"\x1b" not in raw:
            values = [v.rstrip("\0 ") for v in raw.decode("ascii").split("\\")]
        else:
            values, msgs = decode_text_values(raw, cs)
            self._charset_warnings(tag, msgs)
        if len(values) == 1 and not values[0]:
            return None
        return values

    def text_single(self, tag: int, vpos: int, length: int, ctx: _Ctx) -> list[Any] | None:
        raw = self._raw_text(vpos, length)
        cs = ctx.charset
        if cs.ascii_ok and raw.isascii() and b"\x1b" not in raw:
            text = raw.decode("ascii").rstrip("\0 ")
        else:
            text, msgs = decode_text_single(raw, cs)
            self._charset_warnings(tag, msgs)
        return [text] if text else None

    def person_name(self, tag: int, vpos: int, length: int, ctx: _Ctx) -> list[Any] | None:
        raw = self._raw_text(vpos, length)
        cs = ctx.charset
        comps_list: list[Any]
        if cs.ascii_ok and raw.isascii() and b"\x1b" not in raw:
            comps_list = []
            for v in raw.rstrip(b"\x00 ").decode("ascii").split("\\"):
                comps = v.split("=")
                while comps and not comps[-1]:
                    comps.pop()
                comps_list.append(comps)
        else:
            comps_list, msgs = decode_person_names(raw, cs)
            self._charset_warnings(tag, msgs)
        if len(comps_list) == 1 and not comps_list[0]:
            return None
        out: list[Any] = []
        for c in comps_list:
            if not c:
                out.append(None)
                continue
            d = {"Alphabetic": c[0]}
            if len(c) > 1:
                d["Ideographic"] = c[1]
                if len(c) > 2:
                    d["Phonetic"] = c[2]
            out.append(d)
        return out

    def binary(self, tag: int, vr: str, vpos: int, length: int, path: str, top: bool) -> JsonElement:
        if not length:
            return {"vr": vr}
        if not self.inline_bulk and (length > self.threshold or tag in _PIXEL_TAGS):
            self.bulk[path] = ByteRange(vpos, length)
            return {"vr": vr, "BulkDataURI": "bulkdata/" + path}
        return {"vr": vr, "InlineBinary": base64.b64encode(self.buf[vpos : vpos + length]).decode("ascii")}

    def ambiguous(
        self,
        tag: int,
        vr: str,
        vpos: int,
        length: int,
        ctx: _Ctx,
        ds: JsonDataset,
        key: str,
        prefix: str,
        top: bool,
        undefined: bool,
    ) -> None:
        """Resolve ambiguous VRs (only seen in implicit VR or for explicit UN) like pydicom."""
        if tag == _PIXEL_DATA:
            if undefined:
                real = "OB"
            elif ctx.implicit:
                real = "OW"
            elif ctx.bits_allocated is None:
                raise _Drop("cannot resolve 'OB or OW' without Bits Allocated")
            else:
                real = "OW" if ctx.bits_allocated > 8 else "OB"
            ds[key] = self.binary(tag, real, vpos, length, prefix + key, top)
            if top and self.pixel is None and length:
                self.pixel = (tag, vpos, length, None)
            return
        if (tag >> 16) & 0xFF01 == 0x6000 and tag & 0xFFFF == 0x3000:
            ds[key] = self.binary(tag, "OW", vpos, length, prefix + key, top)
            return
        if tag == _LUT_DATA:
            if ctx.lut_desc0 == 1:
                value = self.numbers("US", vpos, length)
                ds[key] = {"vr": "US"} if not value else {"vr": "US", "Value": value}
            elif ctx.lut_desc0 is None and ctx.implicit:
                raise _Drop("cannot resolve 'US or OW' without LUT Descriptor")
            else:
                ds[key] = self.binary(tag, "OW", vpos, length, prefix + key, top)
            return
        if vr == "US or SS":
            if tag == 0x00283002 and length >= 2:
                ctx.lut_desc0 = self.u_h(self.buf, vpos)[0]  # LUT Data's VR depends on it (== 1)
            # depends on Pixel Representation, possibly of an ancestor parsed later: resolve at the end
            ds[key] = {"vr": "US"}
            self.fixups.append(_Fixup(ctx, ds, key, tag, vr, vpos, length, prefix + key))
            return
        if tag in _OB_OW_WAVEFORM_TAGS and not ctx.implicit:
            ds[key] = {"vr": "OB"}
            self.fixups.append(_Fixup(ctx, ds, key, tag, vr, vpos, length, prefix + key))
            return
        # Implicit VR: OB/OW ambiguity is always OW (PS3.5 A.1)
        ds[key] = self.binary(tag, "OW", vpos, length, prefix + key, top)

    def resolve_fixups(self) -> None:
        for fx in self.fixups:
            try:
                if fx.vr == "US or SS":
                    self.resolve_us_ss(fx)
                else:
                    wba = fx.ctx.wba
                    if wba is None:
                        raise _Drop("cannot resolve 'OB or OW' without Waveform Bits Allocated")
                    real = "OW" if wba > 8 else "OB"
                    fx.ds[fx.key] = self.binary(fx.tag, real, fx.vpos, fx.length, fx.path, False)
            except _Drop as exc:
                del fx.ds[fx.key]
                self.warnings.append(f"{_tag_name(fx.tag)}: {exc}; element dropped")

    def resolve_us_ss(self, fx: _Fixup) -> None:
        pr: int | None = None
        c: _Ctx | None = fx.ctx
        while c is not None:
            if c.pr is not None:
                pr = c.pr
                break
            c = c.parent
        if pr is None:
            ctx = fx.ctx
            if not ctx.has_pr and not ctx.has_pixel_data:
                pr = 0
            elif not ctx.has_pr:
                raise _Drop("cannot resolve 'US or SS' without Pixel Representation")
            else:
                pr = 1
        vr = "US" if pr == 0 else "SS"
        value = self.numbers(vr, fx.vpos, fx.length)
        fx.ds[fx.key] = {"vr": vr} if not value else {"vr": vr, "Value": value}

    # -- frames ---------------------------------------------------------------------------------

    def frames(self, ds: JsonDataset) -> tuple[list[list[ByteRange]] | NativeFrames, int]:
        if self.pixel is None:
            nf = _first_int(ds, "00280008")
            has_pixels = any(k in ds for k in ("7FE00008", "7FE00009", "7FE00010"))
            return [], (max(nf or 1, 1) if has_pixels else 0)
        _, vpos, length, frags = self.pixel
        nframes = _first_int(ds, "00280008")
        if nframes is None or nframes < 1:
            nframes = 1
        if self.inline_bulk:
            return [], nframes
        if frags is None:
            return self.native_frames(ds, vpos, length, nframes), nframes
        return self.encapsulated_frames(frags, nframes), nframes

    def native_frames(
        self, ds: JsonDataset, vpos: int, length: int, nframes: int
    ) -> list[list[ByteRange]] | NativeFrames:
        rows = _first_int(ds, "00280010")
        cols = _first_int(ds, "00280011")
        spp = _first_int(ds, "00280002") or 1
        bits = _first_int(ds, "00280100")
        if not rows or not cols or not bits:
            self.warnings.append("Pixel Data without Rows/Columns/Bits Allocated: frames unknown")
            return []
        photometric = ds.get("00280004", {}).get("Value") or [""]
        if photometric[0] == "YBR_FULL_422" and spp == 3:
            # native YBR_FULL_422 stores two samples per pixel (PS3.3 C.7.6.3.1.2)
            spp = 2
        frame_bits = rows * cols * spp * bits
        if frame_bits <= 0:
            self.warnings.append("Pixel Data with a negative frame size: frames unknown")
            return []
        # frame i ends at byte ceil((i + 1) * frame_bits / 8): whole frames fit up to 8 * length bits
        count = min(nframes, 8 * length // frame_bits)
        if count < nframes:
            self.warnings.append(
                f"Pixel Data holds {length} bytes, too few for {nframes} frames of {frame_bits} bits"
            )
        return NativeFrames(vpos, frame_bits, count) if count else []

    def encapsulated_frames(self, frags: list[tuple[int, int]], nframes: int) -> list[list[ByteRange]]:
        if not frags:
            self.warnings.append("Encapsulated Pixel Data without items")
            return []
        bot_pos, bot_len = frags[0]
        data = frags[1:]
        if not data:
            self.warnings.append("Encapsulated Pixel Data without fragments")
            return []
        # offsets in the tables are relative to the first fragment's item tag
        first_item = data[0][0] - 8
        starts = {off - 8 - first_item: i for i, (off, _) in enumerate(data)}
        offsets: list[int] | None = None
        if self.eot is not None:
            epos, elen = self.eot
            if elen % 8 == 0 and elen:
                offsets = list(struct.unpack_from(f"{self.e}{elen // 8}Q", self.buf, epos))
        if offsets is None and bot_len >= 4 and bot_len % 4 == 0:
            offsets = list(struct.unpack_from(f"{self.e}{bot_len // 4}L", self.buf, bot_pos))
        if offsets is not None:
            idx = [starts.get(o) for o in offsets]
            # strictly increasing: each frame gets at least one fragment, so a table cannot name more
            # frames than the file holds fragments (a repeated offset would make empty frames)
            if all(i is not None for i in idx) and all(
                a < b  # type: ignore[operator]
                for a, b in itertools.pairwise(idx)
            ):
                bounds = [*idx, len(data)]
                return [
                    [ByteRange(o, n) for o, n in data[bounds[k] : bounds[k + 1]]]  # type: ignore[misc]
                    for k in range(len(idx))
                ]
            self.warnings.append("Pixel Data offset table does not match the fragments; ignored")
        if len(data) == nframes:
            return [[ByteRange(o, n)] for o, n in data]
        if nframes == 1:
            return [[ByteRange(o, n) for o, n in data]]
        # several frames, no usable table: a fragment starting with a codestream marker starts a frame
        heads = [i for i, (o, n) in enumerate(data) if n >= 4 and self.buf[o : o + 4] in _FRAME_MARKERS]
        if len(heads) == nframes and heads[0] == 0:
            bounds = [*heads, len(data)]
            return [[ByteRange(o, n) for o, n in data[bounds[k] : bounds[k + 1]]] for k in range(nframes)]
        self.warnings.append(
            f"Cannot map {len(data)} Pixel Data fragments to {nframes} frames; frames left empty"
        )
        return []


# first bytes of a JPEG (SOI + marker), JPEG 2000 codestream (SOC + SIZ) or JP2 signature box
_FRAME_MARKERS = frozenset(
    [bytes((0xFF, 0xD8, 0xFF, m)) for m in range(0xC0, 0x100)] + [b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0c"]
)


def _first_int(ds: JsonDataset, key: str) -> int | None:
    el = ds.get(key)
    if not el:
        return None
    v = el.get("Value")
    if not v or not isinstance(v[0], int | float):
        return None
    return int(v[0])


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


def _meta_end(p: _Parser, size: int) -> int:
    """Offset of the data set: the File Meta Information (group 0002) ends at the first other group."""
    pos = meta_end = 132
    while meta_end + 8 <= size and p.u_h(p.buf, meta_end)[0] == 0x0002:
        meta_end = _skip_meta_element(p, meta_end, size)
    if meta_end == pos:
        raise InvalidDicom("no File Meta Information (group 0002) after the 'DICM' prefix")
    return meta_end


def _parse_checked(
    buf: Any, size: int, bulk_threshold: int, temp_dir: str | None, inline_deflated: bool
) -> ParsedInstance:
    # -- file meta: group 0002, explicit VR LE (the heuristic also copes with implicit meta) --------
    meta_parser = _Parser(buf, size, True, bulk_threshold, False)
    pos = 132
    meta_end = _meta_end(meta_parser, size)
    meta_ctx = _Ctx(None, DEFAULT_CHARSET, False)
    meta, _ = meta_parser.read_dataset(pos, meta_end, False, meta_ctx, "", False, True)
    ts_el = meta.get("00020010", {}).get("Value")
    ts = ts_el[0] if ts_el and isinstance(ts_el[0], str) else ""
    warnings = [w for w in meta_parser.warnings if not w.startswith("Data set is encoded")]

    # -- data set encoding ------------------------------------------------------------------------
    implicit = False
    little = True
    deflated = False
    if meta_end >= size:
        pass
    elif not ts:
        # pydicom's guess: a valid VR after the first tag means explicit; a huge group means BE
        if meta_end + 6 <= size:
            group = struct.unpack_from("<H", buf, meta_end)[0]
            vrb = bytes(buf[meta_end + 4 : meta_end + 6])
            if vrb in _VR_FROM_BYTES:
                implicit = False
                little = group < 1024
            else:
                implicit = True
        warnings.append("File Meta Information has no Transfer Syntax UID; encoding guessed")
    elif ts == _IMPLICIT_TS:
        implicit = True
    elif ts == _EXPLICIT_BE_TS:
        little = False
    elif ts == _DEFLATED_TS:
        deflated = True

    if not deflated:
        parser = _Parser(buf, size, little, bulk_threshold, False)
        return _parse_dataset(parser, meta_end, size, implicit, warnings, ts, meta_end, size)
    with _Inflated(buf, meta_end, size, temp_dir) as (inflated, length, complete):
        if not complete:
            warnings.append("Deflated data set is truncated")
        parser = _Parser(inflated, length, True, bulk_threshold, inline_deflated)
        # nothing of the map outlives the parse: values are copied out, ranges are numbers
        return _parse_dataset(parser, 0, length, implicit, warnings, ts, meta_end, size)


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
    ctx = _Ctx(None, DEFAULT_CHARSET, implicit)
    ds, _ = parser.read_dataset(start, end, implicit, ctx, "", False, True)
    parser.resolve_fixups()
    frames, nframes = parser.frames(ds)

    return ParsedInstance(
        transfer_syntax_uid=ts,
        study_instance_uid=_first_str(ds, "0020000D"),
        series_instance_uid=_first_str(ds, "0020000E"),
        sop_instance_uid=_first_str(ds, "00080018"),
        sop_class_uid=_first_str(ds, "00080016"),
        dataset=ds,
        bulk=parser.bulk,
        frames=frames,
        number_of_frames=nframes,
        warnings=parser.warnings,
        dataset_offset=dataset_offset,
        file_length=size,
    )


def _skip_meta_element(p: _Parser, pos: int, size: int) -> int:
    buf = p.buf
    vrb = bytes(buf[pos + 4 : pos + 6])
    if vrb in _VR_FROM_BYTES:
        if _VR_FROM_BYTES[vrb] in _LONG_VRS:
            if pos + 12 > size:
                raise InvalidDicom("truncated File Meta Information")
            nxt = pos + 12 + p.u_l(buf, pos + 8)[0]
        else:
            nxt = pos + 8 + p.u_h(buf, pos + 6)[0]
    else:
        nxt = pos + 8 + p.u_l(buf, pos + 4)[0]  # implicit VR meta (non-conformant writers)
    if nxt > size:
        raise InvalidDicom("File Meta Information element runs past the end of the file")
    return nxt


class _Inflated:
    """The inflated data set in an unnamed temporary file, memory-mapped (context manager: yields the
    map, its length and whether the deflate stream was complete; the file is gone when it exits)."""

    def __init__(self, buf: Any, start: int, size: int, temp_dir: str | None) -> None:
        self.buf, self.start, self.size, self.temp_dir = buf, start, size, temp_dir
        self.file: IO[bytes] | None = None
        self.map: mmap.mmap | None = None

    def __enter__(self) -> tuple[Any, int, bool]:
        try:
            # next to the parsed file, not in /tmp (often RAM); O_TMPFILE where the file system has it,
            # so that a crash leaves nothing behind
            self.file = tempfile.TemporaryFile(dir=self.temp_dir)
        except OSError:  # say, a read-only object store rebuilding metadata: the default location
            self.file = tempfile.TemporaryFile()
        try:
            length, complete = _inflate_into(self.buf, self.start, self.size, self.file)
            if not length:
                return b"", 0, complete
            self.map = mmap.mmap(self.file.fileno(), length, access=mmap.ACCESS_READ)
            return self.map, length, complete
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc: object) -> None:
        if self.map is not None:
            self.map.close()
            self.map = None
        if self.file is not None:
            self.file.close()
            self.file = None


def _inflate_into(buf: Any, start: int, size: int, out: IO[bytes]) -> tuple[int, bool]:
    """Inflate the deflate stream at buf[start:size] into `out` in bounded pieces: the inflated length,
    and whether the stream was complete."""
    d = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    pos = start
    data = b""
    try:
        while not d.eof:
            if not data:
                # b"" once the input is used up: zlib may still hold output (it reads input ahead)
                data = buf[pos : min(pos + _INFLATE_PIECE, size)]
                pos += len(data)
            fed = data
            piece = d.decompress(data, _INFLATE_PIECE)
            data = d.unconsumed_tail
            if not piece:
                if not fed:
                    break  # no input left and nothing held: the stream is cut short
                continue
            total += len(piece)
            if total > MAX_INFLATED:
                raise InvalidDicom(f"deflated data set inflates to more than {MAX_INFLATED} bytes")
            out.write(piece)
        out.flush()
    except zlib.error as exc:
        raise InvalidDicom(f"cannot inflate Deflated Explicit VR Little Endian data set: {exc}") from None
    return total, d.eof


def deflated_data_set_start(f: IO[bytes]) -> int:
    """Offset in a stored Part 10 file where its data set (for a deflated file, the deflate stream)
    starts: after the File Meta Information."""
    size = os.fstat(f.fileno()).st_size
    if size < 132:
        raise InvalidDicom("not a DICOM Part 10 file: shorter than preamble + 'DICM'")
    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        try:
            return _meta_end(_Parser(mm, size, True, 0, False), size)
        except struct.error as exc:
            raise InvalidDicom(f"malformed File Meta Information: {exc}") from None


class InflatedReader:
    """Byte ranges of a stored deflated data set (offsets into the inflated data set, as the parser
    records them), inflated on the fly from the file in pieces of at most `piece` bytes: memory stays
    bounded whatever the size of the value. Ranges read in increasing order share one pass; a range
    before the current position starts the inflate again from the data set's start. Owns `f`."""

    def __init__(self, f: IO[bytes], piece: int = _INFLATE_PIECE, start: int | None = None) -> None:
        self._f = f
        self._piece = piece
        # where the deflate stream starts: after the File Meta Information, unless given
        self._start = deflated_data_set_start(f) if start is None else start
        self._restart()

    def _restart(self) -> None:
        self._f.seek(self._start)
        self._d = zlib.decompressobj(-zlib.MAX_WBITS)
        self._pos = 0  # inflated bytes produced so far
        self._pending = b""  # compressed input not yet given to the decompressor

    def _inflate(self, limit: int) -> bytes:
        """Up to `limit` more inflated bytes; b"" at the end of the stream."""
        while not self._d.eof:
            # b"" at the end of the file: zlib may still hold output (it reads input ahead)
            fed = self._pending or self._f.read(self._piece)
            out = self._d.decompress(fed, limit)
            self._pending = self._d.unconsumed_tail
            if out:
                self._pos += len(out)
                return out
            if not fed:
                return b""  # no input left and nothing held: the stream is cut short
        return b""

    def read(self, offset: int, length: int) -> Iterator[bytes]:
        """The `length` bytes at `offset` of the inflated data set, in pieces."""
        if offset < self._pos:
            self._restart()
        while self._pos < offset:
            if not self._inflate(min(self._piece, offset - self._pos)):
                raise InvalidDicom(f"deflated data set ends before offset {offset}")
        while length > 0:
            out = self._inflate(min(self._piece, length))
            if not out:
                raise InvalidDicom(f"deflated data set ends {length} bytes before the end of a value")
            length -= len(out)
            yield out

    def close(self) -> None:
        self._f.close()


def _first_str(ds: JsonDataset, key: str) -> str:
    el = ds.get(key)
    if not el:
        return ""
    v = el.get("Value")
    return v[0] if v and isinstance(v[0], str) else ""


def may_be_deflated(data: bytes) -> bool:
    """Whether a Part 10 file may be in the Deflated transfer syntax, whose data set is inflated (up to
    MAX_INFLATED, to a temporary file): a look before parsing (a byte search, microseconds for a small
    file) that may say yes wrongly, never no wrongly (a file the parser would inflate names the UID)."""
    return _DEFLATED_TS_BYTES in data


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
