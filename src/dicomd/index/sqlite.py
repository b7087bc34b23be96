"""SQLite tuning: pragmas of each new connection, the BEGIN mode of each transaction, and planner
statistics seeded at migration."""

from __future__ import annotations

import sqlite3
from typing import Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy.exc import DBAPIError

_BUSY_TIMEOUT_MS = 30_000

# Planner statistics seeded into a new SQLite database, as for a large archive (1M instances, one
# partition). Without statistics SQLite picks any index starting with partition_key for "partition_key
# = ? ORDER BY key LIMIT 100" and sorts the whole table; with them it walks the primary key and stops
# after 100 rows, and prefers the selective indexes (patient_id, uids...). Index.optimize() replaces
# them with statistics of the real data.
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


def install(engine: Engine, *, flushed: bool = True) -> None:
    """Tune every connection the engine opens, and its transactions' BEGIN. ``flushed=False``: its
    commits do not flush the WAL to the device (``synchronous=NORMAL``: a crash may lose them, never
    corrupt the database); whoever commits on it makes them durable with a syncfs of the file system
    (Index.add_instances with ``unsynced``). Every other engine's commits flush (``FULL``)."""
    event.listen(engine, "connect", _on_connect if flushed else _on_connect_unflushed)
    event.listen(engine, "begin", _on_begin)


def begin_immediate(conn: Connection) -> None:
    """Make the connection's next transactions BEGIN IMMEDIATE (writers)."""
    conn.execution_options(dicomd_begin="IMMEDIATE")  # read by _on_begin


def seed_stats(conn: Connection) -> None:
    """Seed planner statistics for each table that has none (see _SEED_ROWS)."""
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


def _on_connect(dbapi_conn: Any, _record: Any, synchronous: str = "FULL") -> None:
    # let SQLAlchemy's begin event emit BEGIN (pysqlite's implicit transactions are wrong for us)
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    try:
        cur.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")  # several processes write
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")  # FULL: a committed store survives an OS crash
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA case_sensitive_like=ON")  # DICOM matching is case-sensitive, as on PG
    finally:
        cur.close()


def _on_connect_unflushed(dbapi_conn: Any, record: Any) -> None:
    _on_connect(dbapi_conn, record, "NORMAL")


_BEGIN = {"DEFERRED": "BEGIN DEFERRED", "IMMEDIATE": "BEGIN IMMEDIATE"}


def _on_begin(conn: Connection) -> None:
    # IMMEDIATE for writers: take the write lock up front, waiting on busy_timeout, instead of
    # failing with SQLITE_BUSY when a read transaction later tries to upgrade. On the driver's
    # connection: SQLAlchemy's statement machinery cost ~20 us here, for every transaction (its error
    # wrapping is kept: a busy or locked database is an OperationalError as from any statement).
    statement = _BEGIN[conn.get_execution_options().get("dicomd_begin", "DEFERRED")]
    try:
        conn.connection.driver_connection.execute(statement)  # type: ignore[union-attr]
    except sqlite3.Error as exc:
        raise DBAPIError.instance(statement, None, exc, sqlite3.Error, hide_parameters=True) from None
