"""Index schema, migrations, add/replace/conflict, find_instances, delete and the deletion queue."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import delete, func, select, text

from dicomd.index import Index, parse_qido
from dicomd.index.rows import SERIES_VALUE_COLUMNS, STUDY_VALUE_COLUMNS
from dicomd.index.schema import changefeed, deleted_object, metadata, series, study
from dicomd.index.writer import WriteBatch

from support.backends import BACKENDS, backend_url
from support.index_rows import add, make_parsed, new, open_index, pn


def _count(idx: Index, table: object) -> int:
    with idx.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


def _study_row(idx: Index, uid: str) -> object:
    with idx.engine.connect() as conn:
        return conn.execute(select(study).where(study.c.study_instance_uid == uid)).first()


# -- migrations ---------------------------------------------------------------------------------


def test_migrate_twice_and_schema_matches_metadata(index: Index) -> None:
    index.migrate()  # second run is a no-op
    with index.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
        assert diff == []
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0004"
    assert index.partitions() == [(1, "default")]


def _migrate_in_process(url: str) -> None:
    idx = Index(url)
    idx.migrate()
    idx.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_migrate_from_two_processes(backend: str, tmp_path: Path) -> None:
    with backend_url(backend, tmp_path) as url:
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_migrate_in_process, args=(url,)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        idx = Index(url)
        try:
            assert idx.partitions() == [(1, "default")]
            assert add(idx, make_parsed()) == ["created"]
        finally:
            idx.close()


def test_sqlite_pragmas(tmp_path: Path) -> None:
    with open_index("sqlite", tmp_path) as idx, idx.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000


def test_a_write_that_cannot_begin_on_a_locked_sqlite_index_is_unavailable_not_a_fault(
    tmp_path: Path,
) -> None:
    """BEGIN runs on the driver's connection (sqlite.py): when another writer holds the database past
    the busy timeout, the error is still SQLAlchemy's OperationalError, which the API answers with 503
    (try again later), and the connection goes on working once the lock is gone."""
    import sqlite3

    from dicomd.index import sqlite as index_sqlite
    from dicomd.index.store import unavailable_errors

    with open_index("sqlite", tmp_path) as idx:
        assert idx.sqlite_file is not None
        other = sqlite3.connect(idx.sqlite_file, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process's writer, holding the lock
        with idx.engine.connect() as conn:
            conn.connection.driver_connection.execute("PRAGMA busy_timeout=50")  # type: ignore[union-attr]
            index_sqlite.begin_immediate(conn)
            with pytest.raises(unavailable_errors()) as raised, conn.begin():
                pass
            assert "database is locked" in str(raised.value)
            other.execute("COMMIT")
            with conn.begin():
                assert conn.exec_driver_sql("SELECT count(*) FROM study").scalar() == 0
        other.close()


def test_a_failed_unflushed_commit_leaves_nothing_and_the_next_one_gets_a_new_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commits ahead of a syncfs share one held connection (store.py, _unflushed_writer); one that
    fails midway is rolled back and that connection is dropped, whatever state it was left in."""
    from sqlalchemy import event

    from dicomd.index.types import UnsyncedBatch

    def unsynced(key: str) -> UnsyncedBatch:
        return UnsyncedBatch("area", {key: (10, 20)})

    with open_index("sqlite", tmp_path) as idx:
        _, unflushed = idx.engines
        opened: list[Any] = []
        event.listen(unflushed, "connect", lambda conn, _record: opened.append(conn))
        idx.add_instances([new(make_parsed(sop="1.2.3.1.1"), "k1")], overwrite=False, unsynced=unsynced("k1"))
        idx.add_instances([new(make_parsed(sop="1.2.3.1.2"), "k2")], overwrite=False, unsynced=unsynced("k2"))
        assert len(opened) == 1  # held between commits

        def failing(batch: WriteBatch) -> None:
            raise RuntimeError("a fault after the instance row was written")

        monkeypatch.setattr(WriteBatch, "flush", failing)
        with pytest.raises(RuntimeError):
            idx.add_instances(
                [new(make_parsed(sop="1.2.3.1.3"), "k3")], overwrite=False, unsynced=unsynced("k3")
            )
        monkeypatch.undo()
        assert not idx.has_object("k3")
        idx.add_instances([new(make_parsed(sop="1.2.3.1.4"), "k4")], overwrite=False, unsynced=unsynced("k4"))
        assert len(opened) == 2
        assert [k for k in ("k1", "k2", "k3", "k4") if idx.has_object(k)] == ["k1", "k2", "k4"]
        assert [key for key, _, _ in idx.unsynced_objects("area")] == ["k1", "k2", "k4"]


def test_partitions(index: Index) -> None:
    key = index.ensure_partition("research")
    assert key == 2
    assert index.ensure_partition("research") == 2
    assert index.partition_key("default") == 1
    assert index.partition_key("nope") is None
    # same UIDs in two partitions are independent
    assert add(index, make_parsed()) == ["created"]
    res = index.add_instances([new(make_parsed(), partition_key=key)], overwrite=False)
    assert res[0].status == "created"
    assert len(index.find_instances(1, "1.2.3")) == 1
    assert len(index.find_instances(key, "1.2.3")) == 1
    assert index.delete(key, "1.2.3") == 1
    assert len(index.find_instances(1, "1.2.3")) == 1


# -- add ----------------------------------------------------------------------------------------


def test_add_exists_replace_conflict(index: Index) -> None:
    first = new(make_parsed(), "k1")
    assert index.add_instances([first], overwrite=False)[0].status == "created"
    again = index.add_instances([new(make_parsed(), "k2")], overwrite=False)[0]
    assert (again.status, again.replaced_object_key) == ("exists", None)
    assert index.find_instances(1, "1.2.3")[0].object_key == "k1"

    replaced = index.add_instances([new(make_parsed(instance_number=7), "k3")], overwrite=True)[0]
    assert (replaced.status, replaced.replaced_object_key) == ("replaced", "k1")
    [stored] = index.find_instances(1, "1.2.3")
    assert (stored.object_key, stored.instance_number) == ("k3", 7)
    assert index.claim_deleted_objects(10)[0][1] == "k1"

    # same SOP UID under another series or study: conflict, nothing changes
    other_series = make_parsed(series="1.2.3.9")
    other_study = make_parsed(study="1.2.4", series="1.2.4.1")
    assert add(index, other_series, other_study, overwrite=True) == ["conflict", "conflict"]
    assert _count(index, series) == 1 and _count(index, study) == 1
    assert index.find_instances(1, "1.2.3")[0].object_key == "k3"
    row = _study_row(index, "1.2.3")
    assert (row.num_series, row.num_instances) == (1, 1)  # type: ignore[attr-defined]
    assert [e.action for e in index.changefeed(offset=0, limit=10, v2=False)] == ["Create", "Update"]


def test_same_sop_twice_in_one_batch(index: Index) -> None:
    a, b, c = new(make_parsed(), "a"), new(make_parsed(), "b"), new(make_parsed(series="1.2.3.2"), "c")
    assert [r.status for r in index.add_instances([a, b, c], overwrite=False)] == [
        "created",
        "exists",
        "conflict",
    ]
    d, e = new(make_parsed(sop="1.2.3.1.2"), "d"), new(make_parsed(sop="1.2.3.1.2"), "e")
    res = index.add_instances([d, e], overwrite=True)
    assert [(r.status, r.replaced_object_key) for r in res] == [("created", None), ("replaced", "d")]
    keys = {i.sop_instance_uid: i.object_key for i in index.find_instances(1, "1.2.3")}
    assert keys == {"1.2.3.1.1": "a", "1.2.3.1.2": "e"}
    assert [k for _, k in index.claim_deleted_objects(10)] == ["d"]
    assert [(x.action, x.object_key, x.state) for x in index.changefeed(offset=0, limit=10, v2=False)] == [
        ("Create", "a", "Current"),
        ("Create", "d", "Replaced"),
        ("Update", "e", "Current"),
    ]
    row = _study_row(index, "1.2.3")
    assert (row.num_series, row.num_instances) == (1, 2)  # type: ignore[attr-defined]


def test_batch_is_one_transaction(index: Index) -> None:
    good = new(make_parsed(sop="1.2.3.1.5"))
    bad = new(make_parsed(sop=""))
    with pytest.raises(ValueError):
        index.add_instances([good, bad], overwrite=False)
    assert _count(index, study) == 0


def test_level_attrs_split_and_latest_wins(index: Index) -> None:
    big_seq = {"vr": "SQ", "Value": [{"00080100": {"vr": "SH", "Value": ["X" * 16]}}] * 400}
    extra = {
        "00081030": {"vr": "LO", "Value": ["Brain"]},
        "0008103E": {"vr": "LO", "Value": ["Axial"]},
        "00180050": {"vr": "DS", "Value": [1.5]},  # SliceThickness: instance level
        "00091010": {"vr": "LO", "Value": ["private"]},
        "00081032": big_seq,  # ProcedureCodeSequence > 4 KB: dropped
        "00400275": {  # RequestAttributesSequence with an embedded binary value
            "vr": "SQ",
            "Value": [
                {
                    "00400009": {"vr": "SH", "Value": ["SPS1"]},
                    "00420011": {"vr": "OB", "InlineBinary": "AA=="},
                }
            ],
        },
    }
    add(index, make_parsed(extra=extra))
    with index.engine.connect() as conn:
        s_attrs = orjson.loads(conn.execute(select(study.c.attrs)).scalar_one())
        se_attrs = orjson.loads(conn.execute(select(series.c.attrs)).scalar_one())
        i_attrs = orjson.loads(conn.execute(text("SELECT attrs FROM instance")).scalar_one())
    assert set(s_attrs) == {
        "00080005",
        "00080020",
        "00080030",
        "00081030",
        "00100010",
        "00100020",
        "0020000D",
    }
    assert set(se_attrs) == {"00080005", "00080060", "0008103E", "0020000E", "00200011", "00400275"}
    assert se_attrs["00400275"]["Value"] == [{"00400009": {"vr": "SH", "Value": ["SPS1"]}}]
    assert "00180050" in i_attrs and "7FE00010" not in i_attrs and "00091010" not in i_attrs
    assert "0020000D" not in i_attrs and "00100010" not in i_attrs

    # the newest instance's study/series attributes win (and the indexed columns follow)
    add(index, make_parsed(sop="1.2.3.1.2", patient_name="Roe^Jane", study_date="20210101", modality="MR"))
    row = _study_row(index, "1.2.3")
    assert row.patient_name == "Roe^Jane" and row.study_date == "20210101"  # type: ignore[attr-defined]
    assert row.patient_name_norm == "=ROE^JANE=" and row.patient_name_words == " ROE JANE "  # type: ignore[attr-defined]
    [r] = index.search(parse_qido("series", [("includefield", "all")]))
    assert r["00080060"]["Value"] == ["MR"]


def test_pn_columns_all_groups(index: Index) -> None:
    add(index, make_parsed(patient_name=pn("Yamada^Tarou", "山田^太郎", "やまだ^たろう")))
    row = _study_row(index, "1.2.3")
    assert row.patient_name == "Yamada^Tarou=山田^太郎=やまだ^たろう"  # type: ignore[attr-defined]
    assert row.patient_name_norm == "=YAMADA^TAROU=山田^太郎=やまだ^たろう="  # type: ignore[attr-defined]


# -- find_instances -----------------------------------------------------------------------------


def test_find_instances_order_frames_bulk(index: Index) -> None:
    items = [
        make_parsed(series="1.2.3.2", sop="1.2.3.2.1", series_number=2, instance_number=1),
        make_parsed(series="1.2.3.1", sop="1.2.3.1.3", series_number=1, instance_number=10, frames=3),
        make_parsed(series="1.2.3.1", sop="1.2.3.1.2", series_number=1, instance_number=2),
        make_parsed(series="1.2.3.3", sop="1.2.3.3.1", series_number=None, instance_number=None),
        make_parsed(series="1.2.3.1", sop="1.2.3.1.1", series_number=1, instance_number=None),
    ]
    add(index, *items)
    found = index.find_instances(1, "1.2.3")
    assert [i.sop_instance_uid for i in found] == [
        "1.2.3.1.2",
        "1.2.3.1.3",
        "1.2.3.1.1",
        "1.2.3.2.1",
        "1.2.3.3.1",
    ]
    multi = found[1]
    assert multi.number_of_frames == 3
    assert multi.frames == [[(1000, 32)], [(1032, 32)], [(1064, 32)]]
    assert multi.bulk == {"7FE00010": (1000, 96)}
    assert (multi.study_instance_uid, multi.series_instance_uid) == ("1.2.3", "1.2.3.1")
    assert (multi.sop_class_uid, multi.transfer_syntax_uid, multi.file_size) == (
        "1.2.840.10008.5.1.4.1.1.2",
        "1.2.840.10008.1.2.1",
        1234,
    )
    assert [i.sop_instance_uid for i in index.find_instances(1, "1.2.3", "1.2.3.2")] == ["1.2.3.2.1"]
    assert len(index.find_instances(1, "1.2.3", "1.2.3.1", "1.2.3.1.3")) == 1
    assert index.find_instances(1, "1.2.3", "1.2.3.2", "1.2.3.1.3") == []
    assert index.find_instances(1, "9.9") == []
    assert index.find_instances(2, "1.2.3") == []


def test_find_instances_1000_fast(index: Index) -> None:
    batch = [
        new(make_parsed(series=f"1.2.3.{i % 4}", sop=f"1.2.3.9.{i}", series_number=i % 4, instance_number=i))
        for i in range(1000)
    ]
    index.add_instances(batch, overwrite=False)
    index.find_instances(1, "1.2.3")  # warm statement cache and pool
    best = min(_timed(lambda: index.find_instances(1, "1.2.3")) for _ in range(5))
    assert len(index.find_instances(1, "1.2.3")) == 1000
    assert best < 0.010, f"find_instances of 1000 took {best * 1000:.1f} ms"


def _timed(fn: object) -> float:
    t = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t


# -- delete -------------------------------------------------------------------------------------


def _three_series(index: Index) -> None:
    add(
        index,
        make_parsed(series="1.2.3.1", sop="1.2.3.1.1"),
        make_parsed(series="1.2.3.1", sop="1.2.3.1.2"),
        make_parsed(series="1.2.3.2", sop="1.2.3.2.1", modality="MR"),
        make_parsed(study="1.2.4", series="1.2.4.1", sop="1.2.4.1.1"),
    )


def test_delete_instance_series_study_cascade(index: Index) -> None:
    _three_series(index)
    assert index.delete(1, "1.2.3", "1.2.3.1", "1.2.3.1.9") == 0
    assert index.delete(1, "1.2.3", "1.2.3.2", "1.2.3.1.1") == 0  # wrong series
    assert index.delete(1, "1.2.3", "1.2.3.1", "1.2.3.1.1") == 1
    row = _study_row(index, "1.2.3")
    assert (row.num_series, row.num_instances) == (2, 2)  # type: ignore[attr-defined]
    assert index.delete(1, "1.2.3", "1.2.3.1", "1.2.3.1.2") == 1  # last of the series: series goes
    assert _count(index, series) == 2
    row = _study_row(index, "1.2.3")
    assert (row.num_series, row.num_instances) == (1, 1)  # type: ignore[attr-defined]
    [s] = index.search(parse_qido("study", [("StudyInstanceUID", "1.2.3")]))
    assert s["00080061"]["Value"] == ["MR"]
    assert index.delete(1, "1.2.3", "1.2.3.2") == 1  # last series: study goes
    assert _study_row(index, "1.2.3") is None
    assert index.delete(1, "1.2.3") == 0
    assert index.delete(1, "1.2.4") == 1
    assert _count(index, study) == 0 and _count(index, series) == 0
    assert _count(index, deleted_object) == 4
    feed = index.changefeed(offset=0, limit=100, v2=False)
    assert [e.action for e in feed] == ["Create"] * 4 + ["Delete"] * 4
    assert all(e.state == "Deleted" for e in feed)
    deletes = [e for e in feed if e.action == "Delete"]
    assert [(e.study_instance_uid, e.series_instance_uid, e.sop_instance_uid) for e in deletes] == [
        ("1.2.3", "1.2.3.1", "1.2.3.1.1"),
        ("1.2.3", "1.2.3.1", "1.2.3.1.2"),
        ("1.2.3", "1.2.3.2", "1.2.3.2.1"),
        ("1.2.4", "1.2.4.1", "1.2.4.1.1"),
    ]
    assert [e.object_key for e in deletes] == [e.object_key for e in feed[:4]]


def test_delete_whole_study(index: Index) -> None:
    _three_series(index)
    assert index.delete(1, "1.2.3") == 3
    assert _count(index, series) == 1 and _count(index, study) == 1
    assert index.find_instances(1, "1.2.3") == []


def test_deleted_object_queue(index: Index) -> None:
    _three_series(index)
    index.delete(1, "1.2.3")
    claimed = index.claim_deleted_objects(2)
    assert len(claimed) == 2
    rest = index.claim_deleted_objects(10)  # claimed rows are leased, not handed out again
    assert len(rest) == 1 and not {i for i, _ in claimed} & {i for i, _ in rest}
    assert index.claim_deleted_objects(10) == []
    index.forget_deleted_objects([i for i, _ in claimed])
    assert _count(index, deleted_object) == 1
    with index.engine.begin() as conn:  # pretend the lease ran out
        conn.execute(deleted_object.update().values(next_attempt_at=0))
        attempts = conn.execute(select(deleted_object.c.attempts)).scalar_one()
    assert attempts == 1
    again = index.claim_deleted_objects(10)
    assert again == rest
    index.forget_deleted_objects([i for i, _ in again])
    index.forget_deleted_objects([])
    assert _count(index, deleted_object) == 0


def test_changefeed_rows_survive_instance_delete(index: Index) -> None:
    add(index, make_parsed())
    with index.engine.begin() as conn:
        conn.execute(delete(changefeed))
    assert index.latest_change() is None


# -- concurrency --------------------------------------------------------------------------------


def _writer(url: str, worker: int, batches: int) -> None:
    idx = Index(url)
    try:
        for b in range(batches):
            items = [
                new(make_parsed("5.5", f"5.5.{worker}", f"5.5.{worker}.{b}.{i}", instance_number=i))
                for i in range(10)
            ]
            # every worker also re-sends one shared SOP: exactly one "created" overall
            items.append(new(make_parsed("5.5", "5.5.0", "5.5.0.9")))
            idx.add_instances(items, overwrite=False)
    finally:
        idx.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_writer_processes(backend: str, tmp_path: Path) -> None:
    with backend_url(backend, tmp_path) as url:
        Index(url).migrate()
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_writer, args=(url, w, 5)) for w in range(1, 4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
            assert p.exitcode == 0
        idx = Index(url)
        try:
            found = [i.sop_instance_uid for i in idx.find_instances(1, "5.5")]
            assert len(found) == 3 * 5 * 10 + 1 and len(set(found)) == len(found)
            row = _study_row(idx, "5.5")
            assert (row.num_series, row.num_instances) == (4, 151)  # type: ignore[attr-defined]
            feed = idx.changefeed(offset=0, limit=1000, v2=False)
            assert len(feed) == 151 and all(e.action == "Create" for e in feed)
        finally:
            idx.close()


def test_threads_share_one_index(index: Index) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def work(t: int) -> int:
        for b in range(5):
            index.add_instances(
                [new(make_parsed("6.6", f"6.6.{t}", f"6.6.{t}.{b}.{i}")) for i in range(5)], overwrite=False
            )
            index.search(parse_qido("instance", [("limit", "10")]))
        return len(index.find_instances(1, "6.6", f"6.6.{t}"))

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(work, range(4))) == [25] * 4
    row = _study_row(index, "6.6")
    assert (row.num_series, row.num_instances) == (4, 100)  # type: ignore[attr-defined]


def test_has_object(index: Index) -> None:
    index.add_instances([new(make_parsed(), "k1")], overwrite=False)
    assert index.has_object("k1")
    assert not index.has_object("k2")
    index.add_instances([new(make_parsed(), "k2")], overwrite=True)
    assert index.has_object("k2") and not index.has_object("k1")
    index.delete(1, "1.2.3")
    assert not index.has_object("k2")


def test_a_batch_larger_than_one_lookup_chunk(index: Index) -> None:
    # 700 SOP instances: the lookup of already stored ones runs in two chunks (512, then 188 padded
    # to 256 by repeating the last UID), whose answers must cover exactly the stored ones
    parsed = [make_parsed(sop=f"1.2.3.1.{n}", instance_number=n) for n in range(700)]
    assert add(index, *parsed[:600]) == ["created"] * 600
    statuses = add(index, *parsed, overwrite=False)
    assert statuses == ["exists"] * 600 + ["created"] * 100
    replaced = index.add_instances([new(p) for p in parsed[550:650]], overwrite=True)
    assert [r.status for r in replaced] == ["replaced"] * 100
    assert len(index.find_instances(1, "1.2.3")) == 700
    row = _study_row(index, "1.2.3")
    assert (row.num_series, row.num_instances) == (1, 700)  # type: ignore[attr-defined]


def test_a_known_study_and_series_are_updated_only_in_what_an_instance_changes(
    index: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An UPDATE that sets an indexed column, even to its own value, rewrites that index's entry (a page
    of the WAL per index on SQLite, no in-place update on PostgreSQL): adding to a known study sets only
    its counters when nothing changes, the columns no index covers when only those change, all when an
    indexed one changes; the rows still end as the newest instance says."""
    updates: list[tuple[str, set[str]]] = []
    recorded = WriteBatch._update

    def record(
        batch: WriteBatch, table: Any, key: int, deltas: dict[str, int], values: dict[str, Any]
    ) -> None:
        updates.append((table.name, set(values)))
        recorded(batch, table, key, deltas, values)

    monkeypatch.setattr(WriteBatch, "_update", record)
    add(index, make_parsed())
    updates.clear()
    add(index, make_parsed(sop="1.2.3.1.2", instance_number=2))  # the same study and series values
    assert sorted(updates) == [("series", set()), ("study", set())]

    updates.clear()  # a new name (no index covers it) and a new modality (indexed)
    add(index, make_parsed(sop="1.2.3.1.3", patient_name="Roe^Jane", modality="MR"))
    by_table = dict(updates)
    assert by_table["study"] == set(STUDY_VALUE_COLUMNS) - {
        "patient_id",
        "patient_birth_date",
        "accession_number",
        "study_date",
    }
    assert by_table["series"] == set(SERIES_VALUE_COLUMNS)

    row = _study_row(index, "1.2.3")
    assert row.patient_name == "Roe^Jane" and row.num_instances == 3  # type: ignore[attr-defined]
    assert row.patient_name_norm == "=ROE^JANE=" and row.patient_id == "P1"  # type: ignore[attr-defined]
    [r] = index.search(parse_qido("series", [("includefield", "all")]))
    assert r["00080060"]["Value"] == ["MR"] and r["00201209"]["Value"] == [3]
    [found] = index.search(parse_qido("study", [("PatientName", "Roe*")]))
    assert found["00100010"]["Value"][0]["Alphabetic"] == "Roe^Jane"


def test_name_keys_are_derived_again_only_when_a_name_changes(
    index: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Most stores add to a known study under its own names: its name keys are not derived again (two
    normalisations per commit); a changed name still replaces its keys."""
    import dicomd.index.writer as writer

    derived: list[str | None] = []
    real = writer.study_name_keys

    def counting(values: dict[str, Any]) -> set[tuple[int, str]]:
        derived.append(values.get("patient_name"))
        return real(values)

    monkeypatch.setattr(writer, "study_name_keys", counting)
    add(index, make_parsed(patient_name="Doe^John"))
    assert derived == ["Doe^John"]  # a new study: its keys
    derived.clear()
    add(index, make_parsed(sop="1.2.3.1.2", patient_name="Doe^John"))
    assert derived == []
    add(index, make_parsed(sop="1.2.3.1.3", patient_name="Roe^Jane"))
    assert sorted(derived, key=str) == ["Doe^John", "Roe^Jane"]  # the stored keys and the new ones
    assert index.search(parse_qido("study", [("PatientName", "Doe*")])) == []
    [found] = index.search(parse_qido("study", [("PatientName", "Roe*")]))
    assert found["00100010"]["Value"][0]["Alphabetic"] == "Roe^Jane"


def test_a_schema_migrated_by_a_newer_version_is_refused(index: Index) -> None:
    from sqlalchemy import text

    from dicomd.index.store import SchemaTooNew

    head = index.check_schema()
    assert head is not None and index.migrate() == (head, head)  # at head: nothing to do
    with index.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'ffff_from_the_future'"))
    with pytest.raises(SchemaTooNew, match="newer dicomd"):
        index.check_schema()
    with pytest.raises(SchemaTooNew):
        index.migrate()
