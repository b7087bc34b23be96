"""The SQL index: studies/series/instances, change feed and the deleted-object queue.

One code path for SQLite and PostgreSQL (SQLAlchemy Core). Writes are serialised: SQLite has a
single writer anyway (BEGIN IMMEDIATE, so concurrent processes queue on busy_timeout instead of
failing on lock upgrades); on PostgreSQL every write transaction takes one advisory transaction lock.
That keeps change feed sequence order equal to commit order (a v1 reader that saw sequence N can
never later find a committed entry < N), rules out deadlocks between batches touching the same
studies in different orders, and makes the check-then-insert of a SOP instance race free. The ingest
layer group-commits many stores per transaction, so one writer at a time is not the bottleneck.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, overload

import orjson
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    BindParameter,
    Connection,
    Engine,
    Select,
    Table,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import make_url

from dicomd.dicom.model import ByteRange, JsonDataset, NativeFrames, ParsedInstance
from dicomd.index import schema as _schema
from dicomd.index.compiled import CompiledStatements
from dicomd.index.levels import SPECIFIC_CHARACTER_SET, level_of
from dicomd.index.normalize import (
    LONG_VRS,
    MAX_UNMEASURED_VALUES,
    first_int,
    first_str,
    keep_tag,
    keep_value,
    name_keys,
    norm_date,
    norm_time,
    pn_norm,
    pn_words,
)
from dicomd.index.qido import QidoQuery
from dicomd.index.schema import (
    DEFAULT_PARTITION_KEY,
    NAME_PATIENT_GROUP,
    NAME_PATIENT_WORD,
    NAME_REFERRING_GROUP,
    NAME_REFERRING_WORD,
    changefeed,
    deleted_object,
    instance,
    partition,
    series,
    study,
    study_name_key,
)
from dicomd.index.search import run_search

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# PostgreSQL advisory lock ids ("dicomd" + purpose)
_PG_WRITE_LOCK = 0x6469636F6D0001
_PG_MIGRATE_LOCK = 0x6469636F6D0002
_SQLITE_BUSY_TIMEOUT_MS = 30_000
_LOCK_FLAGS = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
# claimed deleted objects are offered again after this lease/backoff (doubling per attempt)
_DELETE_RETRY_BASE_MS = 60_000
_DELETE_RETRY_MAX_MS = 6 * 3600_000

AddStatus = Literal["created", "replaced", "identical", "exists", "conflict"]
# same_file(stored object key, new object key): whether the two DICOM files hold the same bytes
SameFile = Callable[[str, str], bool]
Action = Literal["Create", "Update", "Delete"]
State = Literal["Current", "Replaced", "Deleted"]


@dataclass(slots=True)
class NewInstance:
    partition_key: int
    parsed: ParsedInstance
    object_key: str
    file_size: int


@dataclass(slots=True)
class PreparedInstance:
    """A NewInstance with its index row values computed by Index.prepare (pure CPU, no database).

    add_instances runs inside the writer lock, which serialises all worker processes; preparing
    beforehand (e.g. in the ingest parse thread) keeps that CPU work out of the lock.
    """

    item: NewInstance
    study: dict[str, Any]  # study row columns (attrs JSON included), without keys/counts/timestamps
    series: dict[str, Any]
    instance: dict[str, Any]


@dataclass(slots=True)
class AddResult:
    """Outcome for one NewInstance.

    created: new instance; replaced: existed and overwrite=True (replaced_object_key is the old
    storage object, already queued for deletion); identical: existed with the same bytes (a re-send,
    whatever overwrite says), nothing changed; exists: existed and overwrite=False, nothing
    changed; conflict: the SOP Instance UID exists in this partition under a different study or
    series, nothing changed (the caller should not store or should delete the new object).
    """

    status: AddStatus
    replaced_object_key: str | None = None


@dataclass(slots=True)
class StoredInstance:
    """An indexed instance as retrieve/metadata/frames/bulk data need it.

    The frame and bulk data byte ranges are kept as their stored JSON and decoded on first access
    of `frames` / `bulk`: metadata and retrieve of large studies never need them (`has_bulk` tells
    whether there is bulk data without decoding). Ranges of a deflated instance are offsets into its
    inflated data set (see dicom/model.py).
    """

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    object_key: str
    file_size: int
    number_of_frames: int
    frames_json: str
    bulk_json: str
    instance_number: int | None
    _frames: FrameTable | None = field(default=None, init=False, repr=False, compare=False)
    _bulk: dict[str, tuple[int, int]] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def frames(self) -> FrameTable:
        """Byte ranges of each frame's data in the file (encapsulated: one or more fragments); native
        frames are computed from their description, listed tables are decoded once per worker."""
        if self._frames is None:
            self._frames = _frame_table(self.object_key, self.frames_json)
        return self._frames

    @property
    def bulk(self) -> dict[str, tuple[int, int]]:
        """Byte range of each bulk data element by its path ("7FE00010", "00540016/0/00181072")."""
        if self._bulk is None:
            self._bulk = _parse_bulk(self.bulk_json) if self.bulk_json != "{}" else {}
        return self._bulk

    @property
    def has_bulk(self) -> bool:
        """Whether the instance has bulk data (BulkDataURIs in its metadata), without decoding."""
        return self.bulk_json != "{}"


@dataclass(slots=True)
class ChangeEntry:
    sequence: int
    partition_key: int
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    action: Action
    timestamp: datetime  # aware, UTC, millisecond precision
    state: State  # computed at read time from the instance's current object_key
    object_key: str


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _to_ms(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)  # naive datetimes are taken as UTC
    return int(dt.timestamp() * 1000)


def _from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


_ALL_LEVELS = 3  # SpecificCharacterSet: copied to every level

# _tag_place results by tag. A plain dict rather than functools.lru_cache: _split_levels looks up
# every element of every stored instance, and an inline dict.get is several times cheaper than a
# call through lru_cache. Bounded: when full it starts over, so that files with many distinct
# (e.g. private) tags cost recomputation instead of memory.
_PLACE_CACHE_SIZE = 16384
_PLACES: dict[str, int] = {}


def _tag_place(tag: str) -> int:
    """Where a top-level attribute goes: 0 study, 1 series, 2 instance, _ALL_LEVELS, -1 nowhere."""
    place = _PLACES.get(tag)
    if place is None:
        if not keep_tag(tag):
            place = -1
        elif tag == SPECIFIC_CHARACTER_SET:
            place = _ALL_LEVELS
        else:
            place = ("study", "series", "instance").index(level_of(tag))
        if len(_PLACES) >= _PLACE_CACHE_SIZE:
            _PLACES.clear()
        _PLACES[tag] = place
    return place


def _split_levels(ds: JsonDataset) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    levels: tuple[dict[str, Any], dict[str, Any], dict[str, Any]] = ({}, {}, {})
    places = _PLACES
    for tag, element in ds.items():
        # this loop runs for every element of every stored instance: the common cases are inline
        try:
            place = places[tag]
        except KeyError:
            place = _tag_place(tag)
        if place < 0:
            continue
        # keep_value returns most elements as they are (a value, not a sequence nor a VR that can
        # be long, few values); only the others need it
        values = element.get("Value")
        if values is None or element.get("vr") in LONG_VRS or len(values) > MAX_UNMEASURED_VALUES:
            kept = keep_value(element)
            if kept is None:
                continue
            element = kept
        if place == _ALL_LEVELS:
            for attrs in levels:
                attrs[tag] = element
        else:
            levels[place][tag] = element
    return levels


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def _study_values(ds: JsonDataset, attrs: dict[str, Any]) -> dict[str, Any]:
    patient = first_str(ds.get("00100010")) or ""
    referring = first_str(ds.get("00080090")) or ""
    birth = first_str(ds.get("00100030"))
    sdate = first_str(ds.get("00080020"))
    stime = first_str(ds.get("00080030"))
    return {
        "patient_id": first_str(ds.get("00100020")),
        "patient_name": patient or None,
        "patient_name_norm": pn_norm(patient) or None,
        "patient_name_words": pn_words(patient) or None,
        "patient_birth_date": norm_date(birth) if birth else None,
        "patient_sex": first_str(ds.get("00100040")),
        "accession_number": first_str(ds.get("00080050")),
        "referring_physician_name": referring or None,
        "referring_physician_name_norm": pn_norm(referring) or None,
        "referring_physician_name_words": pn_words(referring) or None,
        "study_date": norm_date(sdate) if sdate else None,
        "study_time": norm_time(stime) if stime else None,
        "study_id": first_str(ds.get("00200010")),
        "study_description": first_str(ds.get("00081030")),
        "attrs": _dumps(attrs),
    }


def _series_values(ds: JsonDataset, attrs: dict[str, Any]) -> dict[str, Any]:
    pdate = first_str(ds.get("00400244"))
    ptime = first_str(ds.get("00400245"))
    return {
        "modality": first_str(ds.get("00080060")),
        "series_number": first_int(ds.get("00200011")),
        "series_description": first_str(ds.get("0008103E")),
        "performed_procedure_step_start_date": norm_date(pdate) if pdate else None,
        "performed_procedure_step_start_time": norm_time(ptime) if ptime else None,
        "body_part_examined": first_str(ds.get("00180015")),
        "manufacturer_model_name": first_str(ds.get("00081090")),
        "attrs": _dumps(attrs),
    }


def _instance_values(item: NewInstance, attrs: dict[str, Any]) -> dict[str, Any]:
    p = item.parsed
    return {
        "sop_class_uid": p.sop_class_uid,
        "instance_number": first_int(p.dataset.get("00200013")),
        "transfer_syntax_uid": p.transfer_syntax_uid,
        "object_key": item.object_key,
        "file_size": item.file_size,
        "number_of_frames": p.number_of_frames,
        "frames": _encode_frames(p.frames),
        "bulk": _dumps({path: [r.offset, r.length] for path, r in p.bulk.items()}),
        "attrs": _dumps(attrs),
    }


def prepare_instance(item: NewInstance) -> PreparedInstance:
    """Index.prepare: level split, attrs JSON and normalised column values of one instance."""
    p = item.parsed
    study_attrs, series_attrs, instance_attrs = _split_levels(p.dataset)
    return PreparedInstance(
        item,
        _study_values(p.dataset, study_attrs),
        _series_values(p.dataset, series_attrs),
        _instance_values(item, instance_attrs),
    )


_STUDY_KEY = "study_key"
_SERIES_KEY = "series_key"
# the study's name columns come along: its stored name keys derive from them (see _sync_name_keys)
_NAME_COLUMNS = (
    "patient_name_norm",
    "patient_name_words",
    "referring_physician_name_norm",
    "referring_physician_name_words",
)
_LOOKUPS: dict[str, Callable[[], Select[Any]]] = {
    _STUDY_KEY: lambda: select(study.c.study_key, *(study.c[c] for c in _NAME_COLUMNS)).where(
        study.c.partition_key == bindparam("pk"), study.c.study_instance_uid == bindparam("uid")
    ),
    _SERIES_KEY: lambda: select(series.c.series_key).where(
        series.c.partition_key == bindparam("pk"),
        series.c.study_key == bindparam("study_key"),
        series.c.series_instance_uid == bindparam("uid"),
    ),
}


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
class _Batch:
    """One group commit's writes, run on the transaction's DBAPI cursor with precompiled SQL: for a
    single-instance commit SQLAlchemy's per-statement execution cost more than the SQL (measured:
    0.45 of 0.8 ms of CPU)."""

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
    # name columns of each study as stored before this batch (none for a study the batch inserts)
    stored_names: dict[int, dict[str, Any]] = field(default_factory=dict)

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
                self.stored_names[key] = dict(zip(_NAME_COLUMNS, row[1:], strict=True))
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
                self.stored_names[key] = {}
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
            _insert_many(self.cur, self.statements, instance, self.inserts)
        for key in self.study_updates.keys() | self.study_delta.keys():
            d_series, d_instances = self.study_delta.get(key, (0, 0))
            self._update(
                study,
                key,
                {"num_series": d_series, "num_instances": d_instances},
                self.study_updates.get(key, {}),
            )
        self._sync_name_keys()
        for key in self.series_updates.keys() | self.series_delta.keys():
            self._update(
                series,
                key,
                {"num_instances": self.series_delta.get(key, 0)},
                self.series_updates.get(key, {}),
            )
        _enqueue_deleted(self.cur, self.statements, self.deleted, self.now)
        if self.changes:
            _insert_many(self.cur, self.statements, changefeed, self.changes)

    def _sync_name_keys(self) -> None:
        """Make the study_name_key rows of the studies written by this batch match their new names.

        The stored keys derive from the stored name columns (read with the study key), so only the
        keys of a name that changed are written, without reading the key table.
        """
        removed: list[dict[str, Any]] = []
        added: list[dict[str, Any]] = []
        for key, values in self.study_updates.items():
            pk = self.study_partitions[key]
            keys, old = _study_name_keys(values), _study_name_keys(self.stored_names[key])
            for target, diff in ((removed, old - keys), (added, keys - old)):
                target += [
                    {"partition_key": pk, "field": f, "name_key": v, "study_key": key}
                    for f, v in sorted(diff)
                ]
        if removed:
            sql = self.statements.get("delete_name_key", _delete_name_key)
            self.cur.executemany(sql.sql, [sql.params(r) for r in removed])
        if added:
            _insert_many(self.cur, self.statements, study_name_key, added)

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


# every instance row with its series and study rows
_STUDY_SERIES_INSTANCE = study.join(series, series.c.study_key == study.c.study_key).join(
    instance, instance.c.series_key == series.c.series_key
)


# IN lists of the write path: chunks of at most _IN_CHUNK values, padded (by repeating the last one) to
# a power of two, so that a few compiled statements serve every length
_IN_CHUNK = 512


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
        .select_from(_STUDY_SERIES_INSTANCE)
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


def _study_name_keys(values: dict[str, Any]) -> set[tuple[int, str]]:
    """(field, key) rows of study_name_key for a study's column values (see normalize.name_keys)."""
    keys: set[tuple[int, str]] = set()
    for (group_field, word_field), column in (
        ((NAME_PATIENT_GROUP, NAME_PATIENT_WORD), "patient_name"),
        ((NAME_REFERRING_GROUP, NAME_REFERRING_WORD), "referring_physician_name"),
    ):
        groups, words = name_keys(values.get(column + "_norm"), values.get(column + "_words"))
        keys.update((group_field, g) for g in groups)
        keys.update((word_field, w) for w in words)
    return keys


def _insert_many(cur: Any, statements: CompiledStatements, table: Table, rows: list[dict[str, Any]]) -> None:
    """INSERT rows that all have the same columns, as one executemany of precompiled SQL on a DBAPI
    cursor."""
    columns = tuple(rows[0])
    sql = statements.get(("insert", table.name, columns), lambda: insert(table), insert_columns=columns)
    cur.executemany(sql.sql, [sql.params(row) for row in rows])


def _find_select(by_series: bool, by_instance: bool) -> Select[Any]:
    i_t, se_t, st_t = _schema.instance, _schema.series, _schema.study
    stmt = (
        select(
            se_t.c.series_instance_uid,
            i_t.c.sop_instance_uid,
            i_t.c.sop_class_uid,
            i_t.c.transfer_syntax_uid,
            i_t.c.object_key,
            i_t.c.file_size,
            i_t.c.number_of_frames,
            i_t.c.frames,
            i_t.c.bulk,
            i_t.c.instance_number,
        )
        .select_from(_STUDY_SERIES_INSTANCE)
        .where(st_t.c.partition_key == bindparam("pk"), st_t.c.study_instance_uid == bindparam("study"))
        .order_by(
            se_t.c.series_number.asc().nulls_last(),
            se_t.c.series_instance_uid,
            i_t.c.instance_number.asc().nulls_last(),
            i_t.c.sop_instance_uid,
        )
    )
    if by_series:
        stmt = stmt.where(se_t.c.series_instance_uid == bindparam("series"))
    if by_instance:
        stmt = stmt.where(i_t.c.sop_instance_uid == bindparam("instance"))
    return stmt


@contextmanager
def _cursor(conn: Connection) -> Iterator[Any]:
    """A DBAPI cursor on the connection's current transaction."""
    cur = conn.connection.cursor()
    try:
        yield cur
    finally:
        cur.close()


def _enqueue_deleted(cur: Any, statements: CompiledStatements, keys: list[str], now: int) -> None:
    if keys:
        _insert_many(
            cur,
            statements,
            deleted_object,
            [{"object_key": k, "enqueued_at": now, "attempts": 0, "next_attempt_at": now} for k in keys],
        )


def _retry_delay_ms(attempts: int) -> int:
    return int(min(_DELETE_RETRY_BASE_MS * 2 ** min(attempts - 1, 20), _DELETE_RETRY_MAX_MS))


# Frames as stored in the `frames` column. Native frames are uniform: {"offset": o, "frame_bits": b,
# "frame_count": n} describes them (a list would hold one range per frame: a 1 MB file declaring two
# billion 1-bit frames made 190 MB of index). Encapsulated frames, and native frames stored before the
# description existed, are a list of frames, each a list of [offset, length] (at most one entry per
# fragment, each 8 bytes of file). Both decode without a migration.
FrameTable = Sequence[Sequence[tuple[int, int]]]


def _encode_frames(frames: Sequence[list[ByteRange]]) -> str:
    if isinstance(frames, NativeFrames):
        return _dumps({"offset": frames.offset, "frame_bits": frames.frame_bits, "frame_count": len(frames)})
    return _dumps([[[r.offset, r.length] for r in frame] for frame in frames])


class _NativeRanges(Sequence[list[tuple[int, int]]]):
    """Decoded native frames: each frame's range computed on access."""

    __slots__ = ("_frames",)

    def __init__(self, frames: NativeFrames) -> None:
        self._frames = frames

    def __len__(self) -> int:
        return len(self._frames)

    @overload
    def __getitem__(self, index: int) -> list[tuple[int, int]]: ...
    @overload
    def __getitem__(self, index: slice) -> list[list[tuple[int, int]]]: ...
    def __getitem__(self, index: int | slice) -> list[tuple[int, int]] | list[list[tuple[int, int]]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return [self._frames.range(index + len(self) if index < 0 else index)]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


class _FrameTableCache:
    """Listed frame tables decoded once per worker, by object key (unique per stored version, so an
    entry is never stale), least recently used out, bounded by the ranges held (~100 bytes each).
    Thread-safe: instances are found in threads, frames served on the event loop."""

    def __init__(self, max_ranges: int) -> None:
        self.max_ranges = max_ranges
        self._entries: OrderedDict[str, tuple[list[list[tuple[int, int]]], int]] = OrderedDict()
        self._ranges = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> list[list[tuple[int, int]]] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: str, table: list[list[tuple[int, int]]]) -> None:
        ranges = sum(map(len, table))
        if ranges > self.max_ranges:
            return  # bigger than the whole cache: decoded per request (a worker's memory comes first)
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = (table, ranges)
            self._ranges += ranges
            while self._ranges > self.max_ranges:
                _, (_, old) = self._entries.popitem(last=False)
                self._ranges -= old


_FRAME_TABLES = _FrameTableCache(1 << 18)


def _frame_table(object_key: str, raw: str) -> FrameTable:
    if raw.startswith("{"):
        d = orjson.loads(raw)
        return _NativeRanges(NativeFrames(d["offset"], d["frame_bits"], d["frame_count"]))
    if raw == "[]":
        return []
    table = _FRAME_TABLES.get(object_key)
    if table is None:
        table = _parse_frames(raw)
        _FRAME_TABLES.put(object_key, table)
    return table


def _parse_frames(raw: str) -> list[list[tuple[int, int]]]:
    return [[(r[0], r[1]) for r in frame] for frame in orjson.loads(raw)]


def _parse_bulk(raw: str) -> dict[str, tuple[int, int]]:
    return {k: (v[0], v[1]) for k, v in orjson.loads(raw).items()}


class IndexBusy(Exception):
    """Another process held a lock of the index for longer than this process was willing to wait."""


class Index:
    """The dicomd SQL index. Thread-safe (connection pool); every method is one transaction.

    ``delete_grace_period`` (seconds): deleted or replaced objects are offered for removal only after
    this long, so a retrieve that started before the delete still finds every object it reads.
    ``lock_timeout`` (seconds): how long to wait for another process's write or migration lock before
    raising IndexBusy; None waits as long as it takes (web workers: the holder is a short commit).
    """

    def __init__(
        self, url: str, *, delete_grace_period: float = 0.0, lock_timeout: float | None = None
    ) -> None:
        self.url = make_url(url)
        self.dialect = self.url.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported index database {self.dialect!r} (sqlite or postgresql)")
        self._is_sqlite = self.dialect == "sqlite"
        self.delete_grace_ms = int(delete_grace_period * 1000)
        self.lock_timeout = lock_timeout
        database = self.url.database
        self._sqlite_file = database if self._is_sqlite and database and database != ":memory:" else None
        self._create_private_file()
        if self._is_sqlite:
            self.engine: Engine = create_engine(self.url, pool_size=8, max_overflow=16)
            event.listen(self.engine, "connect", _sqlite_on_connect)
            event.listen(self.engine, "begin", _sqlite_on_begin)
        else:
            self.engine = create_engine(self.url, pool_size=8, max_overflow=16, pool_pre_ping=True)
        self._statements = CompiledStatements(self.engine.dialect)  # SQL of the hot paths
        self._migrate_lock = threading.Lock()
        self._writer_thread_lock = threading.Lock()
        self._writer_lock_fd: int | None = None

    def _create_private_file(self) -> None:
        """Create the SQLite file owner-only, as the rest of the archive (PHI): SQLite gives its WAL and
        shared-memory files the mode of the database file. Its directory may not exist yet (migrate)."""
        if self._sqlite_file is not None:
            with contextlib.suppress(FileNotFoundError):
                os.close(os.open(self._sqlite_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))

    def _writer_lock(self) -> int:
        if self._writer_lock_fd is None:
            assert self._sqlite_file is not None
            self._writer_lock_fd = os.open(self._sqlite_file + ".write-lock", _LOCK_FLAGS, 0o600)
        return self._writer_lock_fd

    def close(self) -> None:
        self.engine.dispose()
        if self._writer_lock_fd is not None:
            os.close(self._writer_lock_fd)
            self._writer_lock_fd = None

    # -- schema -----------------------------------------------------------------------------

    def migrate(self) -> None:
        """Create or upgrade the schema (Alembic `upgrade head`); safe from concurrent processes and
        next to running servers: a schema already at head is only read."""
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        self._create_private_file()
        with self._migrate_lock, self._cross_process_migrate_lock():
            if self._at_head(cfg):
                return
            with self._write() as conn:
                if not self._is_sqlite:
                    conn.execute(select(func.pg_advisory_xact_lock(_PG_MIGRATE_LOCK)))
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
                if self._is_sqlite:
                    _seed_sqlite_stats(conn)
        # pooled connections loaded planner statistics when they were opened
        self.engine.dispose()

    def _at_head(self, cfg: Config) -> bool:
        heads = set(ScriptDirectory.from_config(cfg).get_heads())
        with self.engine.connect() as conn:
            current = set(MigrationContext.configure(conn).get_current_heads())
            conn.rollback()
        return current == heads

    def optimize(self) -> None:
        """Refresh planner statistics from the real data (call now and then, e.g. daily).

        PostgreSQL's autovacuum does this by itself; SQLite only plans well with statistics.
        """
        with self._write() as conn:  # as a writer: a read transaction's upgrade would fail at once
            if self._is_sqlite:
                conn.exec_driver_sql("PRAGMA analysis_limit=2000")  # sampled: seconds, not minutes
            conn.exec_driver_sql("ANALYZE")
        self.engine.dispose()

    @contextmanager
    def _cross_process_migrate_lock(self) -> Iterator[None]:
        if self._sqlite_file is None:
            yield  # PostgreSQL: advisory lock inside the migration transaction
            return
        fd = os.open(self._sqlite_file + ".migrate-lock", _LOCK_FLAGS, 0o600)
        try:
            self._flock(fd, "migration")
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _flock(self, fd: int, what: str) -> None:
        """Take an exclusive file lock, waiting at most ``lock_timeout`` when one is set."""
        if self.lock_timeout is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return
        deadline = time.monotonic() + self.lock_timeout
        pause = 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise IndexBusy(
                        f"the index's {what} lock was held by another process for more than "
                        f"{self.lock_timeout:g} s"
                    ) from None
                time.sleep(pause)  # a writer holds it for a commit: milliseconds
                pause = min(pause * 2, 0.05)

    # -- transactions -----------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._sqlite_writer_lock(), self.engine.connect() as conn:
            if self._is_sqlite:
                conn.execution_options(dicomd_begin="IMMEDIATE")
            with conn.begin():
                if not self._is_sqlite:
                    conn.execute(select(func.pg_advisory_xact_lock(_PG_WRITE_LOCK)))
                yield conn

    @contextmanager
    def _sqlite_writer_lock(self) -> Iterator[None]:
        """Queue SQLite writers of all processes on a file lock.

        SQLite's own busy handler polls with sleeps of up to 100 ms, which wastes most of the time when
        several worker processes commit often; a blocking flock hands the lock over at once.
        """
        if self._sqlite_file is None:
            yield
            return
        with self._writer_thread_lock:
            fd = self._writer_lock()
            self._flock(fd, "write")
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def _fetch(self, sql: str, params: Any) -> list[Any]:
        """Rows of one read-only statement, compiled beforehand for this dialect (DBAPI paramstyle).

        Runs on the pooled DBAPI connection without SQLAlchemy's per-statement machinery and
        outside an explicit transaction: one statement reads one consistent snapshot anyway, and
        PostgreSQL is spared the BEGIN and ROLLBACK round trips. Used by the hot read paths.
        """
        fairy = self.engine.raw_connection()
        try:
            dbapi_conn: Any = fairy.driver_connection
            if not self._is_sqlite:
                dbapi_conn.autocommit = True  # psycopg: no implicit BEGIN
            try:
                cur = dbapi_conn.cursor()
                try:
                    cur.execute(sql, params)
                    return cur.fetchall()  # type: ignore[no-any-return]
                finally:
                    cur.close()
            finally:
                if not self._is_sqlite:
                    dbapi_conn.autocommit = False
        finally:
            fairy.close()

    # -- partitions -------------------------------------------------------------------------

    def partitions(self) -> list[tuple[int, str]]:
        with self._read() as conn:
            rows = conn.execute(
                select(partition.c.partition_key, partition.c.partition_name).order_by(
                    partition.c.partition_key
                )
            )
            return [(r[0], r[1]) for r in rows]

    def partition_key(self, name: str) -> int | None:
        with self._read() as conn:
            key = conn.execute(
                select(partition.c.partition_key).where(partition.c.partition_name == name)
            ).scalar()
            return int(key) if key is not None else None

    def ensure_partition(self, name: str) -> int:
        """Key of the named partition, created if missing."""
        existing = self.partition_key(name)
        if existing is not None:
            return existing
        with self._write() as conn:
            key = conn.execute(
                select(partition.c.partition_key).where(partition.c.partition_name == name)
            ).scalar()
            if key is None:
                # explicit key: the default partition was inserted with key 1 without using the sequence
                key = conn.execute(
                    select(func.coalesce(func.max(partition.c.partition_key), 0) + 1)
                ).scalar_one()
                conn.execute(
                    insert(partition).values(partition_key=key, partition_name=name, created_at=_now_ms())
                )
            return int(key)

    # -- store ------------------------------------------------------------------------------

    @staticmethod
    def prepare(item: NewInstance) -> PreparedInstance:
        """Compute the index rows of an instance: pure CPU, no database, any thread.

        Call it where the instance is parsed and pass the result to add_instances, so that the
        work is not done while add_instances holds the writer lock.
        """
        return prepare_instance(item)

    def add_instances(
        self,
        items: Sequence[NewInstance | PreparedInstance],
        *,
        overwrite: bool,
        same_file: SameFile | None = None,
    ) -> list[AddResult]:
        """Index a batch of stored instances in one transaction; results in the order of `items`.

        Items may be prepared already (Index.prepare); the others are prepared before the writer
        lock is taken. ``same_file`` is asked only about an instance whose SOP Instance UID is
        indexed already (or earlier in the batch) with the same file size: when it says the bytes are
        the same, the result is "identical" and nothing is written; without it, that never happens.
        """
        for entry in items:
            p = entry.item.parsed if isinstance(entry, PreparedInstance) else entry.parsed
            if not (p.study_instance_uid and p.series_instance_uid and p.sop_instance_uid):
                raise ValueError("study, series and SOP instance UIDs are required")
        if not items:
            return []
        prepared = [e if isinstance(e, PreparedInstance) else prepare_instance(e) for e in items]
        with self._write() as conn, _cursor(conn) as cur:
            batch = _Batch(cur, self._statements, _now_ms())
            batch.prefetch(prepared)
            results = [batch.add(entry, overwrite, same_file) for entry in prepared]
            batch.flush()
        return results

    # -- retrieve ---------------------------------------------------------------------------

    def find_instances(
        self, partition_key: int, study: str, series: str | None = None, instance: str | None = None
    ) -> list[StoredInstance]:
        """Instances of a study/series/instance, ordered by series number, then instance number.

        Frames and bulk data byte ranges are decoded on first use (see StoredInstance).
        """
        by_series, by_instance = series is not None, instance is not None
        sql = self._statements.get(
            ("find_instances", by_series, by_instance), lambda: _find_select(by_series, by_instance)
        )
        values = {"pk": partition_key, "study": study, "series": series, "instance": instance}
        return [
            StoredInstance(study, r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9])
            for r in self._fetch(sql.sql, sql.params(values))
        ]

    def has_object(self, object_key: str) -> bool:
        """Whether an indexed instance refers to this storage object (crash recovery of staged files)."""
        with self._read() as conn:
            found = conn.execute(
                select(_schema.instance.c.instance_key)
                .where(_schema.instance.c.object_key == object_key)
                .limit(1)
            ).first()
        return found is not None

    # -- delete -----------------------------------------------------------------------------

    def delete(
        self, partition_key: int, study: str, series: str | None = None, instance: str | None = None
    ) -> int:
        """Delete a study, series or instance; returns the number of instances removed."""
        i_t, se_t, st_t = _schema.instance, _schema.series, _schema.study
        stmt = (
            select(
                i_t.c.instance_key,
                i_t.c.series_key,
                i_t.c.study_key,
                i_t.c.sop_instance_uid,
                i_t.c.object_key,
                se_t.c.series_instance_uid,
            )
            .select_from(_STUDY_SERIES_INSTANCE)
            .where(st_t.c.partition_key == partition_key, st_t.c.study_instance_uid == study)
            .order_by(i_t.c.instance_key)
        )
        if series is not None:
            stmt = stmt.where(se_t.c.series_instance_uid == series)
        if instance is not None:
            stmt = stmt.where(i_t.c.sop_instance_uid == instance)
        with self._write() as conn:
            rows = conn.execute(stmt).all()
            if not rows:
                return 0
            now = _now_ms()
            study_keys = sorted({r.study_key for r in rows})
            series_keys = sorted({r.series_key for r in rows})
            if instance is not None:
                conn.execute(delete(i_t).where(i_t.c.instance_key.in_([r.instance_key for r in rows])))
            elif series is not None:
                conn.execute(delete(i_t).where(i_t.c.series_key.in_(series_keys)))
            else:
                conn.execute(delete(i_t).where(i_t.c.study_key.in_(study_keys)))
            # recount rather than subtract: cheap (indexed) and self-correcting
            conn.execute(
                update(se_t)
                .where(se_t.c.series_key.in_(series_keys))
                .values(
                    num_instances=select(func.count())
                    .where(i_t.c.series_key == se_t.c.series_key)
                    .scalar_subquery(),
                    updated_at=now,
                )
            )
            conn.execute(delete(se_t).where(se_t.c.series_key.in_(series_keys), se_t.c.num_instances == 0))
            conn.execute(
                update(st_t)
                .where(st_t.c.study_key.in_(study_keys))
                .values(
                    num_series=select(func.count())
                    .where(se_t.c.study_key == st_t.c.study_key)
                    .scalar_subquery(),
                    num_instances=select(func.count())
                    .where(i_t.c.study_key == st_t.c.study_key)
                    .scalar_subquery(),
                    updated_at=now,
                )
            )
            emptied = select(st_t.c.study_key).where(st_t.c.study_key.in_(study_keys), st_t.c.num_series == 0)
            conn.execute(delete(study_name_key).where(study_name_key.c.study_key.in_(emptied)))
            conn.execute(delete(st_t).where(st_t.c.study_key.in_(study_keys), st_t.c.num_series == 0))
            with _cursor(conn) as cur:
                _enqueue_deleted(cur, self._statements, [r.object_key for r in rows], now)
            conn.execute(
                insert(changefeed),
                [
                    {
                        "partition_key": partition_key,
                        "study_instance_uid": study,
                        "series_instance_uid": r.series_instance_uid,
                        "sop_instance_uid": r.sop_instance_uid,
                        "action": "Delete",
                        "timestamp": now,
                        "object_key": r.object_key,
                    }
                    for r in rows
                ],
            )
        return len(rows)

    def claim_deleted_objects(self, limit: int) -> list[tuple[int, str]]:
        """Storage objects due for removal: (id, object_key). Claimed rows are hidden from other
        workers until their retry time (exponential backoff), so a crashed worker's claims come back."""
        now = _now_ms()
        # a row is due delete_grace_ms after its next_attempt_at (readers in flight finish first);
        # a claim sets the next attempt so that a retry is due after the backoff alone
        due = now - self.delete_grace_ms
        stmt = (
            select(deleted_object.c.id, deleted_object.c.object_key, deleted_object.c.attempts)
            .where(deleted_object.c.next_attempt_at <= due)
            .order_by(deleted_object.c.next_attempt_at, deleted_object.c.id)
            .limit(limit)
        )
        if not self._is_sqlite:
            stmt = stmt.with_for_update(skip_locked=True)
        with self._write() as conn:
            rows = conn.execute(stmt).all()
            for r in rows:
                conn.execute(
                    update(deleted_object)
                    .where(deleted_object.c.id == r.id)
                    .values(attempts=r.attempts + 1, next_attempt_at=due + _retry_delay_ms(r.attempts + 1))
                )
        return [(int(r.id), r.object_key) for r in rows]

    def forget_deleted_objects(self, ids: list[int]) -> None:
        """Drop queue rows whose storage objects are gone."""
        if not ids:
            return
        with self._write() as conn:
            for start in range(0, len(ids), 500):
                conn.execute(delete(deleted_object).where(deleted_object.c.id.in_(ids[start : start + 500])))

    # -- search -----------------------------------------------------------------------------

    def search(self, q: QidoQuery) -> list[dict[str, Any]]:
        """QIDO results as DICOM JSON datasets (RetrieveURL is added by the web layer)."""
        return run_search(self._statements, self._fetch, q)

    # -- change feed ------------------------------------------------------------------------

    @staticmethod
    def _changefeed_select(page: Any) -> Any:
        """Entries of `page` (a subquery of sequences) with the instance's current object_key.

        Paging happens on the changefeed table alone, so a large v2 offset only walks the
        timestamp index instead of joining every skipped row.
        """
        return select(
            changefeed.c.sequence,
            changefeed.c.partition_key,
            changefeed.c.study_instance_uid,
            changefeed.c.series_instance_uid,
            changefeed.c.sop_instance_uid,
            changefeed.c.action,
            changefeed.c.timestamp,
            changefeed.c.object_key,
            instance.c.object_key.label("current_key"),
        ).select_from(
            changefeed.join(page, page.c.sequence == changefeed.c.sequence).outerjoin(
                instance,
                (instance.c.partition_key == changefeed.c.partition_key)
                & (instance.c.sop_instance_uid == changefeed.c.sop_instance_uid),
            )
        )

    @staticmethod
    def _entry(r: Any) -> ChangeEntry:
        state: State
        if r.current_key is None:
            state = "Deleted"
        elif r.current_key == r.object_key:
            state = "Current"
        else:
            state = "Replaced"
        return ChangeEntry(
            int(r.sequence),
            r.partition_key,
            r.study_instance_uid,
            r.series_instance_uid,
            r.sop_instance_uid,
            r.action,
            _from_ms(r.timestamp),
            state,
            r.object_key,
        )

    def changefeed(
        self,
        *,
        offset: int,
        limit: int,
        start: datetime | None = None,
        end: datetime | None = None,
        v2: bool,
    ) -> list[ChangeEntry]:
        """v1: entries after sequence `offset`; v2: [start, end) time window, skip `offset` rows."""
        page = select(changefeed.c.sequence)
        if v2:
            if start is not None:
                page = page.where(changefeed.c.timestamp >= _to_ms(start))
            if end is not None:
                page = page.where(changefeed.c.timestamp < _to_ms(end))
            order: tuple[Any, ...] = (changefeed.c.timestamp, changefeed.c.sequence)
            page = page.order_by(*order).offset(offset)
        else:
            order = (changefeed.c.sequence,)
            page = page.where(changefeed.c.sequence > offset).order_by(*order)
        stmt = self._changefeed_select(page.limit(limit).subquery()).order_by(*order)
        with self._read() as conn:
            return [self._entry(r) for r in conn.execute(stmt)]

    def latest_change(self) -> ChangeEntry | None:
        page = select(changefeed.c.sequence).order_by(changefeed.c.sequence.desc()).limit(1)
        stmt = self._changefeed_select(page.subquery())
        with self._read() as conn:
            row = conn.execute(stmt).first()
        return self._entry(row) if row is not None else None


# Planner statistics seeded into a new SQLite database, as for a large archive (1M instances, one
# partition). Without statistics SQLite picks any index starting with partition_key for "partition_key
# = 1 ORDER BY key LIMIT 100" and sorts the whole table; with them it walks the primary key and stops
# after 100 rows, and prefers the selective indexes (patient_id, uids...). optimize() replaces them.
_SEED_ROWS = {
    "study": 20_000,
    "series": 100_000,
    "instance": 1_000_000,
    "changefeed": 1_200_000,
    "study_name_key": 140_000,
}
_SEED_DISTINCT = {  # distinct values per column; columns not listed are (nearly) unique
    "partition_key": 1,
    "study_key": 20_000,
    "series_key": 100_000,
    "modality": 20,
    "sop_class_uid": 20,
    "study_date": 5_000,
    "patient_birth_date": 10_000,
    "performed_procedure_step_start_date": 5_000,
    "instance_number": 1_000,
    "timestamp": 100_000,
    "field": 4,
    "name_key": 20_000,
}


def _seed_sqlite_stats(conn: Connection) -> None:
    conn.exec_driver_sql('ANALYZE "partition"')  # creates sqlite_stat1 if missing (tiny table)
    for table, rows in _SEED_ROWS.items():
        if conn.exec_driver_sql("SELECT count(*) FROM sqlite_stat1 WHERE tbl = ?", (table,)).scalar():
            continue  # real or seeded statistics exist already (a table added later gets its own)
        for index_row in conn.exec_driver_sql(f"PRAGMA index_list('{table}')").all():
            name = index_row[1]
            columns = [r[2] for r in conn.exec_driver_sql(f"PRAGMA index_info('{name}')").all()]
            stat, distinct = [rows], 1
            for col in columns:
                distinct *= _SEED_DISTINCT.get(col, rows)
                stat.append(max(1, rows // min(rows, distinct)))
            conn.exec_driver_sql(
                "INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES (?, ?, ?)",
                (table, name, " ".join(map(str, stat))),
            )
    conn.exec_driver_sql("ANALYZE sqlite_schema")  # reload the statistics


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # let SQLAlchemy's begin event emit BEGIN (pysqlite's implicit transactions are wrong for us)
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    try:
        cur.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")  # several processes write
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")  # a committed store must survive an OS crash
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA case_sensitive_like=ON")  # DICOM matching is case-sensitive, as on PG
    finally:
        cur.close()


def _sqlite_on_begin(conn: Connection) -> None:
    # IMMEDIATE for writers: take the write lock up front, waiting on busy_timeout, instead of
    # failing with SQLITE_BUSY when a read transaction later tries to upgrade
    mode = conn.get_execution_options().get("dicomd_begin", "DEFERRED")
    conn.exec_driver_sql(f"BEGIN {mode}")


__all__ = [
    "DEFAULT_PARTITION_KEY",
    "AddResult",
    "ChangeEntry",
    "Index",
    "NewInstance",
    "PreparedInstance",
    "StoredInstance",
]
