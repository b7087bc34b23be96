"""The deleted-object queue: storage objects of deleted or replaced instances, enqueued in the
transaction that drops their rows and removed by jobs/cleanup.py once the grace period has passed.

Claimed rows are hidden from other workers until their retry time (exponential backoff), so the
claims of a crashed worker (or replica) come back. On PostgreSQL a claim locks its rows with
``FOR UPDATE SKIP LOCKED``, so workers of every replica claiming at once get disjoint rows without
waiting for each other.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, bindparam, delete, select, update

from dicomd.index.compiled import CompiledStatements, insert_many
from dicomd.index.schema import deleted_object

# claimed deleted objects are offered again after this lease/backoff (doubling per attempt)
_RETRY_BASE_MS = 60_000
_RETRY_MAX_MS = 6 * 3600_000
_FORGET_CHUNK = 500  # ids per DELETE


def enqueue(cur: Any, statements: CompiledStatements, keys: list[str], now: int) -> None:
    """Queue storage objects for removal, on the write transaction's DBAPI cursor."""
    if keys:
        insert_many(
            cur,
            statements,
            deleted_object,
            [{"object_key": k, "enqueued_at": now, "attempts": 0, "next_attempt_at": now} for k in keys],
        )


def _retry_delay_ms(attempts: int) -> int:
    return int(min(_RETRY_BASE_MS * 2 ** min(attempts - 1, 20), _RETRY_MAX_MS))


def claim(conn: Connection, limit: int, due: int, *, skip_locked: bool) -> list[tuple[int, str]]:
    """Claim up to `limit` rows whose next attempt is at or before `due`: (id, object_key).

    The next attempt of a claimed row is set so that it is due again after the backoff alone.
    skip_locked: rows another transaction holds are skipped (PostgreSQL; SQLite has one writer).
    """
    stmt = (
        select(deleted_object.c.id, deleted_object.c.object_key, deleted_object.c.attempts)
        .where(deleted_object.c.next_attempt_at <= due)
        .order_by(deleted_object.c.next_attempt_at, deleted_object.c.id)
        .limit(limit)
    )
    if skip_locked:
        stmt = stmt.with_for_update(skip_locked=True)
    rows = conn.execute(stmt).all()
    if rows:
        conn.execute(  # one executemany (psycopg pipelines it): one round trip for the batch
            update(deleted_object)
            .where(deleted_object.c.id == bindparam("row_id"))
            .values(attempts=bindparam("new_attempts"), next_attempt_at=bindparam("next_at")),
            [
                {
                    "row_id": r.id,
                    "new_attempts": r.attempts + 1,
                    "next_at": due + _retry_delay_ms(r.attempts + 1),
                }
                for r in rows
            ],
        )
    return [(int(r.id), r.object_key) for r in rows]


def forget(conn: Connection, ids: list[int]) -> None:
    """Drop queue rows by id."""
    for start in range(0, len(ids), _FORGET_CHUNK):
        conn.execute(
            delete(deleted_object).where(deleted_object.c.id.in_(ids[start : start + _FORGET_CHUNK]))
        )
