"""The rows of one group commit: look up what is indexed already, then insert and update the study,
series, instance, name-key, change-feed and deleted-object rows (Index.add_instances).

Runs inside the writer lock, on the write transaction's DBAPI cursor with precompiled SQL
(compiled.py): SQLAlchemy's per-statement execution would cost more CPU than the SQL itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import BindParameter, Select, Table, bindparam, delete, insert, select, update

from dicomd.index import deleted_objects
from dicomd.index.compiled import CompiledStatements, insert_many
from dicomd.index.rows import NAME_KEY_COLUMNS, SERIES_VALUE_COLUMNS, STUDY_VALUE_COLUMNS, study_name_keys
from dicomd.index.schema import (
    changefeed,
    instance,
    series,
    study,
    study_name_key,
    study_series_instance,
)
from dicomd.index.types import Action, AddResult, NewInstance, PreparedInstance, SameFile

_STUDY_KEY = "study_key"
_SERIES_KEY = "series_key"
# a study's and a series' stored values come along: an UPDATE sets only what an instance changes.
# Setting an indexed column, even to its value, rewrites that index's entry: one WAL page per index (7
# for a study and its series) in every commit that adds to a known study, and PostgreSQL could not
# update the row in place (HOT). The study's stored name keys derive from its name columns (see
# _sync_name_keys).
_LOOKUPS: dict[str, Callable[[], Select[Any]]] = {
    _STUDY_KEY: lambda: select(study.c.study_key, *(study.c[c] for c in STUDY_VALUE_COLUMNS)).where(
        study.c.partition_key == bindparam("pk"), study.c.study_instance_uid == bindparam("uid")
    ),
    _SERIES_KEY: lambda: select(series.c.series_key, *(series.c[c] for c in SERIES_VALUE_COLUMNS)).where(
        series.c.partition_key == bindparam("pk"),
        series.c.study_key == bindparam("study_key"),
        series.c.series_instance_uid == bindparam("uid"),
    ),
}

# IN lists of the write path: chunks of at most _IN_CHUNK values, padded (by repeating the last one) to
# a power of two, so that a few compiled statements serve every length
_IN_CHUNK = 512


@dataclass(slots=True)
class _Known:
    """A SOP instance already in the index or added earlier in the same batch."""

    study_uid: str
    series_uid: str
    object_key: str
    instance_key: int | None  # None: pending insert (row dict below)
    pending: dict[str, Any] | None
    study_key: int
    series_key: int
    file_size: int


@dataclass(slots=True)
class WriteBatch:
    """One group commit's writes: prefetch() the indexed instances, add() each instance (which
    decides its AddResult and writes its study and series rows), then flush() the rest."""

    cur: Any  # DBAPI cursor of the write transaction
    statements: CompiledStatements
    now: int
    studies: dict[tuple[int, str], int] = field(default_factory=dict)
    series: dict[tuple[int, str], int] = field(default_factory=dict)
    known: dict[tuple[int, str], _Known] = field(default_factory=dict)
    study_updates: dict[int, dict[str, Any]] = field(default_factory=dict)
    series_updates: dict[int, dict[str, Any]] = field(default_factory=dict)
    study_delta: dict[int, list[int]] = field(default_factory=dict)  # key -> [series, instances]
    series_delta: dict[int, int] = field(default_factory=dict)
    inserts: list[dict[str, Any]] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    study_partitions: dict[int, int] = field(default_factory=dict)  # study key -> partition key
    # the value columns of each study and series as the row holds them (inserted by this batch or not)
    stored_studies: dict[int, dict[str, Any]] = field(default_factory=dict)
    stored_series: dict[int, dict[str, Any]] = field(default_factory=dict)
    inserted_studies: set[int] = field(default_factory=set)  # no name keys stored for them yet

    def prefetch(self, items: list[PreparedInstance]) -> None:
        """Load the already indexed SOP instances of a batch with one query per partition chunk."""
        wanted: dict[int, set[str]] = {}
        for prepared in items:
            item = prepared.item
            wanted.setdefault(item.partition_key, set()).add(item.parsed.sop_instance_uid)
        for pk, sops in wanted.items():
            ordered = sorted(sops)
            for start in range(0, len(ordered), _IN_CHUNK):
                chunk = ordered[start : start + _IN_CHUNK]
                rows = _select_in(self.cur, self.statements, _lookup_instances, chunk, pk=pk)
                for key, sop_uid, object_key, study_key, series_key, study_uid, series_uid, size in rows:
                    self.known[(pk, sop_uid)] = _Known(
                        study_uid, series_uid, object_key, key, None, study_key, series_key, size
                    )

    def _study_key(self, pk: int, uid: str, values: dict[str, Any]) -> int:
        key = self.studies.get((pk, uid))
        if key is None:
            row = self._row(_STUDY_KEY, {"pk": pk, "uid": uid})
            if row is not None:
                key = row[0]
                stored = dict(zip(STUDY_VALUE_COLUMNS, row[1:], strict=True))
            else:
                key = self._insert_key(
                    study,
                    {
                        "partition_key": pk,
                        "study_instance_uid": uid,
                        "created_at": self.now,
                        "updated_at": self.now,
                        "num_series": 0,
                        "num_instances": 0,
                        **values,
                    },
                )
                stored = dict(values)
                self.inserted_studies.add(key)
            self.stored_studies[key] = stored
            self.studies[(pk, uid)] = key
            self.study_partitions[key] = pk
        self.study_updates[key] = values
        return key

    def _series_key(self, pk: int, study_key: int, uid: str, values: dict[str, Any]) -> int:
        key = self.series.get((study_key, uid))
        if key is None:
            row = self._row(_SERIES_KEY, {"pk": pk, "study_key": study_key, "uid": uid})
            if row is not None:
                key = row[0]
                self.stored_series[key] = dict(zip(SERIES_VALUE_COLUMNS, row[1:], strict=True))
            else:
                key = self._insert_key(
                    series,
                    {
                        "partition_key": pk,
                        "study_key": study_key,
                        "series_instance_uid": uid,
                        "created_at": self.now,
                        "updated_at": self.now,
                        "num_instances": 0,
                        **values,
                    },
                )
                self.stored_series[key] = dict(values)
                self.study_delta.setdefault(study_key, [0, 0])[0] += 1
            self.series[(study_key, uid)] = key
        self.series_updates[key] = values
        return key

    def _change(self, item: NewInstance, action: Action) -> None:
        p = item.parsed
        self.changes.append(
            {
                "partition_key": item.partition_key,
                "study_instance_uid": p.study_instance_uid,
                "series_instance_uid": p.series_instance_uid,
                "sop_instance_uid": p.sop_instance_uid,
                "action": action,
                "timestamp": self.now,
                "object_key": item.object_key,
            }
        )

    def add(self, prepared: PreparedInstance, overwrite: bool, same_file: SameFile | None) -> AddResult:
        item = prepared.item
        p = item.parsed
        pk = item.partition_key
        known = self.known.get((pk, p.sop_instance_uid))
        if known is not None:
            if known.study_uid != p.study_instance_uid or known.series_uid != p.series_instance_uid:
                return AddResult("conflict")
            # a re-send (a router retrying after a timeout) changes nothing; the sizes rule most
            # different files out before any byte is read
            if (
                same_file is not None
                and known.file_size == item.file_size
                and same_file(known.object_key, item.object_key)
            ):
                return AddResult("identical")
            if not overwrite:
                return AddResult("exists")
        study_key = self._study_key(pk, p.study_instance_uid, prepared.study)
        series_key = self._series_key(pk, study_key, p.series_instance_uid, prepared.series)
        values = {**prepared.instance, "updated_at": self.now}
        if known is not None:
            old_key = known.object_key
            if known.pending is not None:
                known.pending.update(values)
            else:
                assert known.instance_key is not None
                self._update(instance, known.instance_key, {}, prepared.instance)
            known.object_key = item.object_key
            known.file_size = item.file_size
            self.deleted.append(old_key)
            self._change(item, "Update")
            return AddResult("replaced", old_key)
        row = {
            "partition_key": pk,
            "study_key": study_key,
            "series_key": series_key,
            "sop_instance_uid": p.sop_instance_uid,
            "created_at": self.now,
            **values,
        }
        self.inserts.append(row)
        self.known[(pk, p.sop_instance_uid)] = _Known(
            p.study_instance_uid,
            p.series_instance_uid,
            item.object_key,
            None,
            row,
            study_key,
            series_key,
            item.file_size,
        )
        self.study_delta.setdefault(study_key, [0, 0])[1] += 1
        self.series_delta[series_key] = self.series_delta.get(series_key, 0) + 1
        self._change(item, "Create")
        return AddResult("created")

    def flush(self) -> None:
        if self.inserts:
            insert_many(self.cur, self.statements, instance, self.inserts)
        for key in self.study_updates.keys() | self.study_delta.keys():
            d_series, d_instances = self.study_delta.get(key, (0, 0))
            self._update(
                study,
                key,
                {"num_series": d_series, "num_instances": d_instances},
                _changed(study, self.stored_studies[key], self.study_updates.get(key, {})),
            )
        self._sync_name_keys()
        for key in self.series_updates.keys() | self.series_delta.keys():
            self._update(
                series,
                key,
                {"num_instances": self.series_delta.get(key, 0)},
                _changed(series, self.stored_series[key], self.series_updates.get(key, {})),
            )
        deleted_objects.enqueue(self.cur, self.statements, self.deleted, self.now)
        if self.changes:
            insert_many(self.cur, self.statements, changefeed, self.changes)

    def _sync_name_keys(self) -> None:
        """Make the study_name_key rows of the studies written by this batch match their new names.

        The stored keys derive from the stored name columns (read with the study key), so only the
        keys of a name that changed are written, without reading the key table.
        """
        removed: list[dict[str, Any]] = []
        added: list[dict[str, Any]] = []
        for key, values in self.study_updates.items():
            inserted = key in self.inserted_studies
            stored = self.stored_studies[key]
            if not inserted and all(stored.get(c) == values.get(c) for c in NAME_KEY_COLUMNS):
                continue  # the names are as stored: so are their keys (most stores into a known study)
            pk = self.study_partitions[key]
            keys = study_name_keys(values)
            old = set() if inserted else study_name_keys(stored)
            for target, diff in ((removed, old - keys), (added, keys - old)):
                target += [
                    {"partition_key": pk, "field": f, "name_key": v, "study_key": key}
                    for f, v in sorted(diff)
                ]
        if removed:
            sql = self.statements.get("delete_name_key", _delete_name_key)
            self.cur.executemany(sql.sql, [sql.params(r) for r in removed])
        if added:
            insert_many(self.cur, self.statements, study_name_key, added)

    def _row(self, name: str, values: dict[str, Any]) -> Any:
        sql = self.statements.get(name, _LOOKUPS[name])
        self.cur.execute(sql.sql, sql.params(values))
        return self.cur.fetchone()

    def _insert_key(self, table: Table, row: dict[str, Any]) -> int:
        """INSERT one row; returns its generated primary key."""
        columns = tuple(row)
        key_column = table.primary_key.columns.values()[0]
        sql = self.statements.get(
            ("insert_returning", table.name, columns),
            lambda: insert(table).returning(key_column),
            insert_columns=columns,
        )
        self.cur.execute(sql.sql, sql.params(row))
        return int(self.cur.fetchone()[0])

    def _update(self, table: Table, key: int, deltas: dict[str, int], values: dict[str, Any]) -> None:
        """UPDATE one row by primary key: add `deltas` to counters, set updated_at and `values`."""
        key_column = table.primary_key.columns.values()[0]
        shape = ("update", table.name, tuple(deltas), tuple(values))

        def build() -> Any:
            return (
                update(table)
                .where(key_column == bindparam("key"))
                .values(
                    {
                        **{c: table.c[c] + bindparam("d_" + c) for c in deltas},
                        "updated_at": bindparam("now"),
                        **{c: bindparam("v_" + c) for c in values},
                    }
                )
            )

        sql = self.statements.get(shape, build)
        params: dict[str, Any] = {"key": key, "now": self.now}
        params.update({"d_" + c: n for c, n in deltas.items()})
        params.update({"v_" + c: v for c, v in values.items()})
        self.cur.execute(sql.sql, sql.params(params))


def _changed(table: Table, stored: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """What the UPDATE of a known study or series row sets of ``values``: nothing when the row holds them
    all; the columns no index covers when only such columns differ; else all of them. Three statement
    shapes per table whatever an instance changes (each shape is compiled and cached)."""
    differ = [column for column, value in values.items() if stored.get(column, _UNKNOWN) != value]
    if not differ:
        return {}
    indexed = _indexed_columns(table)
    if indexed.isdisjoint(differ):
        return {column: value for column, value in values.items() if column not in indexed}
    return values


_UNKNOWN = object()  # a column the stored values lack: set it


@functools.cache
def _indexed_columns(table: Table) -> frozenset[str]:
    return frozenset(column.name for index in table.indexes for column in index.columns)


def _select_in(
    cur: Any,
    statements: CompiledStatements,
    build: Callable[[int], Select[Any]],
    values: list[Any],
    **fixed: Any,
) -> Any:
    """Rows of the statement `build(size)`, whose IN list has `size` parameters, for these values."""
    size = 1 << (len(values) - 1).bit_length()
    sql = statements.get((build.__name__, size), lambda: build(size))
    params = {f"in{i}": values[min(i, len(values) - 1)] for i in range(size)}
    cur.execute(sql.sql, sql.params({**params, **fixed}))
    return cur.fetchall()


def _in_params(size: int) -> list[BindParameter[Any]]:
    return [bindparam(f"in{i}") for i in range(size)]


def _lookup_instances(size: int) -> Select[Any]:
    return (
        select(
            instance.c.instance_key,
            instance.c.sop_instance_uid,
            instance.c.object_key,
            instance.c.study_key,
            instance.c.series_key,
            study.c.study_instance_uid,
            series.c.series_instance_uid,
            instance.c.file_size,
        )
        .select_from(study_series_instance)
        .where(instance.c.partition_key == bindparam("pk"), instance.c.sop_instance_uid.in_(_in_params(size)))
    )


def _delete_name_key() -> Any:
    nk = study_name_key.c
    return delete(study_name_key).where(
        nk.partition_key == bindparam("partition_key"),
        nk.field == bindparam("field"),
        nk.name_key == bindparam("name_key"),
        nk.study_key == bindparam("study_key"),
    )
