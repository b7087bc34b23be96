"""Specific Character Set handling for the fast parser.

All real decoding (ISO 2022 code extensions, PN component rules, fallbacks on bad bytes) is
delegated to pydicom so that our text equals pydicom's; this module only adds caching, an ASCII
fast path and the capture of pydicom's warnings as human-readable strings.
"""

from __future__ import annotations

import codecs
import warnings
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.charset import default_encoding as _PYDICOM_DEFAULT
from pydicom.valuerep import TEXT_VR_DELIMS
from pydicom.values import convert_PN

DEFAULT_ENCODINGS: tuple[str, ...] = (_PYDICOM_DEFAULT,)

# Printable ASCII plus the text control characters DICOM allows (LF, FF, CR, TAB, ESC excluded).
_ASCII_PROBE = bytes(range(0x20, 0x7F)) + b"\t\n\x0c\r"


@lru_cache(maxsize=256)
def _is_ascii_compatible(encoding: str) -> bool:
    """True if `encoding` decodes every ASCII text byte to the same character (not EBCDIC etc.)."""
    try:
        codecs.lookup(encoding)
        return _ASCII_PROBE.decode(encoding) == _ASCII_PROBE.decode("ascii")
    except (LookupError, UnicodeError, ValueError):
        return False


# Codecs whose strict decoding is undone exactly by encoding (one byte sequence per character): a
# person name pydicom decodes with one of them, without escape sequences, comes out of its
# decode / re-encode / decode round trip unchanged and without warnings (see decode_person_names).
_ROUND_TRIP_CODECS = frozenset(
    {"ascii", "utf-8", "iso8859-1", "tis-620"} | {f"iso8859-{n}" for n in range(2, 17)}
)


@lru_cache(maxsize=256)
def _round_trips(encoding: str) -> bool:
    try:
        return codecs.lookup(encoding).name in _ROUND_TRIP_CODECS
    except LookupError:
        return False


class Charset:
    """A resolved Specific Character Set: Python encodings and whether ASCII bytes can skip pydicom."""

    __slots__ = ("ascii_ok", "encodings", "names_direct", "warnings")

    def __init__(self, encodings: tuple[str, ...], warnings_: tuple[str, ...]) -> None:
        self.encodings = encodings
        self.warnings = warnings_
        # ESC-free ASCII decodes identically with the first encoding; escapes are excluded by callers.
        self.ascii_ok = _is_ascii_compatible(encodings[0]) if encodings else True
        # ESC-free person names may be decoded with the first encoding directly (decode_person_names)
        self.names_direct = bool(encodings) and _round_trips(encodings[0])


DEFAULT_CHARSET = Charset(DEFAULT_ENCODINGS, ())


@lru_cache(maxsize=1024)
def resolve_charset(values: tuple[str, ...]) -> Charset:
    """Resolve the (already split and stripped) values of (0008,0005) like pydicom does.

    An empty value resolves to the default repertoire. pydicom's warnings about unknown or
    misspelled terms are returned as `Charset.warnings` instead of being emitted.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            encodings = convert_encodings(list(values) if values else "")
        except Exception as exc:  # pydicom only raises in RAISE mode; never let it escape
            encodings = [_PYDICOM_DEFAULT]
            caught.append(warnings.WarningMessage(str(exc), UserWarning, "", 0))
    msgs: list[str] = []
    for w in caught:
        text = str(w.message)
        if "Unknown encoding" in text:
            # e.g. "Unknown encoding 'XYZ' - using default encoding instead"
            bad = text.split("'")[1] if "'" in text else text
            msgs.append(f"Unknown Specific Character Set '{bad}'; decoded as ISO_IR 6")
        else:
            msgs.append(f"Specific Character Set: {text}")
    return Charset(tuple(encodings), tuple(msgs))


def _decode(raw: bytes, charset: Charset) -> tuple[str, list[str]]:
    if b"\x1b" not in raw:
        # pydicom's own shortcut for a value without escape sequences, minus its warning machinery
        # (catch_warnings costs more than the decoding); what fails takes the full path below
        try:
            return raw.decode(charset.encodings[0]), []
        except (LookupError, UnicodeError):
            pass
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            text = decode_bytes(raw, charset.encodings, TEXT_VR_DELIMS)
        except Exception as exc:  # defensive: pydicom only raises in RAISE mode
            return raw.decode("latin-1"), [f"cannot decode ({exc}); decoded as latin-1"]
    return text, [str(w.message) for w in caught]


def decode_text_values(raw: bytes, charset: Charset) -> tuple[list[str], list[str]]:
    """Decode a multi-valued text value (SH, LO, UC) like pydicom's convert_text.

    Returns the values and any decoding warnings (bad bytes -> replacement characters).
    """
    text, msgs = _decode(raw, charset)
    return [v.rstrip("\0 ") for v in text.split("\\")], msgs


def decode_text_single(raw: bytes, charset: Charset) -> tuple[str, list[str]]:
    """Decode a single-valued text value (ST, LT, UT) like pydicom's convert_single_string."""
    text, msgs = _decode(raw, charset)
    return text.rstrip("\0 "), msgs


def name_components(name: str) -> tuple[str, ...]:
    """A decoded person name's component groups, as pydicom splits them."""
    comps = name.split("=")
    while comps and not comps[-1]:  # pydicom drops empty trailing groups
        comps.pop()
    return tuple(comps)


def decode_person_names(raw: bytes, charset: Charset) -> tuple[list[Sequence[str]], list[str]]:
    """Decode a PN value into per-value component tuples exactly as pydicom does.

    Used for non-ASCII values only: pydicom decodes each "="-separated group with the PN
    delimiter rules (ISO 2022 escape state resets at "^" and "=").
    """
    if charset.names_direct and b"\x1b" not in raw:
        # pydicom's path without escape sequences: decode with the first encoding, split, then encode and
        # decode each name again, which with a round-trip codec changes nothing (~50 us a name saved)
        try:
            text = raw.rstrip(b"\x00 ").decode(charset.encodings[0])
        except UnicodeError:
            pass  # pydicom decodes with replacement characters and warns: its path below
        else:
            return [name_components(v) for v in text.split("\\")], []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value = convert_PN(raw, list(charset.encodings))
            names: list[Any] = [value] if not hasattr(value, "append") else list(value)
            comps = [tuple(pn.components) for pn in names]
        except Exception as exc:  # defensive: never let a name break ingest
            text = raw.rstrip(b"\x00 ").decode("latin-1")
            comps = [tuple(c for c in v.split("=")) for v in text.split("\\")]
            return comps, [f"cannot decode ({exc}); decoded as latin-1"]  # type: ignore[return-value]
    # pydicom's length validation warnings are not decoding problems; keep only charset ones
    msgs = [str(w.message) for w in caught if "decod" in str(w.message) or "encoding" in str(w.message)]
    return comps, msgs  # type: ignore[return-value]
