"""Data partitions in the index: look-up by name or key, the list, and creation on first store.

Creation is race free across processes without the index's writer lock: an INSERT that does nothing on
a conflict (the name's unique constraint, or the key another process took at the same moment), then a
look-up by name; a lost race on the key is tried again with the next key."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func, literal, select, true
from sqlalchemy.dialects import postgresql, sqlite

from dicomd.index import sqlite as sqlite_tuning
from dicomd.index.schema import partition

# Azure's rule for partition names
PARTITION_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_CREATE_ATTEMPTS = 20


@dataclass(frozen=True, slots=True)
class Partition:
    key: int
    name: str
    created: datetime  # aware, UTC


def is_valid_partition_name(name: str) -> bool:
    return PARTITION_NAME.fullmatch(name) is not None


def _partition(row: Any) -> Partition:
    created = datetime.fromtimestamp(row.created_at / 1000, tz=UTC)
    return Partition(int(row.partition_key), row.partition_name, created)


_COLUMNS = (partition.c.partition_key, partition.c.partition_name, partition.c.created_at)


def find_partition(engine: Engine, name: str) -> Partition | None:
    """The partition named ``name``, or None."""
    with engine.connect() as conn, conn.begin():
        row = conn.execute(select(*_COLUMNS).where(partition.c.partition_name == name)).first()
    return _partition(row) if row is not None else None


def partition_by_key(engine: Engine, key: int) -> Partition | None:
    with engine.connect() as conn, conn.begin():
        row = conn.execute(select(*_COLUMNS).where(partition.c.partition_key == key)).first()
    return _partition(row) if row is not None else None


def list_partitions(engine: Engine) -> list[Partition]:
    """Every partition, by key (the default partition first)."""
    with engine.connect() as conn, conn.begin():
        rows = conn.execute(select(*_COLUMNS).order_by(partition.c.partition_key)).all()
    return [_partition(r) for r in rows]


def _insert_if_absent(engine: Engine, name: str) -> None:
    """One attempt: the next free key for ``name``; nothing happens when the name or that key is taken."""
    next_key = select(
        func.coalesce(func.max(partition.c.partition_key), 0) + 1,
        literal(name),
        literal(int(time.time() * 1000)),
    ).where(true())  # SQLite parses "INSERT ... SELECT ... ON CONFLICT" only with a WHERE in the SELECT
    columns = ["partition_key", "partition_name", "created_at"]
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            sqlite_tuning.begin_immediate(conn)  # a writer from the start: waits on busy_timeout
            stmt: Any = sqlite.insert(partition).from_select(columns, next_key).on_conflict_do_nothing()
        else:
            stmt = postgresql.insert(partition).from_select(columns, next_key).on_conflict_do_nothing()
        with conn.begin():
            conn.execute(stmt)


def create_partition(engine: Engine, name: str) -> Partition:
    """The partition named ``name``, created when missing (by this or any other process)."""
    for _ in range(_CREATE_ATTEMPTS):
        found = find_partition(engine, name)
        if found is not None:
            return found
        _insert_if_absent(engine, name)
    # every attempt lost its key to another process creating another partition: unheard of
    raise RuntimeError("a partition could not be created (too many concurrent creations)")
