"""PostgreSQL: the index refreshes the planner statistics as a process adds rows (1,000 rows, then 2,000
more, ...), so plans made on the empty tables do not outlive them when autovacuum is off or lags behind a
bulk load (the batch lookup's plan walked every series: an import slowed down as the index grew)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from dicomd.index import Index

from support.backends import PG_URL
from support.index_rows import make_parsed, new, open_index

pytestmark = pytest.mark.skipif(not PG_URL, reason="DICOMD_TEST_POSTGRES_URL not set")


def _analyzed(index: Index) -> dict[str, int]:
    with index.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT relname, analyze_count + autoanalyze_count FROM pg_stat_user_tables"
                " WHERE schemaname = current_schema()"
            )
        )
        return {name: int(count) for name, count in rows}


def _add(index: Index, first: int, count: int) -> None:
    for start in range(first, first + count, 250):
        batch = [
            new(make_parsed(f"1.2.9.{n // 100}", f"1.2.9.{n // 100}.1", f"1.2.9.{n // 100}.1.{n}"))
            for n in range(start, min(first + count, start + 250))
        ]
        index.add_instances(batch, overwrite=False)


def test_statistics_are_refreshed_as_the_index_grows(tmp_path: Path) -> None:
    with open_index("postgresql", tmp_path) as index:
        _add(index, 0, 750)
        assert _analyzed(index).get("instance", 0) == 0
        _add(index, 750, 500)  # 1,250 rows added: the first refresh
        assert _analyzed(index)["instance"] == 1
        assert _analyzed(index)["series"] == 1
        _add(index, 1250, 1000)  # 1,000 more: the next one waits for 2,000
        assert _analyzed(index)["instance"] == 1
        _add(index, 2250, 1000)
        assert _analyzed(index)["instance"] == 2
        with index.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT reltuples FROM pg_class WHERE oid = 'instance'::regclass")
            ).scalar()
        assert rows is not None and rows > 1000  # the planner knows the table's size
