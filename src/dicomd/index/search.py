"""QIDO search: a QidoQuery becomes one SQL query over the indexed columns, rows become DICOM JSON.

Filtering only touches typed, indexed columns (never the attrs JSON); attrs is parsed in Python for
the returned page only. Person name matching works on the folded columns (see normalize.py):
  exact     *_norm LIKE '%=DOE^JOHN=%'   (any of the alphabetic/ideographic/phonetic groups)
  wildcard  *_norm LIKE '%=DOE%=%'        (a '*' may in rare cases span two groups: documented gap)
  fuzzy     *_words LIKE '% JO%' AND ...  (every query word prefixes some name word)
Person name searches cannot use a B-tree index (leading '%'); they scan the partition's study rows,
which are far fewer than instances. UID, ID, date and modality filters use indexes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Connection, Select, Table, and_, exists, literal, select

from dicomd.index.levels import Level
from dicomd.index.normalize import fold, pn_groups, pn_norm, query_words
from dicomd.index.qido import (
    TAG_SERIES_UID,
    TAG_SOP_UID,
    TAG_STUDY_UID,
    Filter,
    QidoQuery,
    vr_of,
)
from dicomd.index.schema import instance, series, study

TAG_CHARSET = "00080005"
TAG_AVAILABILITY = "00080056"
TAG_MODALITIES = "00080061"
TAG_STUDY_SERIES = "00201206"
TAG_STUDY_INSTANCES = "00201208"
TAG_SERIES_INSTANCES = "00201209"

# Default return attributes, PS3.18 Tables 10.6.3-3 (study), 10.6.3-4 (series), 10.6.3-5 (instance);
# StudyDescription and ManufacturerModelName added because Azure v2 and viewers expect them.
STUDY_DEFAULTS: tuple[str, ...] = (
    TAG_CHARSET,
    "00080020",  # StudyDate
    "00080030",  # StudyTime
    "00080050",  # AccessionNumber
    TAG_AVAILABILITY,
    TAG_MODALITIES,
    "00080090",  # ReferringPhysicianName
    "00080201",  # TimezoneOffsetFromUTC
    "00081030",  # StudyDescription
    "00100010",  # PatientName
    "00100020",  # PatientID
    "00100030",  # PatientBirthDate
    "00100040",  # PatientSex
    TAG_STUDY_UID,
    "00200010",  # StudyID
    TAG_STUDY_SERIES,
    TAG_STUDY_INSTANCES,
)
SERIES_DEFAULTS: tuple[str, ...] = (
    TAG_CHARSET,
    "00080060",  # Modality
    "00080201",  # TimezoneOffsetFromUTC
    "0008103E",  # SeriesDescription
    "00081090",  # ManufacturerModelName
    TAG_SERIES_UID,
    "00200011",  # SeriesNumber
    TAG_SERIES_INSTANCES,
    "00400244",  # PerformedProcedureStepStartDate
    "00400245",  # PerformedProcedureStepStartTime
    "00400275",  # RequestAttributesSequence
)
INSTANCE_DEFAULTS: tuple[str, ...] = (
    TAG_CHARSET,
    "00080016",  # SOPClassUID
    TAG_SOP_UID,
    TAG_AVAILABILITY,
    "00080201",  # TimezoneOffsetFromUTC
    "00200013",  # InstanceNumber
    "00280008",  # NumberOfFrames
    "00280010",  # Rows
    "00280011",  # Columns
    "00280100",  # BitsAllocated
)

_ESCAPE = "!"
_TABLES: dict[Level, Table] = {"study": study, "series": series, "instance": instance}
_PN_WORDS_COLUMN = {
    "patient_name_norm": "patient_name_words",
    "referring_physician_name_norm": "referring_physician_name_words",
}


def _escape_like(text: str) -> str:
    return text.replace(_ESCAPE, _ESCAPE * 2).replace("%", _ESCAPE + "%").replace("_", _ESCAPE + "_")


def _wildcard_to_like(text: str) -> str:
    return _escape_like(text).replace("*", "%").replace("?", "_")


def _pn_condition(f: Filter, fuzzy: bool) -> ColumnElement[bool] | None:
    table = _TABLES[f.level]
    norm = table.c[f.column]
    value = f.values[0]
    if fuzzy:
        words = query_words(value.replace("*", " ").replace("?", " "))
        if not words:
            return None
        words_col = table.c[_PN_WORDS_COLUMN[f.column]]
        return and_(*(words_col.like("% " + _escape_like(w) + "%", escape=_ESCAPE) for w in words))
    if f.match == "wildcard":
        groups = [g for g in (fold(x).strip() for x in value.split("=")) if g]
        if len(groups) > 1:
            return norm.like("=" + "=".join(_wildcard_to_like(g) for g in groups) + "=", escape=_ESCAPE)
        return norm.like("%=" + _wildcard_to_like(groups[0]) + "=%", escape=_ESCAPE)
    if "=" in value.strip("="):
        # several component groups given: the whole name must match
        return norm == pn_norm(value)
    groups = pn_groups(value)
    if not groups:
        return None
    return norm.like("%=" + _escape_like(groups[0]) + "=%", escape=_ESCAPE)


def _value_condition(column: Any, f: Filter) -> ColumnElement[bool] | None:
    if f.match == "universal":
        return None
    if f.match == "list":
        return column.in_(list(f.values))  # type: ignore[no-any-return]
    if f.match == "range":
        low, high = f.values
        parts = []
        if low:
            parts.append(column >= low)
        if high:
            parts.append(column <= high)
        return and_(*parts)
    if f.match == "wildcard":
        return column.like(_wildcard_to_like(f.values[0]), escape=_ESCAPE)  # type: ignore[no-any-return]
    if f.kind == "int":
        return column == int(f.values[0])  # type: ignore[no-any-return]
    return column == f.values[0]  # type: ignore[no-any-return]


def filter_condition(f: Filter, fuzzy: bool) -> ColumnElement[bool] | None:
    if f.match == "universal":
        return None
    if f.kind == "pn":
        return _pn_condition(f, fuzzy)
    if f.kind == "modalities":
        other = series.alias("mis")
        cond = _value_condition(other.c.modality, f)
        assert cond is not None  # universal was handled above
        return exists(
            select(literal(1)).select_from(other).where(other.c.study_key == study.c.study_key, cond)
        )
    return _value_condition(_TABLES[f.level].c[f.column], f)


def build_select(q: QidoQuery) -> Select[Any]:
    cols: list[Any] = [
        study.c.study_key,
        study.c.attrs.label("study_attrs"),
        study.c.num_series,
        study.c.num_instances.label("study_num_instances"),
    ]
    conds: list[ColumnElement[bool]] = []
    if q.level == "study":
        from_: Any = study
        key = study.c.study_key
    elif q.level == "series":
        from_ = series.join(study, series.c.study_key == study.c.study_key)
        key = series.c.series_key
    else:
        from_ = instance.join(series, instance.c.series_key == series.c.series_key).join(
            study, instance.c.study_key == study.c.study_key
        )
        key = instance.c.instance_key
    if q.level in ("series", "instance"):
        cols += [
            series.c.series_key,
            series.c.attrs.label("series_attrs"),
            series.c.num_instances.label("series_num_instances"),
        ]
    if q.level == "instance":
        cols += [instance.c.instance_key, instance.c.attrs.label("instance_attrs")]
    conds.append(_TABLES[q.level].c.partition_key == q.partition_key)
    if q.study_uid is not None:
        conds += [study.c.partition_key == q.partition_key, study.c.study_instance_uid == q.study_uid]
    if q.series_uid is not None and q.level == "instance":
        conds.append(series.c.series_instance_uid == q.series_uid)
    for f in q.filters:
        cond = filter_condition(f, q.fuzzy)
        if cond is not None:
            conds.append(cond)
    return select(*cols).select_from(from_).where(*conds).order_by(key).limit(q.limit).offset(q.offset)


def requested_tags(q: QidoQuery) -> set[str]:
    """Tags a result must carry (when not includefield=all): defaults, matching keys, includefields."""
    tags: set[str] = {TAG_CHARSET, TAG_STUDY_UID}
    if q.level == "study" or q.study_uid is None:
        tags.update(STUDY_DEFAULTS)
    if q.level in ("series", "instance"):
        tags.add(TAG_SERIES_UID)
        if q.level == "series" or q.series_uid is None:
            tags.update(SERIES_DEFAULTS)
    if q.level == "instance":
        tags.add(TAG_SOP_UID)
        tags.update(INSTANCE_DEFAULTS)
    tags.update(f.tag for f in q.filters)
    tags.update(q.include_tags)
    return tags


def _modalities(conn: Connection, study_keys: Iterable[int]) -> dict[int, list[str]]:
    keys = sorted(set(study_keys))
    found: dict[int, set[str]] = {k: set() for k in keys}
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        rows = conn.execute(
            select(series.c.study_key, series.c.modality)
            .where(series.c.study_key.in_(chunk), series.c.modality.is_not(None))
            .distinct()
        )
        for k, modality in rows:
            if modality:
                found[k].add(modality)
    return {k: sorted(v) for k, v in found.items()}


def _count(n: int) -> dict[str, Any]:
    return {"vr": "IS", "Value": [n]}


def run_search(conn: Connection, q: QidoQuery) -> list[dict[str, Any]]:
    rows: Sequence[Any] = conn.execute(build_select(q)).all()
    if not rows:
        return []
    wanted = None if q.include_all else requested_tags(q)
    modalities: dict[int, list[str]] = {}
    if wanted is None or TAG_MODALITIES in wanted:
        modalities = _modalities(conn, (r.study_key for r in rows))
    results: list[dict[str, Any]] = []
    # many rows of a page share their study/series: parse those attrs once
    study_cache: dict[int, dict[str, Any]] = {}
    series_cache: dict[int, dict[str, Any]] = {}
    for r in rows:
        if r.study_key not in study_cache:
            study_cache[r.study_key] = orjson.loads(r.study_attrs)
        merged = dict(study_cache[r.study_key])
        if q.level != "study":
            if r.series_key not in series_cache:
                series_cache[r.series_key] = orjson.loads(r.series_attrs)
            merged.update(series_cache[r.series_key])
        if q.level == "instance":
            merged.update(orjson.loads(r.instance_attrs))
        merged[TAG_AVAILABILITY] = {"vr": "CS", "Value": ["ONLINE"]}
        if r.study_key in modalities:
            mods = modalities[r.study_key]
            merged[TAG_MODALITIES] = {"vr": "CS", "Value": mods} if mods else {"vr": "CS"}
        merged[TAG_STUDY_SERIES] = _count(r.num_series)
        merged[TAG_STUDY_INSTANCES] = _count(r.study_num_instances)
        if q.level != "study":
            merged[TAG_SERIES_INSTANCES] = _count(r.series_num_instances)
        # attrs JSON is UTF-8 text whatever the file's character set was
        merged[TAG_CHARSET] = {"vr": "CS", "Value": ["ISO_IR 192"]}
        out = merged if wanted is None else {t: merged.get(t) or {"vr": vr_of(t)} for t in wanted}
        results.append(dict(sorted(out.items())))
    return results
