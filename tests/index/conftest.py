"""The `index` fixture: a migrated index on each backend (SQLite and, when configured, PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomd.index import Index

from support.backends import BACKENDS
from support.index_rows import open_index


@pytest.fixture(params=BACKENDS)
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Index]:
    with open_index(request.param, tmp_path) as idx:
        yield idx
