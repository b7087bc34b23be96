"""QIDO-RS query parameters (PS3.18 10.6.1) parsed into a QidoQuery the index can run.

Matching kinds follow PS3.4 C.2.2.2: single value, list of UIDs, universal, wildcard and range
matching; fuzzy matching of person names is word-prefix, case- and accent-insensitive.
Limits: `limit` defaults to 100 and may be at most 1000 (Azure allows 200; we can afford more).
Every malformed value is a QueryError naming its parameter (the web layer answers 400), never an error
from SQL: numbers and dates in ASCII digits only, values of at most MAX_VALUE_LENGTH characters, lists
of at most MAX_LIST_VALUES values (at least one), no NUL, fuzzy names of at most MAX_FUZZY_WORDS words.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Literal

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from dicomd.dicom.uids import is_valid_uid
from dicomd.index.levels import Level
from dicomd.index.normalize import parse_int, query_words
from dicomd.index.schema import DEFAULT_PARTITION_KEY

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_OFFSET = 2**31 - 1
# values in one list match ("\\" or ","): each is a bound SQL parameter, and SQLite takes at most 32,766
# per statement, PostgreSQL 65,535 (8 list-capable attributes x 1,000 stay well below)
MAX_LIST_VALUES = 1000
# the range of an IS value (PS3.5 Table 6.2-1), and of the integer columns it is matched against
IS_MIN, IS_MAX = -(2**31), 2**31 - 1
# characters of a matching value (of each value of a list): several times the longest value of these
# attributes (PN: 3 x 64), and it keeps a LIKE pattern within SQLite's 50,000 bytes even after folding
# (NFKD makes up to 18 characters of one)
MAX_VALUE_LENGTH = 1024
# distinct words of a fuzzy person name query: one LIKE each, and SQLite allows an expression depth of
# 1,000; a name has far fewer words
MAX_FUZZY_WORDS = 64

# kind decides which matching applies:
#   uid: single / list ("\" or ","), no wildcards    pn: single / wildcard / fuzzy word-prefix
#   str: single / wildcard (case-sensitive)          cs: like str, plus lists (CS values have no "\" or ",")
#   date / time: single / range                       int: single integer
#   modalities: ModalitiesInStudy, matched against the study's series
Kind = Literal["uid", "pn", "str", "cs", "date", "time", "int", "modalities"]
Match = Literal["universal", "single", "list", "wildcard", "range"]

_LEVEL_RANK: dict[Level, int] = {"study": 0, "series": 1, "instance": 2}


@dataclass(frozen=True, slots=True)
class Searchable:
    keyword: str
    level: Level
    kind: Kind
    column: str  # column of the level's table (PN: the *_norm column; *_words is derived)


_SEARCHABLE_LIST = [
    Searchable("StudyInstanceUID", "study", "uid", "study_instance_uid"),
    Searchable("PatientName", "study", "pn", "patient_name_norm"),
    Searchable("PatientID", "study", "str", "patient_id"),
    Searchable("PatientBirthDate", "study", "date", "patient_birth_date"),
    Searchable("PatientSex", "study", "cs", "patient_sex"),
    Searchable("AccessionNumber", "study", "str", "accession_number"),
    Searchable("ReferringPhysicianName", "study", "pn", "referring_physician_name_norm"),
    Searchable("StudyDate", "study", "date", "study_date"),
    Searchable("StudyTime", "study", "time", "study_time"),
    Searchable("StudyID", "study", "str", "study_id"),
    Searchable("StudyDescription", "study", "str", "study_description"),
    Searchable("ModalitiesInStudy", "study", "modalities", "modality"),
    Searchable("Modality", "series", "cs", "modality"),
    Searchable("SeriesInstanceUID", "series", "uid", "series_instance_uid"),
    Searchable("SeriesNumber", "series", "int", "series_number"),
    Searchable("SeriesDescription", "series", "str", "series_description"),
    Searchable("PerformedProcedureStepStartDate", "series", "date", "performed_procedure_step_start_date"),
    Searchable("PerformedProcedureStepStartTime", "series", "time", "performed_procedure_step_start_time"),
    Searchable("BodyPartExamined", "series", "cs", "body_part_examined"),
    Searchable("ManufacturerModelName", "series", "str", "manufacturer_model_name"),
    Searchable("SOPClassUID", "instance", "uid", "sop_class_uid"),
    Searchable("SOPInstanceUID", "instance", "uid", "sop_instance_uid"),
    Searchable("InstanceNumber", "instance", "int", "instance_number"),
]


def _tag_hex(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return f"{tag:08X}"


SEARCHABLE: dict[str, Searchable] = {_tag_hex(s.keyword): s for s in _SEARCHABLE_LIST}


class QueryError(ValueError):
    """An invalid QIDO query parameter; the message names it (the web layer answers 400)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"Invalid query parameter '{param}': {message}")
        self.param = param


@dataclass(frozen=True, slots=True)
class Filter:
    tag: str  # "GGGGEEEE"
    keyword: str
    level: Level
    kind: Kind
    column: str
    match: Match
    # single/wildcard: (value,); list: the values; range: (low, high) with "" for an open end
    # (date/time bounds are already expanded to full precision); universal: ()
    values: tuple[str, ...] = ()


@dataclass(slots=True)
class QidoQuery:
    level: Level
    partition_key: int
    study_uid: str | None
    series_uid: str | None
    filters: list[Filter] = field(default_factory=list)
    fuzzy: bool = False
    include_all: bool = False
    include_tags: list[str] = field(default_factory=list)
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    version: int = 2


# Always fullmatch ("$" also matches before a final newline) and ASCII digits only ("\d" takes every
# script's digits, which no DICOM date or time is written in).
_HEX_TAG = re.compile(r"[0-9A-Fa-f]{8}", re.ASCII)
_DATE = re.compile(r"[0-9]{4}(?:([0-9]{2})([0-9]{2})?)?", re.ASCII)
_TIME = re.compile(r"[0-9]{2}(?:[0-9]{2}(?:[0-9]{2}(?:\.[0-9]{1,6})?)?)?", re.ASCII)
_LIST_SEPARATORS = re.compile(r"[\\,]")
_SHOWN = 64  # characters of a value quoted in an error message


def _shown(value: str) -> str:
    return value if len(value) <= _SHOWN else value[:_SHOWN] + "..."


def resolve_tag(name: str) -> str | None:
    """ "PatientName" or "00100010" -> "00100010"; None when unknown."""
    if _HEX_TAG.fullmatch(name):
        return name.upper()
    tag = tag_for_keyword(name)
    return f"{tag:08X}" if tag is not None else None


def keyword_of(tag: str) -> str:
    try:
        return keyword_for_tag(int(tag, 16)) or tag
    except ValueError:
        return tag


@functools.lru_cache(maxsize=4096)
def vr_of(tag: str) -> str:
    """Dictionary VR of a tag ("UN" when unknown or ambiguous like "US or SS")."""
    try:
        vr = dictionary_VR(int(tag, 16))
    except (KeyError, ValueError):
        return "UN"
    return vr if len(vr) == 2 else "UN"


def _date_bound(param: str, value: str, high: bool) -> str:
    v = value.strip()
    m = _DATE.fullmatch(v)
    month, day = m.groups() if m else ("", "")
    if m is None or not "01" <= (month or "01") <= "12" or not "01" <= (day or "01") <= "31":
        raise QueryError(param, f"'{_shown(value)}' is not a date (YYYYMMDD, YYYYMM or YYYY)")
    # a partial date stands for its whole month/year; string order equals date order
    if len(v) == 4:
        return v + ("1231" if high else "0101")
    if len(v) == 6:
        return v + ("31" if high else "01")
    return v


def _time_bound(param: str, value: str, high: bool) -> str:
    v = value.strip().replace(":", "")
    head, _, frac = v.partition(".")
    fields = [int(head[i : i + 2]) for i in range(0, len(head), 2)] if _TIME.fullmatch(v) else [99]
    if any(n > limit for n, limit in zip(fields, (23, 59, 60), strict=False)):
        raise QueryError(param, f"'{_shown(value)}' is not a time (HHMMSS.FFFFFF, partial allowed)")
    if high:
        # the upper end includes the whole last unit given: "1200" -> up to 12:00:59.999999
        return head + "5959"[len(head) - 2 :] + "." + frac.ljust(6, "9")
    return head.ljust(6, "0") + ("." + frac if frac else "")


def _parse_filter(param: str, s: Searchable, tag: str, value: str) -> Filter:
    def make(match: Match, values: tuple[str, ...] = ()) -> Filter:
        return Filter(tag, s.keyword, s.level, s.kind, s.column, match, values)

    value = value.strip()
    if value == "" or value.strip("*") == "":
        return make("universal")
    if "\x00" in value:
        # no stored value holds one, and PostgreSQL refuses it in a text parameter
        raise QueryError(param, "the value contains a NUL character")
    has_wild = "*" in value or "?" in value
    if s.kind == "uid":
        uids = _list_items(param, value)
        for u in uids:
            if not is_valid_uid(u):  # the rule STOW stores by, so that every stored UID can be found
                raise QueryError(
                    param, f"'{_shown(u)}' is not a UID (digits and dots, at most 64 characters)"
                )
        return make("single", uids) if len(uids) == 1 else make("list", uids)
    if s.kind in ("date", "time"):
        bound = _date_bound if s.kind == "date" else _time_bound
        if has_wild:
            raise QueryError(param, "wildcards are not allowed for dates and times")
        if value.count("-") > 1:
            raise QueryError(param, f"'{value}' is not a valid range")
        if "-" in value:
            low, high = value.split("-")
            if not low and not high:
                return make("universal")
            return make(
                "range",
                (bound(param, low, False) if low else "", bound(param, high, True) if high else ""),
            )
        # a single (possibly partial) value is the range covering its precision
        return make("range", (bound(param, value, False), bound(param, value, True)))
    if s.kind == "int":
        n = parse_int(value)
        if n is None:
            raise QueryError(param, f"'{_shown(value)}' is not an integer")
        if not IS_MIN <= n <= IS_MAX:
            raise QueryError(param, f"'{_shown(value)}' is out of range ({IS_MIN} to {IS_MAX})")
        return make("single", (str(n),))
    if s.kind in ("cs", "modalities") and ("\\" in value or "," in value):
        items = _list_items(param, value)
        if any("*" in v or "?" in v for v in items):
            raise QueryError(param, "wildcards cannot be combined with a list of values")
        return make("list", items)
    if len(value) > MAX_VALUE_LENGTH:
        raise QueryError(param, f"the value is longer than {MAX_VALUE_LENGTH} characters")
    return make("wildcard" if has_wild else "single", (value,))


def _list_items(param: str, value: str) -> tuple[str, ...]:
    """The values of a list ("\\" or "," separated; empty items are skipped), at least one."""
    items = tuple(item for item in (v.strip() for v in _LIST_SEPARATORS.split(value)) if item)
    if not items:
        raise QueryError(param, f"'{_shown(value)}' has no value between its separators")
    if len(items) > MAX_LIST_VALUES:
        raise QueryError(param, f"a list may hold at most {MAX_LIST_VALUES} values")
    if any(len(item) > MAX_VALUE_LENGTH for item in items):
        raise QueryError(param, f"a value is longer than {MAX_VALUE_LENGTH} characters")
    return items


def fuzzy_words(value: str) -> list[str]:
    """The distinct folded words of a fuzzy person name query, in order (wildcards are word breaks)."""
    return list(dict.fromkeys(query_words(value.replace("*", " ").replace("?", " "))))


def _int_param(param: str, value: str, low: int, high: int) -> int:
    n = parse_int(value)
    if n is None:
        raise QueryError(param, f"'{_shown(value)}' is not an integer")
    if not low <= n <= high:
        raise QueryError(param, f"must be between {low} and {high}")
    return n


def parse_qido(
    level: Level,
    params: list[tuple[str, str]],
    *,
    partition_key: int = DEFAULT_PARTITION_KEY,
    study_uid: str | None = None,
    series_uid: str | None = None,
    version: int = 2,
) -> QidoQuery:
    """Validate raw query pairs for a search at `level` (scope from the URL path) into a QidoQuery."""
    q = QidoQuery(level, partition_key, study_uid, series_uid, version=version)
    seen_params: set[str] = set()
    seen_tags: set[str] = set()
    include: dict[str, None] = {}  # ordered set: a list's "in" made many includefields quadratic
    for key, value in params:
        if key == "includefield":
            for name in value.split(","):
                name = name.strip()
                if not name:
                    continue
                if name.lower() == "all":
                    q.include_all = True
                    continue
                tag = resolve_tag(name)
                if tag is None:
                    raise QueryError(key, f"unknown attribute '{name}'")
                include[tag] = None
            continue
        if key in ("limit", "offset", "fuzzymatching"):
            if key in seen_params:
                raise QueryError(key, "given more than once")
            seen_params.add(key)
            if key == "limit":
                q.limit = _int_param(key, value, 1, MAX_LIMIT)
            elif key == "offset":
                q.offset = _int_param(key, value, 0, MAX_OFFSET)
            else:
                v = value.strip().lower()
                if v not in ("true", "false"):
                    raise QueryError(key, "must be 'true' or 'false'")
                q.fuzzy = v == "true"
            continue
        tag = resolve_tag(key)
        if tag is None:
            raise QueryError(key, "unknown query parameter or attribute")
        s = SEARCHABLE.get(tag)
        if s is None or _LEVEL_RANK[s.level] > _LEVEL_RANK[level]:
            raise QueryError(key, f"{keyword_of(tag)} is not a searchable attribute for {level} searches")
        if tag in seen_tags:
            raise QueryError(key, f"{s.keyword} given more than once")
        seen_tags.add(tag)
        q.filters.append(_parse_filter(key, s, tag, value))
    q.include_tags = list(include)
    if q.fuzzy:
        for f in q.filters:
            if f.kind == "pn" and f.match != "universal" and len(fuzzy_words(f.values[0])) > MAX_FUZZY_WORDS:
                raise QueryError(f.keyword, f"a fuzzy search takes at most {MAX_FUZZY_WORDS} distinct words")
    return q
