"""The SQL index facade: transactions, locks, migration and statistics, and the public methods.

One code path for SQLite and PostgreSQL (SQLAlchemy Core). Writes are serialised: SQLite has a
single writer anyway (BEGIN IMMEDIATE, so concurrent processes queue on busy_timeout instead of
failing on lock upgrades); on PostgreSQL every write transaction takes one advisory transaction lock.
That keeps change feed sequence order equal to commit order (a v1 reader that saw sequence N can
never later find a committed entry < N), rules out deadlocks between batches touching the same
studies in different orders, and makes the check-then-insert of a SOP instance race free. The ingest
layer group-commits many stores per transaction, so one writer at a time is not the bottleneck.

The parts live beside it: types.py (what goes in and out), rows.py (Index.prepare), writer.py (a
group commit's rows), deleted_objects.py, changefeed.py (reads), sqlite.py (SQLite tuning),
frames.py (stored frame ranges), search.py (QIDO). The names other packages use are importable
from here.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import threading
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    Connection,
    Engine,
    Select,
    bindparam,
    create_engine,
    delete,
    func,
    insert,
    select,
    union_all,
    update,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.pool import NullPool

from dicomd.index import deleted_objects, sqlite
from dicomd.index import schema as _schema
from dicomd.index.changefeed import read_changes, read_latest
from dicomd.index.compiled import CompiledStatements, insert_many
from dicomd.index.frames import FrameTable
from dicomd.index.partitions import create_partition, find_partition, list_partitions
from dicomd.index.qido import QidoQuery
from dicomd.index.rows import prepare_instance
from dicomd.index.schema import (
    DEFAULT_PARTITION_KEY,
    changefeed,
    study_name_key,
    study_series_instance,
    unsynced_object,
)
from dicomd.index.search import run_search
from dicomd.index.types import (
    AddResult,
    AddStatus,
    ChangeEntry,
    NewInstance,
    PreparedInstance,
    SameFile,
    StoredInstance,
    UnsyncedBatch,
)
from dicomd.index.writer import WriteBatch

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# PostgreSQL advisory lock ids ("dicomd" + purpose)
_PG_WRITE_LOCK = 0x6469636F6D0001
_PG_MIGRATE_LOCK = 0x6469636F6D0002
_PG_JOB_LOCKS = 0x6469636F6E0000  # + a job's name hashed into 16 bits (Index.job_lease)
log = logging.getLogger(__name__)

# PostgreSQL: the first ANALYZE after this many rows added by a process (then after twice as many more)
_FIRST_ANALYZE = 1000
_ANALYZED_TABLES = ("study", "series", "instance", "study_name_key", "changefeed")
_KNOWN_CHUNK = 500  # object keys per known_objects query
_LOCK_FLAGS = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@contextmanager
def _cursor(conn: Connection) -> Iterator[Any]:
    """A DBAPI cursor on the connection's current transaction."""
    cur = conn.connection.cursor()
    try:
        yield cur
    finally:
        cur.close()


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
        .select_from(study_series_instance)
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


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def _current_revision(conn: Connection) -> str | None:
    heads = MigrationContext.configure(conn).get_current_heads()
    return heads[0] if heads else None  # the migrations are one line: one head at most


def _refuse_unknown(revision: str | None) -> None:
    script = ScriptDirectory.from_config(_alembic_config())
    if revision is not None and revision not in {r.revision for r in script.walk_revisions()}:
        raise SchemaTooNew(
            f"the index database's schema (revision {revision}) was migrated by a newer dicomd than this "
            f"one (which knows up to revision {script.get_current_head()}): run the newer version"
        )


class IndexBusy(Exception):
    """Another process held a lock of the index for longer than this process was willing to wait."""


class SchemaTooNew(Exception):
    """The database's schema was migrated by a newer dicomd: this code must not read or write it."""


def unavailable_errors() -> tuple[type[Exception], ...]:
    """The errors that mean "the index is down, slow or busy; try again later" (503 to clients): a
    connection that fails or is lost, a statement or lock timeout, no pooled connection in time, a lock
    another process holds too long."""
    return (OperationalError, InterfaceError, PoolTimeout, IndexBusy)


def _pg_connect_args(url: URL, timeout: float | None) -> dict[str, Any]:
    """psycopg connection arguments: a connect timeout, and statement and lock timeouts for every
    session (migrations and ``optimize`` lift them for their transaction). The URL's own ``options``
    (e.g. a search_path) are kept: connect_args replace the URL's query values."""
    if timeout is None:
        return {}
    millis = max(1, int(timeout * 1000))
    options = [str(url.query["options"])] if "options" in url.query else []
    options += [f"-c statement_timeout={millis}", f"-c lock_timeout={millis}"]
    # libpq's connect_timeout is whole seconds, at least 2
    return {"connect_timeout": max(2, math.ceil(timeout)), "options": " ".join(options)}


def _lift_timeouts(conn: Connection) -> None:
    """No statement or lock timeout for the rest of this transaction (PostgreSQL): a migration or an
    ANALYZE may rightly take long, and waits for the running servers' locks."""
    conn.exec_driver_sql("SET LOCAL statement_timeout = 0")
    conn.exec_driver_sql("SET LOCAL lock_timeout = 0")


class Index:
    """The dicomd SQL index. Thread-safe (connection pool); every method that touches the database is
    one transaction, or one statement (the hot reads: find_instances, search).

    ``delete_grace_period`` (seconds): deleted or replaced objects are offered for removal only after
    this long, so a retrieve that started before the delete still finds every object it reads.
    ``lock_timeout`` (seconds): how long to wait for another process's write or migration lock before
    raising IndexBusy; None waits as long as it takes (web workers: the holder is a short commit).
    ``pool_size``: connections kept (and at most open) per process. ``timeout`` (seconds; web workers:
    ``db_timeout``): how long to wait for a pooled connection, a new connection and, on PostgreSQL, a
    statement or a lock (not in migrations or ``optimize``), before the call fails with a
    ``TimeoutError`` or ``OperationalError`` (503 to clients, see ``unavailable_errors``); None: no
    limits (the commands).
    """

    def __init__(
        self,
        url: str,
        *,
        delete_grace_period: float = 0.0,
        lock_timeout: float | None = None,
        pool_size: int = 8,
        timeout: float | None = None,
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
        # hide_parameters: a database error is logged with its statement, whose values are UIDs and names;
        # a bounded pool: a burst waits for a connection (up to ``timeout``) instead of opening ever more
        pool: dict[str, Any] = {"pool_size": pool_size, "max_overflow": 0, "hide_parameters": True}
        if timeout is not None:
            pool["pool_timeout"] = timeout
        if self._is_sqlite:
            self.engine: Engine = create_engine(self.url, **pool)
            sqlite.install(self.engine)
        else:
            self.engine = create_engine(
                self.url, pool_pre_ping=True, connect_args=_pg_connect_args(self.url, timeout), **pool
            )
        self._statements = CompiledStatements(self.engine.dialect)  # SQL of the hot paths
        self._migrate_lock = threading.Lock()
        self._writer_thread_lock = threading.Lock()
        # SQLite: the connection of this process's unflushed commits (see _unflushed_writer), from an
        # engine of its own whose connections commit with synchronous=NORMAL
        self._unflushed_engine: Engine | None = None
        self._unflushed_conn: Connection | None = None
        if self._sqlite_file is not None:  # (an in-memory database is one per connection)
            self._unflushed_engine = create_engine(
                self.url,
                poolclass=NullPool,  # never pooled, never handed to another writer
                hide_parameters=True,
                connect_args={"check_same_thread": False},  # commit threads and associations take turns
            )
            sqlite.install(self._unflushed_engine, flushed=False)
        self._writer_lock_fd: int | None = None
        # PostgreSQL: rows this process added since it last refreshed the planner statistics, and the
        # count at which it does so next (see _refresh_statistics_as_it_grows)
        self._added_since_analyze = 0
        self._analyze_after = _FIRST_ANALYZE
        self._analyze_lock = threading.Lock()

    @property
    def sqlite_file(self) -> str | None:
        """The SQLite database file (None: PostgreSQL, or an in-memory SQLite database)."""
        return self._sqlite_file

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

    @property
    def engines(self) -> tuple[Engine, ...]:
        """Every engine this index connects with: the pooled one, and on SQLite the one of its unflushed
        commits (see _unflushed_writer)."""
        return (self.engine,) if self._unflushed_engine is None else (self.engine, self._unflushed_engine)

    def reconnect(self) -> None:
        """Close every connection, pooled or held, once no commit of this process uses them; the next
        use opens new ones (and loads the planner statistics anew)."""
        with self._writer_thread_lock:  # the unflushed commits' connection is used under it
            self._drop_unflushed_writer()
        for engine in self.engines:
            engine.dispose()

    def close(self) -> None:
        self.reconnect()
        if self._writer_lock_fd is not None:
            os.close(self._writer_lock_fd)
            self._writer_lock_fd = None

    # -- schema -----------------------------------------------------------------------------

    def migrate(self) -> tuple[str | None, str]:
        """Create or upgrade the schema (Alembic `upgrade head`); safe from concurrent processes (replicas
        starting together: one migrates, the others then find the schema at head) and next to running
        servers: a schema already at head is only read. Returns the revisions (before, after).
        Raises SchemaTooNew when a newer dicomd migrated the database."""
        cfg = _alembic_config()
        self._create_private_file()
        with self._migrate_lock, self._cross_process_migrate_lock():
            before = self.check_schema()
            head = ScriptDirectory.from_config(cfg).get_current_head()
            if before == head:
                return before, head or ""
            with self._write(unlimited=True) as conn:
                if not self._is_sqlite:
                    conn.execute(select(func.pg_advisory_xact_lock(_PG_MIGRATE_LOCK)))
                    # under the lock: another replica may have migrated while this one waited
                    before = _current_revision(conn)
                    _refuse_unknown(before)
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
                if self._is_sqlite:
                    sqlite.seed_stats(conn)
        # open connections loaded planner statistics when they were opened
        self.reconnect()
        return before, head or ""

    def check_schema(self) -> str | None:
        """The schema's revision (None: no schema yet). Raises SchemaTooNew when it is unknown to this
        code, i.e. a newer dicomd migrated the database: a replica must not serve it."""
        with self.engine.connect() as conn:
            current = _current_revision(conn)
            conn.rollback()
        _refuse_unknown(current)
        return current

    def optimize(self) -> None:
        """Refresh planner statistics from the real data (call now and then, e.g. daily).

        PostgreSQL's autovacuum does this by itself; SQLite only plans well with statistics.
        """
        with self._write(unlimited=True) as conn:  # as a writer: a read transaction's upgrade would fail
            if self._is_sqlite:
                conn.exec_driver_sql("PRAGMA analysis_limit=2000")  # sampled: seconds, not minutes
            conn.exec_driver_sql("ANALYZE")
        self.reconnect()

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
    def _write(self, *, unlimited: bool = False, flushed: bool = True) -> Iterator[Connection]:
        """A write transaction; ``unlimited``: without the statement and lock timeouts (PostgreSQL).
        ``flushed=False`` (SQLite): its commit does not flush the WAL to the device, the caller's
        syncfs of the same file system does (see add_instances)."""
        if not flushed and self._unflushed_engine is not None:
            with self._sqlite_writer_lock():
                conn = self._unflushed_writer()
                try:
                    with conn.begin():
                        yield conn
                except BaseException:
                    self._drop_unflushed_writer()  # rolled back; a new connection for the next commit
                    raise
            return
        with self._sqlite_writer_lock(), self.engine.connect() as conn:
            if self._is_sqlite:
                sqlite.begin_immediate(conn)
            with conn.begin():
                if not self._is_sqlite:
                    if unlimited:
                        _lift_timeouts(conn)
                    conn.execute(select(func.pg_advisory_xact_lock(_PG_WRITE_LOCK)))
                yield conn

    def _unflushed_writer(self) -> Connection:
        """The connection of this process's unflushed commits, under the writer lock: its own, opened
        with ``synchronous=NORMAL`` and held between commits. A pooled connection switched to NORMAL for
        each commit and back to FULL cost two pragmas and a pool check-out and check-in per commit,
        ~40-50 us of a single-instance commit; and the commits keep one page cache."""
        conn = self._unflushed_conn
        if conn is None:
            assert self._unflushed_engine is not None
            conn = self._unflushed_engine.connect()
            sqlite.begin_immediate(conn)
            self._unflushed_conn = conn
        return conn

    def _drop_unflushed_writer(self) -> None:  # under the writer lock
        conn, self._unflushed_conn = self._unflushed_conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

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
        dbapi: Any = self.engine.dialect.loaded_dbapi
        try:
            fairy = self.engine.raw_connection()
        except dbapi.Error as exc:  # a raw connection's errors are the driver's own: wrap them as usual
            raise DBAPIError.instance(sql, None, exc, dbapi.Error, hide_parameters=True) from None
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
        except dbapi.Error as exc:
            if isinstance(exc, dbapi.OperationalError | dbapi.InterfaceError):
                fairy.invalidate()  # perhaps a lost connection: never hand it out again
            raise DBAPIError.instance(sql, None, exc, dbapi.Error, hide_parameters=True) from None
        finally:
            fairy.close()

    # -- partitions -------------------------------------------------------------------------

    # (index/partitions.py holds the queries; these are its short forms for callers holding an Index)

    def partitions(self) -> list[tuple[int, str]]:
        return [(p.key, p.name) for p in list_partitions(self.engine)]

    def partition_key(self, name: str) -> int | None:
        found = find_partition(self.engine, name)
        return found.key if found is not None else None

    def ensure_partition(self, name: str) -> int:
        """Key of the named partition, created if missing (race-free across processes)."""
        return create_partition(self.engine, name).key

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
        unsynced: UnsyncedBatch | None = None,
    ) -> list[AddResult]:
        """Index a batch of stored instances in one transaction; results in the order of `items`.

        With ``unsynced`` (SQLite, whose file system the caller syncs next): the commit does not flush
        the WAL, and the stored instances are recorded as committed ahead of their flush, with their
        files' sizes and checksums, until a later batch of the same staging area says they are synced.

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
        if unsynced is not None and not self._is_sqlite:
            raise ValueError("only a SQLite index commits ahead of the objects' flush")
        with self._write(flushed=unsynced is None) as conn, _cursor(conn) as cur:
            batch = WriteBatch(cur, self._statements, _now_ms())
            batch.prefetch(prepared)
            results = [batch.add(entry, overwrite, same_file) for entry in prepared]
            batch.flush()
            if unsynced is not None:
                _record_unsynced(conn, cur, self._statements, unsynced, prepared, results)
        if not self._is_sqlite:
            self._refresh_statistics_as_it_grows(len(prepared))
        return results

    def _refresh_statistics_as_it_grows(self, added: int) -> None:
        """PostgreSQL: ANALYZE after this process has added 1,000 rows, then 2,000 more, 4,000 more...

        Plans made while the tables were small (psycopg prepares the hot statements, and PostgreSQL keeps
        a generic plan for them) stay until statistics change. Without autovacuum (turned off on some
        servers) or before its autoanalyze catches up with a bulk load, the batch lookup kept a plan
        from the empty tables that walks every series: a `dicomd import` fell from 600 to 280
        instances/s within its first 70k. An ANALYZE (sampled: ~0.1-0.3 s at any size) invalidates those
        plans; doubling the interval bounds it to ~20 runs per process up to a billion rows."""
        with self._analyze_lock:
            self._added_since_analyze += added
            if self._added_since_analyze < self._analyze_after:
                return
            self._added_since_analyze = 0
            self._analyze_after *= 2
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql(f"ANALYZE {', '.join(_ANALYZED_TABLES)}")
                conn.commit()
        except Exception as exc:  # statistics are an optimisation: never fail a store for them
            log.warning("refreshing the index statistics failed (%s)", type(exc).__name__)

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
        st_t, se_t, i_t = _schema.study, _schema.series, _schema.instance
        stmt = _removal_select().where(
            st_t.c.partition_key == partition_key, st_t.c.study_instance_uid == study
        )
        if series is not None:
            stmt = stmt.where(se_t.c.series_instance_uid == series)
        if instance is not None:
            stmt = stmt.where(i_t.c.sop_instance_uid == instance)
        with self._write() as conn:
            rows = conn.execute(stmt).all()
            if rows:
                _remove_instances(conn, self._statements, rows)
        return len(rows)

    def unsynced_objects(self, staging_area: str) -> list[tuple[str, int, int]]:
        """(object key, file size, CRC-32) of the instances committed ahead of their flush from this
        staging area and not yet known to be synced (see add_instances)."""
        u_t = unsynced_object
        with self._read() as conn:
            rows = conn.execute(
                select(u_t.c.object_key, u_t.c.file_size, u_t.c.checksum).where(
                    u_t.c.staging_area == staging_area
                )
            ).all()
        return [(key, size, checksum) for key, size, checksum in rows]

    def restart_wal(self) -> bool:
        """SQLite: copy every frame of the WAL into the database file and flush it, so that the next
        commit writes the WAL from its start (``wal_checkpoint(RESTART)``, waiting for readers up to the
        busy timeout). False when readers kept it from completing. See ``SharedFlush.before_commit``."""
        with self._sqlite_writer_lock(), self.engine.connect() as conn:
            dbapi: Any = conn.connection.driver_connection
            busy, _, _ = dbapi.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        return bool(busy == 0)

    def settle_unsynced(
        self, lost: Iterable[str], *, synced: Sequence[str] = (), staging_area: str | None = None
    ) -> int:
        """Roll back the instances of the ``lost`` object keys, stored ahead of a flush that never
        came (a failed sync; a crash before it: never acknowledged), as deletes in the change feed, and
        forget their unsynced rows, those of ``synced`` keys and (recovery) all of ``staging_area``'s.
        Returns how many were rolled back."""
        lost = list(lost)
        i_t, u_t = _schema.instance, unsynced_object
        removed = 0
        with self._write() as conn:
            for start in range(0, len(lost), _KNOWN_CHUNK):
                chunk = lost[start : start + _KNOWN_CHUNK]
                rows = conn.execute(_removal_select().where(i_t.c.object_key.in_(chunk))).all()
                if rows:
                    _remove_instances(conn, self._statements, rows)
                    removed += len(rows)
            _forget_unsynced(conn, [*lost, *synced])
            if staging_area is not None:
                conn.execute(delete(u_t).where(u_t.c.staging_area == staging_area))
        return removed

    def claim_deleted_objects(self, limit: int) -> list[tuple[int, str]]:
        """Storage objects due for removal: (id, object_key). Claimed rows are hidden from other
        workers until their retry time (exponential backoff), so a crashed worker's claims come back."""
        # a row is due delete_grace_ms after its next_attempt_at (readers in flight finish first);
        # a claim sets the next attempt so that a retry is due after the backoff alone
        due = _now_ms() - self.delete_grace_ms
        with self._queue_transaction() as conn:
            return deleted_objects.claim(conn, limit, due, skip_locked=not self._is_sqlite)

    def forget_deleted_objects(self, ids: list[int]) -> None:
        """Drop queue rows whose storage objects are gone."""
        if not ids:
            return
        with self._queue_transaction() as conn:
            deleted_objects.forget(conn, ids)

    @contextmanager
    def _queue_transaction(self) -> Iterator[Connection]:
        """A transaction on the deleted-object queue alone. PostgreSQL: without the writers' advisory
        lock (it orders the change feed, which the queue does not touch): row locks and SKIP LOCKED let
        the workers of every replica claim disjoint rows at once. SQLite: a writer as any other."""
        if self._is_sqlite:
            with self._write() as conn:
                yield conn
        else:
            with self.engine.connect() as conn, conn.begin():
                yield conn

    def stored_versions(self, wanted: Iterable[tuple[int, str]]) -> dict[tuple[int, str], tuple[str, int]]:
        """The object key and file size of the indexed instances among these (partition key, SOP
        Instance UID) pairs. Read without the writer lock: a hint that may be stale by the commit (the
        committer compares re-sent bytes outside the lock and the writer re-checks the key)."""
        by_partition: dict[int, list[str]] = {}
        for pk, sop in wanted:
            by_partition.setdefault(pk, []).append(sop)
        found: dict[tuple[int, str], tuple[str, int]] = {}
        i_t = _schema.instance
        with self._read() as conn:
            for pk, sops in by_partition.items():
                for start in range(0, len(sops), _KNOWN_CHUNK):
                    chunk = sops[start : start + _KNOWN_CHUNK]
                    rows = conn.execute(
                        select(i_t.c.sop_instance_uid, i_t.c.object_key, i_t.c.file_size).where(
                            i_t.c.partition_key == pk, i_t.c.sop_instance_uid.in_(chunk)
                        )
                    )
                    for sop, object_key, size in rows:
                        found[(pk, sop)] = (object_key, size)
        return found

    def sop_classes(self, partition_key: int, sop_instance_uids: Iterable[str]) -> dict[str, str]:
        """SOP Instance UID -> SOP Class UID of those of these instances the partition holds (Storage
        Commitment asks: is each one stored, and as what?)."""
        wanted = list(dict.fromkeys(sop_instance_uids))
        found: dict[str, str] = {}
        i_t = _schema.instance
        with self._read() as conn:
            for start in range(0, len(wanted), _KNOWN_CHUNK):
                chunk = wanted[start : start + _KNOWN_CHUNK]
                rows = conn.execute(
                    select(i_t.c.sop_instance_uid, i_t.c.sop_class_uid).where(
                        i_t.c.partition_key == partition_key, i_t.c.sop_instance_uid.in_(chunk)
                    )
                )
                found.update((sop, sop_class) for sop, sop_class in rows)
        return found

    def known_objects(self, keys: Iterable[str]) -> set[str]:
        """Which of these object keys the index names: an instance's, or one queued for removal (the
        cleanup job removes those after the grace period). The orphan sweep removes the others."""
        wanted = list(keys)
        found: set[str] = set()
        i_t, d_t = _schema.instance, _schema.deleted_object
        with self._read() as conn:
            for start in range(0, len(wanted), _KNOWN_CHUNK):
                chunk = wanted[start : start + _KNOWN_CHUNK]
                stmt = union_all(
                    select(i_t.c.object_key).where(i_t.c.object_key.in_(chunk)),
                    select(d_t.c.object_key).where(d_t.c.object_key.in_(chunk)),
                )
                found.update(conn.execute(stmt).scalars())
        return found

    @contextmanager
    def job_lease(self, job: str) -> Iterator[bool]:
        """Whether this process holds the lease of a background job for the block: one holder at a time
        across all processes and replicas, and no waiting (False: another holds it; skip this pass).

        PostgreSQL: a session advisory lock on a connection kept for the block; a replica that dies
        loses its connection and with it the lease. SQLite: an flock on a file beside the database,
        which the kernel drops when the process dies."""
        if self._is_sqlite:
            with self._job_file_lease(job) as held:
                yield held
            return
        lock_id = _PG_JOB_LOCKS + zlib.crc32(job.encode()) % 0x10000
        with self.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")  # no transaction held open
            held = bool(conn.execute(select(func.pg_try_advisory_lock(lock_id))).scalar())
            try:
                yield held
            finally:
                if held:
                    try:
                        conn.execute(select(func.pg_advisory_unlock(lock_id)))
                    except DBAPIError:
                        conn.invalidate()  # a lost connection released the lock; never pool it

    @contextmanager
    def _job_file_lease(self, job: str) -> Iterator[bool]:
        if self._sqlite_file is None:
            yield True  # an in-memory database has one process
            return
        fd = os.open(f"{self._sqlite_file}.job-{job}.lock", _LOCK_FLAGS, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    # -- search -----------------------------------------------------------------------------

    def search(self, q: QidoQuery) -> list[dict[str, Any]]:
        """QIDO results as DICOM JSON datasets (RetrieveURL is added by the web layer)."""
        return run_search(self._statements, self._fetch, q)

    # -- change feed ------------------------------------------------------------------------

    def changefeed(
        self,
        *,
        offset: int,
        limit: int,
        start: datetime | None = None,
        end: datetime | None = None,
        v2: bool,
        partition_key: int | None = None,
    ) -> list[ChangeEntry]:
        """v1: entries after sequence `offset`; v2: [start, end) time window, skip `offset` rows. Of one
        partition, or of all when `partition_key` is None."""
        with self._read() as conn:
            return read_changes(
                conn, offset=offset, limit=limit, start=start, end=end, v2=v2, partition_key=partition_key
            )

    def ping(self) -> None:
        """One round trip to the database (health checks); raises when it is unreachable."""
        self._fetch("SELECT 1", ())

    def latest_change(self, partition_key: int | None = None) -> ChangeEntry | None:
        with self._read() as conn:
            return read_latest(conn, partition_key)


__all__ = [
    "DEFAULT_PARTITION_KEY",
    "MIGRATIONS_DIR",
    "AddResult",
    "AddStatus",
    "ChangeEntry",
    "FrameTable",
    "Index",
    "IndexBusy",
    "NewInstance",
    "PreparedInstance",
    "SameFile",
    "SchemaTooNew",
    "StoredInstance",
]


def _removal_select() -> Select[Any]:
    """The instance rows ``_remove_instances`` needs, to be narrowed with a WHERE clause."""
    i_t, se_t, st_t = _schema.instance, _schema.series, _schema.study
    return (
        select(
            i_t.c.instance_key,
            i_t.c.series_key,
            i_t.c.study_key,
            i_t.c.sop_instance_uid,
            i_t.c.object_key,
            se_t.c.series_instance_uid,
            st_t.c.partition_key,
            st_t.c.study_instance_uid,
        )
        .select_from(study_series_instance)
        .order_by(i_t.c.instance_key)
    )


def _remove_instances(conn: Connection, statements: CompiledStatements, rows: Sequence[Any]) -> None:
    """Delete these instances (rows of ``_removal_select``) in the caller's write transaction: their
    series and studies recounted and dropped when emptied, their objects queued for removal, a Delete
    entry each in the change feed."""
    i_t, se_t, st_t = _schema.instance, _schema.series, _schema.study
    now = _now_ms()
    study_keys = sorted({r.study_key for r in rows})
    series_keys = sorted({r.series_key for r in rows})
    instance_keys = [r.instance_key for r in rows]
    for start in range(0, len(instance_keys), _KNOWN_CHUNK):
        conn.execute(delete(i_t).where(i_t.c.instance_key.in_(instance_keys[start : start + _KNOWN_CHUNK])))
    # recount rather than subtract: cheap (indexed) and self-correcting
    conn.execute(
        update(se_t)
        .where(se_t.c.series_key.in_(series_keys))
        .values(
            num_instances=select(func.count()).where(i_t.c.series_key == se_t.c.series_key).scalar_subquery(),
            updated_at=now,
        )
    )
    conn.execute(delete(se_t).where(se_t.c.series_key.in_(series_keys), se_t.c.num_instances == 0))
    conn.execute(
        update(st_t)
        .where(st_t.c.study_key.in_(study_keys))
        .values(
            num_series=select(func.count()).where(se_t.c.study_key == st_t.c.study_key).scalar_subquery(),
            num_instances=select(func.count()).where(i_t.c.study_key == st_t.c.study_key).scalar_subquery(),
            updated_at=now,
        )
    )
    emptied = select(st_t.c.study_key).where(st_t.c.study_key.in_(study_keys), st_t.c.num_series == 0)
    conn.execute(delete(study_name_key).where(study_name_key.c.study_key.in_(emptied)))
    conn.execute(delete(st_t).where(st_t.c.study_key.in_(study_keys), st_t.c.num_series == 0))
    with _cursor(conn) as cur:
        deleted_objects.enqueue(cur, statements, [r.object_key for r in rows], now)
    conn.execute(
        insert(changefeed),
        [
            {
                "partition_key": r.partition_key,
                "study_instance_uid": r.study_instance_uid,
                "series_instance_uid": r.series_instance_uid,
                "sop_instance_uid": r.sop_instance_uid,
                "action": "Delete",
                "timestamp": now,
                "object_key": r.object_key,
            }
            for r in rows
        ],
    )


def _record_unsynced(
    conn: Connection,
    cur: Any,
    statements: CompiledStatements,
    unsynced: UnsyncedBatch,
    prepared: Sequence[PreparedInstance],
    results: Sequence[AddResult],
) -> None:
    """In add_instances' transaction: the stored instances of a batch committed ahead of its flush
    (precompiled, on the DBAPI cursor: once per commit), and forget those of earlier batches that are
    synced now."""
    if unsynced.synced:
        _forget_unsynced(conn, unsynced.synced)
    area = unsynced.staging_area
    rows = []
    for entry, result in zip(prepared, results, strict=True):
        if result.status in ("created", "replaced"):
            key = entry.item.object_key
            size, checksum = unsynced.checksums[key]
            rows.append({"object_key": key, "staging_area": area, "file_size": size, "checksum": checksum})
    if rows:
        insert_many(cur, statements, unsynced_object, rows)


def _forget_unsynced(conn: Connection, keys: Sequence[str]) -> None:
    u_t = unsynced_object
    for start in range(0, len(keys), _KNOWN_CHUNK):
        conn.execute(delete(u_t).where(u_t.c.object_key.in_(keys[start : start + _KNOWN_CHUNK])))
