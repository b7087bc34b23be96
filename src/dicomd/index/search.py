"""QIDO search: a QidoQuery becomes one SQL query over the indexed columns, rows become DICOM JSON.

A query is split into its *shape* (level, scope, the columns and comparison kinds of its filters,
list lengths...) and its bound values. The SQL of a shape is built and compiled once (the Index's
CompiledStatements cache); a search then only computes its values and runs the cached SQL text on
the DBAPI cursor, which keeps the per-request CPU far below SQLAlchemy statement construction and
cache-key generation (see compiled.py). ModalitiesInStudy is computed in the same statement (an
aggregate over the study's series, for the rows of the page only).

Filtering only touches typed, indexed columns (never the attrs JSON); attrs is parsed in Python for
the returned page only. Person name matching works on the folded columns (see normalize.py):
  exact     *_norm LIKE '%=DOE^JOHN=%'   (any of the alphabetic/ideographic/phonetic groups)
  wildcard  *_norm LIKE '%=DOE%=%'        (a '*' may in rare cases span two groups: documented gap)
  fuzzy     *_words LIKE '% JO%' AND ...  (every query word prefixes some name word)
Person name searches cannot use a B-tree index (leading '%'); they scan the partition's study rows,
which are far fewer than instances. UID, ID, date and modality filters use indexes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import count
from typing import Any, Literal

import orjson
from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Integer,
    Select,
    Table,
    bindparam,
    exists,
    func,
    literal_column,
    select,
)

from dicomd.index.compiled import CompiledStatements
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


# -- filters as terms: the SQL structure (shape) apart from the bound values -----------------------

Op = Literal["=", ">=", "<=", "like", "in"]


@dataclass(frozen=True, slots=True)
class Term:
    """One comparison `column <op> value(s)` of a filter; a filter matches when all its terms do."""

    op: Op
    column: str  # column of the filter's level table (ModalitiesInStudy: of the study's series)
    values: tuple[Any, ...]  # one value; several for "in"


def _pn_terms(f: Filter, fuzzy: bool) -> list[Term]:
    value = f.values[0]
    if fuzzy:
        words = query_words(value.replace("*", " ").replace("?", " "))
        words_col = _PN_WORDS_COLUMN[f.column]
        return [Term("like", words_col, ("% " + _escape_like(w) + "%",)) for w in words]
    if f.match == "wildcard":
        groups = [g for g in (fold(x).strip() for x in value.split("=")) if g]
        if len(groups) > 1:
            pattern = "=" + "=".join(_wildcard_to_like(g) for g in groups) + "="
        else:
            pattern = "%=" + _wildcard_to_like(groups[0]) + "=%"
        return [Term("like", f.column, (pattern,))]
    if "=" in value.strip("="):
        # several component groups given: the whole name must match
        return [Term("=", f.column, (pn_norm(value),))]
    groups = pn_groups(value)
    if not groups:
        return []
    return [Term("like", f.column, ("%=" + _escape_like(groups[0]) + "=%",))]


def _value_terms(column: str, f: Filter) -> list[Term]:
    if f.match == "universal":
        return []
    if f.match == "list":
        return [Term("in", column, tuple(f.values))]
    if f.match == "range":
        low, high = f.values
        terms = []
        if low:
            terms.append(Term(">=", column, (low,)))
        if high:
            terms.append(Term("<=", column, (high,)))
        return terms
    if f.match == "wildcard":
        return [Term("like", column, (_wildcard_to_like(f.values[0]),))]
    if f.kind == "int":
        return [Term("=", column, (int(f.values[0]),))]
    return [Term("=", column, (f.values[0],))]


def filter_terms(f: Filter, fuzzy: bool) -> list[Term]:
    """The comparisons a filter stands for (none: it matches everything)."""
    if f.match == "universal":
        return []
    if f.kind == "pn":
        return _pn_terms(f, fuzzy)
    return _value_terms(f.column, f)


# (level, ModalitiesInStudy?, ((op, column, number of values), ...)) of one filter with terms
FilterShape = tuple[Level, bool, tuple[tuple[Op, str, int], ...]]


@dataclass(frozen=True, slots=True)
class Shape:
    """Everything that decides the SQL text of a search; the values are bound separately.

    Parameters are numbered p0, p1... in this order: partition key, [study scope: partition key,
    study UID], [series scope: series UID], the filters' term values, limit, offset.
    """

    level: Level
    study_scope: bool
    series_scope: bool  # instance searches within a series
    filters: tuple[FilterShape, ...]
    modalities: bool  # compute ModalitiesInStudy per result row


def bind(q: QidoQuery, modalities: bool) -> tuple[Shape, list[Any]]:
    """The shape of a query and its parameter values in p0, p1... order."""
    values: list[Any] = [q.partition_key]
    if q.study_uid is not None:
        values += [q.partition_key, q.study_uid]
    series_scope = q.series_uid is not None and q.level == "instance"
    if series_scope:
        values.append(q.series_uid)
    filters: list[FilterShape] = []
    for f in q.filters:
        terms = filter_terms(f, q.fuzzy)
        if not terms:
            continue
        filters.append(
            (f.level, f.kind == "modalities", tuple((t.op, t.column, len(t.values)) for t in terms))
        )
        for t in terms:
            values += t.values
    values += [q.limit, q.offset]
    return Shape(q.level, q.study_uid is not None, series_scope, tuple(filters), modalities), values


def _term_condition(column: Any, op: Op, params: list[BindParameter[Any]]) -> ColumnElement[bool]:
    if op == "in":
        return column.in_(params)  # type: ignore[no-any-return]
    (param,) = params
    if op == "like":
        return column.like(param, escape=_ESCAPE)  # type: ignore[no-any-return]
    if op == ">=":
        return column >= param  # type: ignore[no-any-return]
    if op == "<=":
        return column <= param  # type: ignore[no-any-return]
    return column == param  # type: ignore[no-any-return]


# result columns, by position: study columns always, series columns for series/instance searches,
# instance columns for instance searches, then the study's modalities (when computed) last
COL_STUDY_KEY, COL_STUDY_ATTRS, COL_NUM_SERIES, COL_STUDY_INSTANCES = 0, 1, 2, 3
COL_SERIES_KEY, COL_SERIES_ATTRS, COL_SERIES_INSTANCES = 4, 5, 6
COL_INSTANCE_ATTRS = 8  # 7 is the instance key


def build_select(shape: Shape, dialect: str) -> Select[Any]:
    """The statement of a query shape, with bound parameters p0, p1... (see Shape)."""
    numbers = count()

    def param(type_: Any = None) -> BindParameter[Any]:
        return bindparam(f"p{next(numbers)}", type_=type_)

    cols: list[Any] = [
        study.c.study_key,
        study.c.attrs.label("study_attrs"),
        study.c.num_series,
        study.c.num_instances.label("study_num_instances"),
    ]
    conds: list[ColumnElement[bool]] = []
    if shape.level == "study":
        from_: Any = study
        key = "study_key"
    elif shape.level == "series":
        from_ = series.join(study, series.c.study_key == study.c.study_key)
        key = "series_key"
    else:
        from_ = instance.join(series, instance.c.series_key == series.c.series_key).join(
            study, instance.c.study_key == study.c.study_key
        )
        key = "instance_key"
    if shape.level in ("series", "instance"):
        cols += [
            series.c.series_key,
            series.c.attrs.label("series_attrs"),
            series.c.num_instances.label("series_num_instances"),
        ]
    if shape.level == "instance":
        cols += [instance.c.instance_key, instance.c.attrs.label("instance_attrs")]
    level_table = _TABLES[shape.level]
    conds.append(level_table.c.partition_key == param())
    if shape.study_scope:
        conds += [study.c.partition_key == param(), study.c.study_instance_uid == param()]
    if shape.series_scope:
        conds.append(series.c.series_instance_uid == param())
    for level, on_modalities, terms in shape.filters:
        table = series.alias("mis") if on_modalities else _TABLES[level]
        parts = [_term_condition(table.c[column], op, [param() for _ in range(n)]) for op, column, n in terms]
        if on_modalities:
            # ModalitiesInStudy: some series of the study matches
            conds.append(
                exists(
                    select(literal_column("1"))
                    .select_from(table)
                    .where(table.c.study_key == study.c.study_key, *parts)
                )
            )
        else:
            conds += parts
    page = (
        select(*cols)
        .select_from(from_)
        .where(*conds)
        .order_by(level_table.c[key])
        .limit(param(Integer()))
        .offset(param(Integer()))
    )
    if not shape.modalities:
        return page
    # the distinct modalities of each result row's study, computed for the rows of the page only
    rows = page.subquery("page")
    ms = series.alias("ms")
    aggregate = func.json_group_array if dialect == "sqlite" else func.array_agg
    modalities = (
        select(aggregate(ms.c.modality.distinct()))
        .where(ms.c.study_key == rows.c.study_key, ms.c.modality.is_not(None))
        .scalar_subquery()
    )
    return select(*rows.c, modalities.label("modalities")).order_by(rows.c[key])


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


def _count(n: int) -> dict[str, Any]:
    return {"vr": "IS", "Value": [n]}


def _modalities_element(raw: Any) -> dict[str, Any]:
    # SQLite: a JSON array (text); PostgreSQL: an array, NULL when the study has no modality
    found = orjson.loads(raw) if isinstance(raw, str) else raw or ()
    mods = sorted({m for m in found if m})
    return {"vr": "CS", "Value": mods} if mods else {"vr": "CS"}


Fetch = Callable[[str, Any], Sequence[Sequence[Any]]]


def run_search(statements: CompiledStatements, fetch: Fetch, q: QidoQuery) -> list[dict[str, Any]]:
    """Run a QIDO query: `fetch(sql, params)` executes one statement and returns its rows."""
    wanted = None if q.include_all else requested_tags(q)
    shape, values = bind(q, modalities=wanted is None or TAG_MODALITIES in wanted)
    sql = statements.get(("qido", shape), lambda: build_select(shape, statements.dialect_name))
    rows = fetch(sql.sql, sql.params({f"p{i}": v for i, v in enumerate(values)}))
    if not rows:
        return []
    # result keys in tag order, with the placeholder of each absent attribute
    order = None if wanted is None else [(t, {"vr": vr_of(t)}) for t in sorted(wanted)]
    level = q.level
    results: list[dict[str, Any]] = []
    # many rows of a page share their study/series: parse those attrs once
    study_cache: dict[int, dict[str, Any]] = {}
    series_cache: dict[int, dict[str, Any]] = {}
    modalities_cache: dict[int, dict[str, Any]] = {}
    for r in rows:
        study_key = r[COL_STUDY_KEY]
        study_attrs = study_cache.get(study_key)
        if study_attrs is None:
            study_attrs = study_cache[study_key] = orjson.loads(r[COL_STUDY_ATTRS])
        merged = dict(study_attrs)
        if level != "study":
            series_key = r[COL_SERIES_KEY]
            series_attrs = series_cache.get(series_key)
            if series_attrs is None:
                series_attrs = series_cache[series_key] = orjson.loads(r[COL_SERIES_ATTRS])
            merged.update(series_attrs)
            if level == "instance":
                merged.update(orjson.loads(r[COL_INSTANCE_ATTRS]))
        merged[TAG_AVAILABILITY] = {"vr": "CS", "Value": ["ONLINE"]}
        if shape.modalities:
            mods = modalities_cache.get(study_key)
            if mods is None:
                mods = modalities_cache[study_key] = _modalities_element(r[-1])
            merged[TAG_MODALITIES] = mods
        merged[TAG_STUDY_SERIES] = _count(r[COL_NUM_SERIES])
        merged[TAG_STUDY_INSTANCES] = _count(r[COL_STUDY_INSTANCES])
        if level != "study":
            merged[TAG_SERIES_INSTANCES] = _count(r[COL_SERIES_INSTANCES])
        # attrs JSON is UTF-8 text whatever the file's character set was
        merged[TAG_CHARSET] = {"vr": "CS", "Value": ["ISO_IR 192"]}
        if order is None:
            results.append(dict(sorted(merged.items())))
        else:
            results.append({t: merged.get(t) or empty for t, empty in order})
    return results
