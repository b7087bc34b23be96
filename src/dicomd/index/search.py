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
The LIKE on a person name cannot use a B-tree index (leading '%'), so a name filter also narrows the
candidate studies through the study_name_key table (one row per folded component group and per
folded word of each study's names): a wildcard's literal prefix becomes a key range
  study_key IN (SELECT study_key FROM study_name_key
                WHERE partition_key = ? AND field = ? AND name_key >= 'DOE' AND name_key < 'DOF')
(an exact name: key = group; fuzzy: the longest query word as a range of word keys), and the LIKE
above stays the exact condition. Only a pattern without a literal prefix ('*SMITH', '?OE') scans the
partition's study rows. On PostgreSQL a name whose keys name many studies (counted up to a bound first)
is searched without the narrowing, in key order, stopping after the page (_name_keys_if_selective).
UID, ID, date and modality filters use indexes.

The page is chosen on keys alone (ORDER BY key LIMIT/OFFSET in a subquery) and only its rows are
joined back for their attrs, so an index range that matches many rows sorts integers, not rows. On
SQLite, which has no statistics on value ranges, a range on an indexed date column is first counted
up to a bound (a covering-index probe): a wide range is kept off its index (unary +), so that the scan
in key order stops after `limit` rows instead of reading and sorting every match.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import count
from typing import Any, Literal

import orjson
from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Integer,
    LargeBinary,
    Select,
    Table,
    bindparam,
    cast,
    exists,
    func,
    literal_column,
    select,
)
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import UnaryExpression

from dicomd.dicom.tags import (
    ACCESSION_NUMBER,
    BITS_ALLOCATED,
    COLUMNS,
    INSTANCE_NUMBER,
    MANUFACTURER_MODEL_NAME,
    MODALITY,
    NUMBER_OF_FRAMES,
    PATIENT_BIRTH_DATE,
    PATIENT_ID,
    PATIENT_NAME,
    PATIENT_SEX,
    PERFORMED_PROCEDURE_STEP_START_DATE,
    PERFORMED_PROCEDURE_STEP_START_TIME,
    REFERRING_PHYSICIAN_NAME,
    REQUEST_ATTRIBUTES_SEQUENCE,
    ROWS,
    SERIES_DESCRIPTION,
    SERIES_INSTANCE_UID,
    SERIES_NUMBER,
    SOP_CLASS_UID,
    SOP_INSTANCE_UID,
    SPECIFIC_CHARACTER_SET,
    STUDY_DATE,
    STUDY_DESCRIPTION,
    STUDY_ID,
    STUDY_INSTANCE_UID,
    STUDY_TIME,
    TIMEZONE_OFFSET_FROM_UTC,
)
from dicomd.index.compiled import CompiledStatements
from dicomd.index.levels import Level
from dicomd.index.normalize import MAX_NAME_KEY, fold, key_successor, pn_groups, pn_norm
from dicomd.index.qido import Filter, QidoQuery, fuzzy_words, vr_of
from dicomd.index.schema import (
    NAME_PATIENT_GROUP,
    NAME_PATIENT_WORD,
    NAME_REFERRING_GROUP,
    NAME_REFERRING_WORD,
    instance,
    series,
    study,
    study_name_key,
)

# the attributes a search computes rather than reads from the stored attrs (only this module uses them)
INSTANCE_AVAILABILITY = "00080056"
MODALITIES_IN_STUDY = "00080061"
NUMBER_OF_STUDY_RELATED_SERIES = "00201206"
NUMBER_OF_STUDY_RELATED_INSTANCES = "00201208"
NUMBER_OF_SERIES_RELATED_INSTANCES = "00201209"

# Default return attributes, PS3.18 Tables 10.6.3-3 (study), 10.6.3-4 (series), 10.6.3-5 (instance);
# StudyDescription and ManufacturerModelName added because Azure v2 and viewers expect them.
STUDY_DEFAULTS: tuple[str, ...] = (
    SPECIFIC_CHARACTER_SET,
    STUDY_DATE,
    STUDY_TIME,
    ACCESSION_NUMBER,
    INSTANCE_AVAILABILITY,
    MODALITIES_IN_STUDY,
    REFERRING_PHYSICIAN_NAME,
    TIMEZONE_OFFSET_FROM_UTC,
    STUDY_DESCRIPTION,
    PATIENT_NAME,
    PATIENT_ID,
    PATIENT_BIRTH_DATE,
    PATIENT_SEX,
    STUDY_INSTANCE_UID,
    STUDY_ID,
    NUMBER_OF_STUDY_RELATED_SERIES,
    NUMBER_OF_STUDY_RELATED_INSTANCES,
)
SERIES_DEFAULTS: tuple[str, ...] = (
    SPECIFIC_CHARACTER_SET,
    MODALITY,
    TIMEZONE_OFFSET_FROM_UTC,
    SERIES_DESCRIPTION,
    MANUFACTURER_MODEL_NAME,
    SERIES_INSTANCE_UID,
    SERIES_NUMBER,
    NUMBER_OF_SERIES_RELATED_INSTANCES,
    PERFORMED_PROCEDURE_STEP_START_DATE,
    PERFORMED_PROCEDURE_STEP_START_TIME,
    REQUEST_ATTRIBUTES_SEQUENCE,
)
INSTANCE_DEFAULTS: tuple[str, ...] = (
    SPECIFIC_CHARACTER_SET,
    SOP_CLASS_UID,
    SOP_INSTANCE_UID,
    INSTANCE_AVAILABILITY,
    TIMEZONE_OFFSET_FROM_UTC,
    INSTANCE_NUMBER,
    NUMBER_OF_FRAMES,
    ROWS,
    COLUMNS,
    BITS_ALLOCATED,
)

_ESCAPE = "!"
_TABLES: dict[Level, Table] = {"study": study, "series": series, "instance": instance}
_PN_WORDS_COLUMN = {
    "patient_name_norm": "patient_name_words",
    "referring_physician_name_norm": "referring_physician_name_words",
}
# study_name_key fields (group keys, word keys) of each person name column
_PN_KEY_FIELDS = {
    "patient_name_norm": (NAME_PATIENT_GROUP, NAME_PATIENT_WORD),
    "referring_physician_name_norm": (NAME_REFERRING_GROUP, NAME_REFERRING_WORD),
}
# range filters that an index (partition_key, column) can serve: probed on SQLite (_off_index_if_wide)
_PROBED_RANGES: frozenset[tuple[Level, str]] = frozenset(
    {
        ("study", "study_date"),
        ("study", "patient_birth_date"),
        ("series", "performed_procedure_step_start_date"),
    }
)
# a range matching at least this many times (limit + offset) rows is searched in key order instead
PROBE_FACTOR = 20
PROBE_MAX = 100_000


def _escape_like(text: str) -> str:
    return text.replace(_ESCAPE, _ESCAPE * 2).replace("%", _ESCAPE + "%").replace("_", _ESCAPE + "_")


def _wildcard_to_like(text: str) -> str:
    return _escape_like(text).replace("*", "%").replace("?", "_")


# -- filters as terms: the SQL structure (shape) apart from the bound values -----------------------

# "name=": (partition key, field, key) and "name^": (partition key, field, low, high) narrow a person
# name filter through study_name_key; "+>=" / "+<=" are range bounds kept off the column's index
Op = Literal["=", ">=", "<=", "+>=", "+<=", "like", "in", "name=", "name^"]


@dataclass(frozen=True, slots=True)
class Term:
    """One comparison `column <op> value(s)` of a filter; a filter matches when all its terms do."""

    op: Op
    column: str  # column of the filter's level table (ModalitiesInStudy: of the study's series)
    values: tuple[Any, ...]  # one value; several for "in" and the "name" ops


def _literal_prefix(pattern: str) -> str:
    """The part of a wildcard pattern before its first '*' or '?'."""
    for i, ch in enumerate(pattern):
        if ch in "*?":
            return pattern[:i]
    return pattern


def _name_key_term(column: str, partition_key: int, field: int, prefix: str) -> list[Term]:
    """The study_name_key range of keys starting with `prefix` (none: no narrowing possible)."""
    low = prefix[:MAX_NAME_KEY]
    high = key_successor(low) if low else None
    if high is None:
        return []
    return [Term("name^", column, (partition_key, field, low, high))]


def _pn_terms(f: Filter, fuzzy: bool, partition_key: int) -> list[Term]:
    value = f.values[0]
    group_field, word_field = _PN_KEY_FIELDS[f.column]
    if fuzzy:
        words = fuzzy_words(value)  # distinct: a repeated word is one more LIKE, not a narrower match
        words_col = _PN_WORDS_COLUMN[f.column]
        terms = [Term("like", words_col, ("% " + _escape_like(w) + "%",)) for w in words]
        if not words:
            return terms
        # every query word prefixes some word of the name: the longest narrows best
        longest = max(words, key=len)
        return _name_key_term(f.column, partition_key, word_field, longest) + terms
    if f.match == "wildcard":
        groups = [g for g in (fold(x).strip() for x in value.split("=")) if g]
        if len(groups) > 1:
            pattern = "=" + "=".join(_wildcard_to_like(g) for g in groups) + "="
        else:
            pattern = "%=" + _wildcard_to_like(groups[0]) + "=%"
        # each '=' of the pattern is a group boundary of the name, so every group's literal prefix
        # starts some group of a matching name
        prefix = max((_literal_prefix(g) for g in groups), key=len)
        return [
            *_name_key_term(f.column, partition_key, group_field, prefix),
            Term("like", f.column, (pattern,)),
        ]
    groups = pn_groups(value)
    if not groups:
        return [Term("=", f.column, ("",))] if "=" in value.strip("=") else []
    narrow = Term("name=", f.column, (partition_key, group_field, groups[0][:MAX_NAME_KEY]))
    if "=" in value.strip("="):
        # several component groups given: the whole name must match
        return [narrow, Term("=", f.column, (pn_norm(value),))]
    return [narrow, Term("like", f.column, ("%=" + _escape_like(groups[0]) + "=%",))]


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


def filter_terms(f: Filter, fuzzy: bool, partition_key: int) -> list[Term]:
    """The comparisons a filter stands for (none: it matches everything)."""
    if f.match == "universal":
        return []
    if f.kind == "pn":
        return _pn_terms(f, fuzzy, partition_key)
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


def bind(
    q: QidoQuery, modalities: bool, terms: Sequence[tuple[Filter, list[Term]]] | None = None
) -> tuple[Shape, list[Any]]:
    """The shape of a query and its parameter values in p0, p1... order.

    terms: the filters' terms when already computed (filter_terms), e.g. with some ranges kept off
    their index.
    """
    values: list[Any] = [q.partition_key]
    if q.study_uid is not None:
        values += [q.partition_key, q.study_uid]
    series_scope = q.series_uid is not None and q.level == "instance"
    if series_scope:
        values.append(q.series_uid)
    if terms is None:
        terms = [(f, filter_terms(f, q.fuzzy, q.partition_key)) for f in q.filters]
    filters: list[FilterShape] = []
    for f, f_terms in terms:
        if not f_terms:
            continue
        filters.append(
            (f.level, f.kind == "modalities", tuple((t.op, t.column, len(t.values)) for t in f_terms))
        )
        for t in f_terms:
            values += t.values
    values += [q.limit, q.offset]
    return Shape(q.level, q.study_uid is not None, series_scope, tuple(filters), modalities), values


def _term_condition(table: Any, column: str, op: Op, params: list[BindParameter[Any]]) -> ColumnElement[bool]:
    if op in ("name=", "name^"):
        # the candidate studies from the name keys (uncorrelated: evaluated once per query)
        nk = study_name_key
        where = [nk.c.partition_key == params[0], nk.c.field == params[1]]
        if op == "name=":
            where.append(nk.c.name_key == params[2])
        else:
            where += [nk.c.name_key >= params[2], nk.c.name_key < params[3]]
        return table.c.study_key.in_(select(nk.c.study_key).where(*where))  # type: ignore[no-any-return]
    col = table.c[column]
    if op == "in":
        return col.in_(params)  # type: ignore[no-any-return]
    (param,) = params
    if op == "like":
        return col.like(param, escape=_ESCAPE)  # type: ignore[no-any-return]
    if op in ("+>=", "+<="):
        # SQLite: a unary + keeps the comparison off the column's indexes
        col = UnaryExpression(col, operator=operators.custom_op("+"), type_=col.type)
        return (col >= param) if op == "+>=" else (col <= param)  # type: ignore[no-any-return]
    if op == ">=":
        return col >= param  # type: ignore[no-any-return]
    if op == "<=":
        return col <= param  # type: ignore[no-any-return]
    return col == param  # type: ignore[no-any-return]


# result columns, by position: study columns always, series columns for series/instance searches,
# instance columns for instance searches, then the study's modalities (when computed) last
COL_STUDY_KEY, COL_STUDY_ATTRS, COL_NUM_SERIES, COL_STUDY_INSTANCES = 0, 1, 2, 3
COL_SERIES_KEY, COL_SERIES_ATTRS, COL_SERIES_INSTANCES = 4, 5, 6
COL_INSTANCE_ATTRS = 8  # 7 is the instance key


def _attrs(table: Table, label: str, dialect: str) -> Any:
    # SQLite: the JSON as bytes (orjson parses them directly; no str decode and re-encode)
    if dialect == "sqlite":
        return cast(table.c.attrs, LargeBinary).label(label)
    return table.c.attrs.label(label)


def build_select(shape: Shape, dialect: str) -> Select[Any]:
    """The statement of a query shape, with bound parameters p0, p1... (see Shape).

    The page is selected on keys only (a subquery); its rows are then joined for their columns.
    """
    numbers = count()

    def param(type_: Any = None) -> BindParameter[Any]:
        return bindparam(f"p{next(numbers)}", type_=type_)

    conds: list[ColumnElement[bool]] = []
    key = {"study": "study_key", "series": "series_key", "instance": "instance_key"}[shape.level]
    level_table = _TABLES[shape.level]
    conds.append(level_table.c.partition_key == param())
    if shape.study_scope:
        conds += [study.c.partition_key == param(), study.c.study_instance_uid == param()]
    if shape.series_scope:
        conds.append(series.c.series_instance_uid == param())
    for level, on_modalities, terms in shape.filters:
        table = series.alias("mis") if on_modalities else _TABLES[level]
        parts = [_term_condition(table, column, op, [param() for _ in range(n)]) for op, column, n in terms]
        if on_modalities:
            # ModalitiesInStudy: some series of the study matches
            conds.append(
                exists(
                    select(literal_column("1"))
                    .select_from(table)
                    .where(table.c.study_key == level_table.c.study_key, *parts)
                )
            )
        else:
            conds += parts
    # the page joins only the tables its conditions use (every instance has its series and study)
    levels_used = {level for level, on_modalities, _ in shape.filters if not on_modalities}
    from_: Any = level_table
    if shape.level == "instance" and (shape.series_scope or "series" in levels_used):
        from_ = from_.join(series, instance.c.series_key == series.c.series_key)
    if shape.level != "study" and (shape.study_scope or "study" in levels_used):
        from_ = from_.join(study, level_table.c.study_key == study.c.study_key)
    page = (
        select(level_table.c[key])
        .select_from(from_)
        .where(*conds)
        .order_by(level_table.c[key])
        .limit(param(Integer()))
        .offset(param(Integer()))
        .subquery("page")
    )
    cols: list[Any] = [
        study.c.study_key,
        _attrs(study, "study_attrs", dialect),
        study.c.num_series,
        study.c.num_instances.label("study_num_instances"),
    ]
    rows: Any = page.join(level_table, level_table.c[key] == page.c[key])
    if shape.level in ("series", "instance"):
        cols += [
            series.c.series_key,
            _attrs(series, "series_attrs", dialect),
            series.c.num_instances.label("series_num_instances"),
        ]
    if shape.level == "instance":
        cols += [instance.c.instance_key, _attrs(instance, "instance_attrs", dialect)]
        rows = rows.join(series, series.c.series_key == instance.c.series_key)
    if shape.level != "study":
        rows = rows.join(study, study.c.study_key == level_table.c.study_key)
    if shape.modalities:
        # the distinct modalities of each result row's study, computed for the rows of the page only
        ms = series.alias("ms")
        aggregate = func.json_group_array if dialect == "sqlite" else func.array_agg
        cols.append(
            select(aggregate(ms.c.modality.distinct()))
            .where(ms.c.study_key == study.c.study_key, ms.c.modality.is_not(None))
            .scalar_subquery()
            .label("modalities")
        )
    return select(*cols).select_from(rows).order_by(page.c[key])


def _bounded_count(table: Table, conds: list[Any], numbers: Iterator[int]) -> Select[Any]:
    """Counts the rows of ``table`` matching ``conds`` up to a bound: the next two parameters are the
    limit and an offset (0: SQLAlchemy's SQLite dialect adds an OFFSET to every LIMIT)."""
    matches: Select[Any] = (
        select(literal_column("1"))
        .select_from(table)
        .where(*conds)
        .limit(bindparam(f"p{next(numbers)}", type_=Integer()))
        .offset(bindparam(f"p{next(numbers)}", type_=Integer()))
    )
    return select(func.count()).select_from(matches.subquery())


def _reaches_bound(
    statements: CompiledStatements,
    fetch: Fetch,
    q: QidoQuery,
    key: Any,
    build: Callable[[], Any],
    values: list[Any],
) -> bool:
    """Whether the bounded count ``build`` (cached under ``key``), given ``values``, reaches
    PROBE_FACTOR x (limit + offset): matches that many rows or more."""
    bound = min(PROBE_MAX, PROBE_FACTOR * (q.limit + q.offset))
    sql = statements.get(key, build)
    found = fetch(sql.sql, sql.params({f"p{i}": v for i, v in enumerate([*values, bound, 0])}))[0][0]
    return bool(found >= bound)


def _probe_select(table_name: str, column: str, low: bool, high: bool) -> Select[Any]:
    """Counts the rows of a range on an indexed column, up to a bound: p0 partition key, [p1 low],
    [p high], then the bound. Reads the covering index (partition_key, column) only."""
    numbers = count()
    table = {"study": study, "series": series}[table_name]
    col = table.c[column]
    conds = [table.c.partition_key == bindparam(f"p{next(numbers)}")]
    if low:
        conds.append(col >= bindparam(f"p{next(numbers)}"))
    if high:
        conds.append(col <= bindparam(f"p{next(numbers)}"))
    return _bounded_count(table, conds, numbers)


def _off_index_if_wide(
    statements: CompiledStatements, fetch: Fetch, q: QidoQuery, f: Filter, terms: list[Term]
) -> list[Term]:
    """SQLite: the terms of a range filter, kept off the column's index when the range is wide.

    SQLite knows how many rows an index holds, not how many fall in a range of values, and picks
    the index for any range. A wide range then reads (and sorts) every match where a scan in key
    order would stop after limit + offset rows. The probe counts the matches up to
    PROBE_FACTOR x (limit + offset): below that, the index path reads fewer rows than the scan
    would (at most that many index entries); above it, the scan reads at most 1/PROBE_FACTOR of
    the table before it has filled the page.
    """
    if f.match != "range" or (f.level, f.column) not in _PROBED_RANGES or not terms:
        return terms
    low, high = f.values
    key = ("qido_probe", f.level, f.column, bool(low), bool(high))
    build = functools.partial(_probe_select, f.level, f.column, bool(low), bool(high))
    if not _reaches_bound(
        statements, fetch, q, key, build, [q.partition_key, *(v for v in (low, high) if v)]
    ):
        return terms
    return [Term("+>=" if t.op == ">=" else "+<=", t.column, t.values) for t in terms]


def _name_keys_probe(exact: bool) -> Select[Any]:
    """Counts a filter's study_name_key rows up to a bound: p0 partition key, p1 field, p2 key (exact)
    or p2 low and p3 high (prefix), then the bound. Reads the primary key's b-tree only."""
    numbers = count()
    nk = study_name_key
    conds = [
        nk.c.partition_key == bindparam(f"p{next(numbers)}"),
        nk.c.field == bindparam(f"p{next(numbers)}"),
    ]
    if exact:
        conds.append(nk.c.name_key == bindparam(f"p{next(numbers)}"))
    else:
        conds += [
            nk.c.name_key >= bindparam(f"p{next(numbers)}"),
            nk.c.name_key < bindparam(f"p{next(numbers)}"),
        ]
    return _bounded_count(nk, conds, numbers)


def _name_keys_if_selective(
    statements: CompiledStatements, fetch: Fetch, q: QidoQuery, terms: list[Term]
) -> list[Term]:
    """PostgreSQL: a person name filter's narrowing through study_name_key, dropped when it names many
    studies (its exact terms stay).

    PostgreSQL joins every candidate study of the name keys, then sorts them for the page: a 3-letter
    prefix shared by 8% of 100k studies probed 8,400 study rows (75 ms). A scan in key order with the
    name's LIKE stops after limit + offset matches, reading about 1/8% as many rows (3.5 ms), but reads
    the whole table for a rare name: the probe counts the candidates up to PROBE_FACTOR x (limit +
    offset) and keeps the narrowing below that (SQLite plans both cases well by itself)."""

    def wide(term: Term) -> bool:
        if term.op not in ("name=", "name^"):
            return False
        exact = term.op == "name="
        key = ("qido_name_probe", exact)
        return _reaches_bound(
            statements, fetch, q, key, functools.partial(_name_keys_probe, exact), list(term.values)
        )

    return [t for t in terms if not wide(t)]


def requested_tags(q: QidoQuery) -> set[str]:
    """Tags a result must carry (when not includefield=all): defaults, matching keys, includefields."""
    tags: set[str] = {SPECIFIC_CHARACTER_SET, STUDY_INSTANCE_UID}
    if q.level == "study" or q.study_uid is None:
        tags.update(STUDY_DEFAULTS)
    if q.level in ("series", "instance"):
        tags.add(SERIES_INSTANCE_UID)
        if q.level == "series" or q.series_uid is None:
            tags.update(SERIES_DEFAULTS)
    if q.level == "instance":
        tags.add(SOP_INSTANCE_UID)
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
    terms = [(f, filter_terms(f, q.fuzzy, q.partition_key)) for f in q.filters]
    if statements.dialect_name == "sqlite":
        terms = [(f, _off_index_if_wide(statements, fetch, q, f, t)) for f, t in terms]
    else:
        terms = [(f, _name_keys_if_selective(statements, fetch, q, t)) for f, t in terms]
    shape, values = bind(q, wanted is None or MODALITIES_IN_STUDY in wanted, terms)
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
        merged[INSTANCE_AVAILABILITY] = {"vr": "CS", "Value": ["ONLINE"]}
        if shape.modalities:
            mods = modalities_cache.get(study_key)
            if mods is None:
                mods = modalities_cache[study_key] = _modalities_element(r[-1])
            merged[MODALITIES_IN_STUDY] = mods
        merged[NUMBER_OF_STUDY_RELATED_SERIES] = _count(r[COL_NUM_SERIES])
        merged[NUMBER_OF_STUDY_RELATED_INSTANCES] = _count(r[COL_STUDY_INSTANCES])
        if level != "study":
            merged[NUMBER_OF_SERIES_RELATED_INSTANCES] = _count(r[COL_SERIES_INSTANCES])
        # attrs JSON is UTF-8 text whatever the file's character set was
        merged[SPECIFIC_CHARACTER_SET] = {"vr": "CS", "Value": ["ISO_IR 192"]}
        if order is None:
            results.append(dict(sorted(merged.items())))
        else:
            results.append({t: merged.get(t) or empty for t, empty in order})
    return results
