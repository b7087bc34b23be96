"""Value normalisation shared by ingest (index columns) and QIDO (query values)."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

import orjson

# Combining diacritical mark blocks: stripped so that "Jérôme" matches "JEROME". Other combining
# characters (e.g. the kana voicing marks U+3099/U+309A) change meaning and are kept.
_DIACRITIC_RANGES = ((0x0300, 0x036F), (0x1AB0, 0x1AFF), (0x1DC0, 0x1DFF), (0x20D0, 0x20FF), (0xFE20, 0xFE2F))
_WORD_SPLIT = re.compile(r"[\^=\s]+")

# attrs JSON larger than this per element is not kept in the index (QIDO never needs it)
MAX_ELEMENT_JSON = 4096


_DROP_DIACRITICS = {cp: None for lo, hi in _DIACRITIC_RANGES for cp in range(lo, hi + 1)}


def fold(text: str) -> str:
    """Case- and accent-insensitive form: NFKD, drop diacritics, NFC (recomposes Hangul/kana), upper."""
    if text.isascii():
        return text.upper()
    decomposed = unicodedata.normalize("NFKD", text).translate(_DROP_DIACRITICS)
    return unicodedata.normalize("NFC", decomposed).upper()


def _clean_group(group: str) -> str:
    # trailing empty components carry no information: "Doe^John^^" == "Doe^John"
    return "^".join(part.strip() for part in group.split("^")).rstrip("^")


def pn_string(value: Any) -> str:
    """The PN value of a DICOM JSON element value as a PS3.5 string "Alphabetic=Ideographic=Phonetic"."""
    if isinstance(value, dict):
        # spelled out, no comprehension: ingest calls this for the names of every instance
        get = value.get
        groups = [str(get("Alphabetic") or ""), str(get("Ideographic") or ""), str(get("Phonetic") or "")]
    else:
        groups = str(value or "").split("=")
    return "=".join(groups).rstrip("=")


def pn_groups(pn: str) -> list[str]:
    """Folded, non-empty component groups of a PN string."""
    return [g for g in (_clean_group(fold(x)) for x in pn.split("=")) if g]


# pn_norm/pn_words results by name. Ingest computes them for every instance, and a name repeats
# across all the instances of a study, while folding (Unicode normalisation) and splitting cost
# microseconds. Bounded in entries and key length: when full the cache starts over, so hostile
# input with many distinct names only costs the recomputation.
_PN_CACHE_SIZE = 4096
_PN_CACHE_MAX_KEY = 256
_PN_NORM_CACHE: dict[str, str] = {}
_PN_WORDS_CACHE: dict[str, str] = {}


def _remember(cache: dict[str, str], key: str, value: str) -> str:
    if len(key) <= _PN_CACHE_MAX_KEY:
        if len(cache) >= _PN_CACHE_SIZE:
            cache.clear()
        cache[key] = value
    return value


def pn_norm(pn: str) -> str:
    """Exact-match column form: each folded component group wrapped in '=': "=DOE^JOHN=山田^太郎=".

    Wrapping lets one LIKE '%=VALUE=%' match any of the alphabetic/ideographic/phonetic groups.
    """
    cached = _PN_NORM_CACHE.get(pn)
    if cached is not None:
        return cached
    groups = pn_groups(pn)
    return _remember(_PN_NORM_CACHE, pn, "=" + "=".join(groups) + "=" if groups else "")


def pn_words(pn: str) -> str:
    """Fuzzy-match column form: folded words with a space on both sides: " DOE JOHN 山田 太郎 "."""
    cached = _PN_WORDS_CACHE.get(pn)
    if cached is not None:
        return cached
    words = [w for w in _WORD_SPLIT.split(fold(pn)) if w]
    return _remember(_PN_WORDS_CACHE, pn, " " + " ".join(words) + " " if words else "")


def query_words(value: str) -> list[str]:
    return [w for w in _WORD_SPLIT.split(fold(value)) if w]


# Person name search keys (the study_name_key table, see search.py). Keys longer than this are
# stored truncated, and a query key is truncated the same way before it is compared.
MAX_NAME_KEY = 64


def name_keys(norm: str | None, words: str | None) -> tuple[set[str], set[str]]:
    """Search keys of a person name from its stored column forms (pn_norm, pn_words).

    Groups: each component group exactly as it appears between the '=' of the norm column; words:
    each word as it appears between the spaces of the words column; both cut to MAX_NAME_KEY.
    Whatever `LIKE '%=PREFIX...'` matches on the norm column (or `LIKE '% PREFIX%'` on the words
    column) has a group (a word) key starting with PREFIX[:MAX_NAME_KEY].
    """
    groups = {g[:MAX_NAME_KEY] for g in (norm or "").split("=") if g}
    word_keys = {w[:MAX_NAME_KEY] for w in (words or "").split(" ") if w}
    return groups, word_keys


def key_successor(prefix: str) -> str | None:
    """The least string greater than every string that starts with `prefix`, in code point order
    (UTF-8 byte order: SQLite's BINARY and PostgreSQL's "C" collation); None when there is none."""
    chars = list(prefix)
    while chars:
        code = ord(chars[-1]) + 1
        if code <= 0x10FFFF:
            chars[-1] = chr(0xE000 if 0xD800 <= code <= 0xDFFF else code)  # surrogates are not text
            return "".join(chars)
        chars.pop()
    return None


# ASCII digits only: \d, str.isdigit() and int() also take other scripts' digits (Arabic-Indic,
# full-width; isdigit() even superscripts), which no DICOM number or date is written in
_INT_TEXT = re.compile(r"([+-]?)0*([0-9]+)", re.ASCII)
# numbers of more significant digits than this are >= 10**19, beyond any SQL integer (2**63 - 1)
_INT_DIGITS = 19


def parse_int(text: str) -> int | None:
    """An integer written in ASCII digits with an optional sign, surrounding blanks tolerated; None when
    ``text`` is not one. Beyond 19 digits the result saturates at +-10**19, out of every range a
    parameter allows (and of a SQL BIGINT): int() raises for more than 4,300 digits."""
    m = _INT_TEXT.fullmatch(text.strip(" \t"))
    if m is None:
        return None
    sign, digits = m.groups()
    n = int(digits) if len(digits) <= _INT_DIGITS else 10**_INT_DIGITS
    return -n if sign == "-" else n


def norm_date(value: str) -> str:
    """DA as YYYYMMDD (old ACR-NEMA "YYYY.MM.DD" tolerated)."""
    return value.strip().replace(".", "").replace("-", "")


def norm_time(value: str) -> str:
    """TM padded to at least HHMMSS so that string order equals time order ("10" -> "100000")."""
    v = value.strip().replace(":", "")
    head, dot, frac = v.partition(".")
    return head.ljust(6, "0") + (dot + frac if frac else "")


def first_value(element: dict[str, Any] | None) -> Any:
    if not element:
        return None
    values = element.get("Value")
    if not values:
        return None
    return values[0]


def first_str(element: dict[str, Any] | None) -> str | None:
    # first_value inlined: ingest calls this a dozen times per instance
    if not element:
        return None
    values = element.get("Value")
    if not values:
        return None
    v = values[0]
    if v is None:
        return None
    if element.get("vr") == "PN":
        return pn_string(v) or None
    return str(v).strip() or None


def first_int(element: dict[str, Any] | None) -> int | None:
    v = first_value(element)
    if v is None:
        return None
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return None


def _strip_bulk(element: dict[str, Any]) -> dict[str, Any] | None:
    """Element without binary values (BulkDataURI/InlineBinary), also inside sequence items.

    keep_value checks plainness (_is_plain_sequence) once, at the top, before calling this; checking
    again at every level would walk each subtree once per level above it."""
    if "BulkDataURI" in element or "InlineBinary" in element:
        return None
    if element.get("vr") == "SQ" and element.get("Value"):
        items = []
        for item in element["Value"]:
            if isinstance(item, dict):
                kept = {t: _strip_bulk(e) for t, e in item.items()}
                items.append({t: e for t, e in kept.items() if e is not None})
            else:
                items.append(item)
        return {"vr": "SQ", "Value": items}
    return element


def _is_plain_sequence(element: dict[str, Any]) -> bool:
    """Whether _strip_bulk returns a sequence element as it is or as an equal copy with the same
    JSON: no binary value at any depth, and the element is {"vr": .., "Value": [..]} already (a
    list, no other key, "vr" first), its nested sequences too. Most sequences are, and checking is
    cheaper than copying. False is always safe (the copy is made)."""
    if "BulkDataURI" in element or "InlineBinary" in element:
        return False
    values = element.get("Value")
    if len(element) != 2 or next(iter(element)) != "vr" or type(values) is not list:
        return False
    for item in values:
        if isinstance(item, dict):
            for e in item.values():
                if "BulkDataURI" in e or "InlineBinary" in e:
                    return False
                if e.get("vr") == "SQ" and e.get("Value") and not _is_plain_sequence(e):
                    return False
    return True


_ODD_GROUP = frozenset("13579BDFbdf")
# VRs whose values can be long; only these (and lists of more than MAX_UNMEASURED_VALUES values)
# are measured against MAX_ELEMENT_JSON
LONG_VRS = frozenset({"SQ", "LT", "ST", "UT", "UC", "UR", "OB", "OW", "OF", "OD", "OL", "OV", "UN"})
MAX_UNMEASURED_VALUES = 16


def keep_tag(tag: str) -> bool:
    """Whether an attribute can be kept in an attrs column at all: private attributes and group
    lengths are left out (not queryable, they only bloat 1M rows)."""
    return not (len(tag) != 8 or tag[3] in _ODD_GROUP or tag.endswith("0000"))


def keep_value(element: dict[str, Any]) -> dict[str, Any] | None:
    """The element of a kept tag as stored in an attrs column, or None to leave it out.

    Left out: binary values, and elements whose JSON exceeds MAX_ELEMENT_JSON.
    An element with a "Value" whose VR is not in LONG_VRS (SQ is) and that has at most
    MAX_UNMEASURED_VALUES values is returned as it is (rows._split_levels relies on this).
    """
    values = element.get("Value")
    if values is None:
        # no value, or a binary one (BulkDataURI / InlineBinary): keep only the empty element
        return None if len(element) > 1 else element
    vr = element.get("vr")
    if vr == "SQ" and not _is_plain_sequence(element):
        cleaned = _strip_bulk(element)
        if cleaned is None:
            return None
        element = cleaned
    measure = vr in LONG_VRS or len(values) > MAX_UNMEASURED_VALUES
    if measure and len(orjson.dumps(element)) > MAX_ELEMENT_JSON:
        return None
    return element
