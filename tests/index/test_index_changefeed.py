"""Change feed: v1 paging over sequence gaps, v2 time windows, latest entry, computed State."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, update

from dicomd.index import Index
from dicomd.index.schema import changefeed

from support.index_rows import add, make_parsed, new


def _sops(n: int, prefix: str = "1.2.3.1.") -> list[str]:
    return [f"{prefix}{i}" for i in range(1, n + 1)]


def test_empty(index: Index) -> None:
    assert index.latest_change() is None
    assert index.changefeed(offset=0, limit=10, v2=False) == []
    assert index.changefeed(offset=0, limit=10, v2=True) == []


def test_entries_and_states(index: Index) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    index.add_instances([new(make_parsed(sop="1.2.3.1.1"), "a1")], overwrite=False)
    index.add_instances([new(make_parsed(sop="1.2.3.1.2"), "b1")], overwrite=False)
    index.add_instances([new(make_parsed(sop="1.2.3.1.1"), "a2")], overwrite=True)
    index.delete(1, "1.2.3", "1.2.3.1", "1.2.3.1.2")
    feed = index.changefeed(offset=0, limit=10, v2=False)
    assert [(e.action, e.object_key, e.state) for e in feed] == [
        ("Create", "a1", "Replaced"),
        ("Create", "b1", "Deleted"),
        ("Update", "a2", "Current"),
        ("Delete", "b1", "Deleted"),
    ]
    first = feed[0]
    assert (first.partition_key, first.study_instance_uid, first.series_instance_uid) == (
        1,
        "1.2.3",
        "1.2.3.1",
    )
    assert first.sop_instance_uid == "1.2.3.1.1"
    assert first.timestamp.tzinfo is not None and first.timestamp.utcoffset() == timedelta(0)
    assert before <= first.timestamp <= datetime.now(UTC) + timedelta(seconds=1)
    assert first.timestamp.microsecond % 1000 == 0  # millisecond precision
    assert [e.sequence for e in feed] == sorted(e.sequence for e in feed)
    latest = index.latest_change()
    assert latest is not None and latest.sequence == feed[-1].sequence and latest.action == "Delete"
    # re-created after delete: the old entries now point at a replaced version
    index.add_instances([new(make_parsed(sop="1.2.3.1.2"), "b2")], overwrite=False)
    states = [e.state for e in index.changefeed(offset=0, limit=10, v2=False)]
    assert states == ["Replaced", "Replaced", "Current", "Replaced", "Current"]


def test_v1_pages_are_full_despite_gaps(index: Index) -> None:
    add(index, *[make_parsed(sop=s) for s in _sops(30)])
    all_entries = index.changefeed(offset=0, limit=100, v2=False)
    seqs = [e.sequence for e in all_entries]
    # punch holes into the sequence (as rolled back transactions would leave)
    holes = seqs[2:12] + seqs[20:22]
    with index.engine.begin() as conn:
        conn.execute(delete(changefeed).where(changefeed.c.sequence.in_(holes)))
    remaining = [s for s in seqs if s not in holes]
    got: list[int] = []
    offset = 0
    while True:
        page = index.changefeed(offset=offset, limit=5, v2=False)
        if not page:
            break
        got += [e.sequence for e in page]
        if len(got) < len(remaining):
            assert len(page) == 5  # never a short page while entries remain
        offset = page[-1].sequence
    assert got == remaining
    # a deleted newest row is not reused: the next entry gets a higher sequence
    with index.engine.begin() as conn:
        conn.execute(delete(changefeed).where(changefeed.c.sequence == seqs[-1]))
    add(index, make_parsed(sop="1.2.3.1.99"))
    latest = index.latest_change()
    assert latest is not None and latest.sequence > seqs[-1]


def test_v2_time_windows(index: Index) -> None:
    add(index, *[make_parsed(sop=s) for s in _sops(9)])
    entries = index.changefeed(offset=0, limit=100, v2=False)
    base = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    times = [base + timedelta(minutes=m) for m in (0, 0, 1, 2, 2, 2, 3, 5, 8)]
    # known timestamps; equal ones (00:00, 02:00) are ordered by sequence
    with index.engine.begin() as conn:
        for e, t in zip(entries, times, strict=True):
            ms = int(t.timestamp() * 1000)
            conn.execute(update(changefeed).where(changefeed.c.sequence == e.sequence).values(timestamp=ms))
    seq = [e.sequence for e in entries]

    def window(start: datetime | None, end: datetime | None, offset: int = 0, limit: int = 100) -> list[int]:
        return [
            e.sequence for e in index.changefeed(offset=offset, limit=limit, start=start, end=end, v2=True)
        ]

    assert window(None, None) == seq
    assert window(base + timedelta(minutes=2), None) == seq[3:]
    assert window(None, base + timedelta(minutes=2)) == seq[:3]  # end is exclusive
    assert window(base + timedelta(minutes=1), base + timedelta(minutes=5)) == seq[2:7]
    assert window(base + timedelta(minutes=2), base + timedelta(minutes=9), offset=2, limit=3) == seq[5:8]
    assert window(base + timedelta(hours=1), None) == []
    # naive datetimes are UTC
    assert window(datetime(2024, 5, 1, 12, 5), None) == seq[7:]
    assert index.changefeed(offset=0, limit=1, v2=True)[0].timestamp == base


def test_partitions_in_feed(index: Index) -> None:
    key = index.ensure_partition("other")
    index.add_instances([new(make_parsed(), partition_key=key)], overwrite=False)
    add(index, make_parsed())
    assert [e.partition_key for e in index.changefeed(offset=0, limit=10, v2=False)] == [key, 1]
    assert all(e.state == "Current" for e in index.changefeed(offset=0, limit=10, v2=False))
