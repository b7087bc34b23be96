"""VRs and value converters: the bytes of one element value -> its DICOM JSON "Value" list (PS3.18 F.2),
None when the value is empty. The results equal pydicom 3's ``to_json_dict``, except where the parser's
docstring says otherwise.

A converter raises `DropElement` for a value that cannot be represented; the parser drops the element and
warns. Binary values (InlineBinary or BulkDataURI) are the parser's: they depend on its bulk data rule.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from typing import Any

from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, STANDARD_VR

from .charset import Charset, decode_person_names, decode_text_single, decode_text_values, name_components

# the VR of an explicit VR element header, by its two bytes
VR_FROM_BYTES: dict[bytes, str] = {str(vr).encode(): str(vr) for vr in STANDARD_VR}
# VRs whose explicit VR header has a 4-byte length (PS3.5 7.1.2)
LONG_VRS = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)
BINARY_VRS = frozenset(("OB", "OD", "OF", "OL", "OV", "OW", "UN"))
TEXT_MULTI = frozenset(("SH", "LO", "UC"))
TEXT_SINGLE = frozenset(("ST", "LT", "UT"))

# VR -> (struct code, size of one value)
NUMBER_FORMATS: dict[str, tuple[str, int]] = {
    "US": ("H", 2),
    "SS": ("h", 2),
    "UL": ("L", 4),
    "SL": ("l", 4),
    "FL": ("f", 4),
    "FD": ("d", 8),
    "SV": ("q", 8),
    "UV": ("Q", 8),
}
NUMBER_SIZE = {vr: size for vr, (_, size) in NUMBER_FORMATS.items()}

_NO_WARNINGS: tuple[str, ...] = ()


class DropElement(Exception):
    """An element value that cannot be represented: drop it and warn (message says why)."""


# -- VRs whose value is a string of the default repertoire (decoded as latin-1 like pydicom's default
# "iso8859"), by their ``str`` of the value


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
            raise DropElement(f"invalid UI value {v[:80]!r}")
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
                raise DropElement(f"invalid IS value {v!r}") from None
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
            raise DropElement(f"invalid DS value {v!r}") from None
        if not math.isfinite(f):
            raise DropElement(f"non-finite DS value {v!r}")
        out.append(f)
    return out


STR_CONVERTERS: dict[str, Callable[[str], list[Any] | None]] = {
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


# -- numbers and attribute tags (byte_order: "<" little endian, ">" big endian)


def numbers(vr: str, buf: Any, vpos: int, length: int, byte_order: str) -> list[Any] | None:
    if not length:
        return None
    code, size = NUMBER_FORMATS[vr]
    if length % size:
        raise DropElement(f"value length {length} is not a multiple of {size} for VR {vr}")
    return list(struct.unpack_from(f"{byte_order}{length // size}{code}", buf, vpos))


def attribute_tags(buf: Any, vpos: int, length: int, byte_order: str) -> list[Any]:
    """AT: "GGGGEEEE" per tag."""
    if length < 4:
        raise DropElement(f"AT value of {length} bytes")
    n = length // 4
    vals = struct.unpack_from(f"{byte_order}{2 * n}H", buf, vpos)
    return [f"{vals[i]:04X}{vals[i + 1]:04X}" for i in range(0, 2 * n, 2)]


# -- text in the data set's character set: the value and the decoding warnings. ASCII without escapes
# decodes alike in every charset with ascii_ok, so pydicom is left out of it.


def text_multi(raw: bytes, cs: Charset) -> tuple[list[Any] | None, Sequence[str]]:
    """SH, LO, UC."""
    msgs: Sequence[str] = _NO_WARNINGS
    if cs.ascii_ok and raw.isascii() and b"\x1b" not in raw:
        values = [v.rstrip("\0 ") for v in raw.decode("ascii").split("\\")]
    else:
        values, msgs = decode_text_values(raw, cs)
    if len(values) == 1 and not values[0]:
        return None, msgs
    return values, msgs


def text_single(raw: bytes, cs: Charset) -> tuple[list[Any] | None, Sequence[str]]:
    """ST, LT, UT."""
    msgs: Sequence[str] = _NO_WARNINGS
    if cs.ascii_ok and raw.isascii() and b"\x1b" not in raw:
        text = raw.decode("ascii").rstrip("\0 ")
    else:
        text, msgs = decode_text_single(raw, cs)
    return ([text] if text else None), msgs


def person_name(raw: bytes, cs: Charset) -> tuple[list[Any] | None, Sequence[str]]:
    """PN: {"Alphabetic", "Ideographic", "Phonetic"} per name, None for an empty one."""
    msgs: Sequence[str] = _NO_WARNINGS
    comps_list: list[Any]
    if cs.ascii_ok and raw.isascii() and b"\x1b" not in raw:
        comps_list = [name_components(v) for v in raw.rstrip(b"\x00 ").decode("ascii").split("\\")]
    else:
        comps_list, msgs = decode_person_names(raw, cs)
    if len(comps_list) == 1 and not comps_list[0]:
        return None, msgs
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
    return out, msgs


# VR -> converter of a text value in the data set's character set
TEXT_CONVERTERS: dict[str, Callable[[bytes, Charset], tuple[list[Any] | None, Sequence[str]]]] = {
    **dict.fromkeys(TEXT_MULTI, text_multi),
    **dict.fromkeys(TEXT_SINGLE, text_single),
    "PN": person_name,
}
