"""QIDO-RS query parameters (PS3.18 10.6.1) parsed into a QidoQuery the index can run.

Matching kinds follow PS3.4 C.2.2.2: single value, list of UIDs, universal, wildcard and range
matching; fuzzy matching of person names is word-prefix, case- and accent-insensitive.
Limits: `limit` defaults to 100 and may be at most 1000 (Azure allows 200; we can afford more).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Literal

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from dicomd.index.levels import Level

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_OFFSET = 2**31 - 1

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

TAG_STUDY_UID = "0020000D"
TAG_SERIES_UID = "0020000E"
TAG_SOP_UID = "00080018"


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


_HEX_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_DATE = re.compile(r"^\d{4}(\d{2}(\d{2})?)?$")
_TIME = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
_INT = re.compile(r"^[+-]?\d{1,10}$")


def resolve_tag(name: str) -> str | None:
    """ "PatientName" or "00100010" -> "00100010"; None when unknown."""
    if _HEX_TAG.match(name):
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
    if not _DATE.match(v):
        raise QueryError(param, f"'{value}' is not a date (YYYYMMDD, YYYYMM or YYYY)")
    # a partial date stands for its whole month/year; string order equals date order
    if len(v) == 4:
        return v + ("1231" if high else "0101")
    if len(v) == 6:
        return v + ("31" if high else "01")
    return v


def _time_bound(param: str, value: str, high: bool) -> str:
    v = value.strip().replace(":", "")
    head, _, frac = v.partition(".")
    fields = [int(head[i : i + 2]) for i in range(0, len(head), 2)] if _TIME.match(v) else [99]
    if any(n > limit for n, limit in zip(fields, (23, 59, 60), strict=False)):
        raise QueryError(param, f"'{value}' is not a time (HHMMSS.FFFFFF, partial allowed)")
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
    has_wild = "*" in value or "?" in value
    if s.kind == "uid":
        uids = tuple(u.strip() for u in re.split(r"[\\,]", value) if u.strip())
        for u in uids:
            if not _UID.match(u) or len(u) > 64:
                raise QueryError(param, f"'{u}' is not a UID (digits and dots, at most 64 characters)")
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
        if not _INT.match(value):
            raise QueryError(param, f"'{value}' is not an integer")
        return make("single", (str(int(value)),))
    if s.kind in ("cs", "modalities") and ("\\" in value or "," in value):
        items = tuple(v.strip() for v in re.split(r"[\\,]", value) if v.strip())
        if any("*" in v or "?" in v for v in items):
            raise QueryError(param, "wildcards cannot be combined with a list of values")
        return make("list", items)
    return make("wildcard" if has_wild else "single", (value,))


def _int_param(param: str, value: str, low: int, high: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise QueryError(param, f"'{value}' is not an integer") from None
    if not low <= n <= high:
        raise QueryError(param, f"must be between {low} and {high}")
    return n


def parse_qido(
    level: Level,
    params: list[tuple[str, str]],
    *,
    partition_key: int = 1,
    study_uid: str | None = None,
    series_uid: str | None = None,
    version: int = 2,
) -> QidoQuery:
    """Validate raw query pairs for a search at `level` (scope from the URL path) into a QidoQuery."""
    q = QidoQuery(level, partition_key, study_uid, series_uid, version=version)
    seen_params: set[str] = set()
    seen_tags: set[str] = set()
    include: list[str] = []
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
                if tag not in include:
                    include.append(tag)
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
    q.include_tags = include
    return q
