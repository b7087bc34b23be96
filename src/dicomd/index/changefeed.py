"""Change-feed reads: entries by sequence (v1) or time window (v2), each with its state (Current,
Replaced, Deleted) from the instance's current object key. The entries are written in the
transactions that change the instances (writer.py, Index.delete).

A partition's feed holds only its own entries. Sequence numbers are global, so a partition's v1 feed has
gaps where other partitions' entries are; a v1 reader pages by the last sequence it saw (exclusive), which
skips them correctly, and commit order equals sequence order across partitions (one writer at a time)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, select

from dicomd.index.schema import changefeed, instance
from dicomd.index.types import ChangeEntry, State


def _to_ms(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)  # naive datetimes are taken as UTC
    return int(dt.timestamp() * 1000)


def _from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _entries_select(page: Any) -> Any:
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


def read_changes(
    conn: Connection,
    *,
    offset: int,
    limit: int,
    start: datetime | None,
    end: datetime | None,
    v2: bool,
    partition_key: int | None = None,
) -> list[ChangeEntry]:
    """v1: entries after sequence `offset`; v2: [start, end) time window, skip `offset` rows; of one
    partition, or of all when ``partition_key`` is None."""
    page = select(changefeed.c.sequence)
    if partition_key is not None:
        page = page.where(changefeed.c.partition_key == partition_key)
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
    stmt = _entries_select(page.limit(limit).subquery()).order_by(*order)
    return [_entry(r) for r in conn.execute(stmt)]


def read_latest(conn: Connection, partition_key: int | None = None) -> ChangeEntry | None:
    """The newest entry (of one partition, or of all when ``partition_key`` is None), if any."""
    page = select(changefeed.c.sequence)
    if partition_key is not None:
        page = page.where(changefeed.c.partition_key == partition_key)
    page = page.order_by(changefeed.c.sequence.desc()).limit(1)
    row = conn.execute(_entries_select(page.subquery())).first()
    return _entry(row) if row is not None else None
