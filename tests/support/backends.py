"""The backends the tests run on: SQLite files always, PostgreSQL when DICOMD_TEST_POSTGRES_URL is set (each
use gets a fresh schema on that server, dropped afterwards); for the shared server, index and object store
combinations (support/emulators.py runs the cloud ones). Needs nothing of dicomd."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

PG_URL = os.environ.get("DICOMD_TEST_POSTGRES_URL")
BACKENDS = [
    "sqlite",
    pytest.param(
        "postgresql", marks=pytest.mark.skipif(not PG_URL, reason="DICOMD_TEST_POSTGRES_URL not set")
    ),
]

_NO_POSTGRES = pytest.mark.skipif(not PG_URL, reason="DICOMD_TEST_POSTGRES_URL not set")
# "<index>-<object store>": the combinations that matter (the cloud stores with the production index)
SERVER_BACKENDS = [
    "sqlite-file",
    pytest.param("postgresql-file", marks=_NO_POSTGRES),
    pytest.param("postgresql-s3", marks=_NO_POSTGRES),
    pytest.param("postgresql-azure", marks=_NO_POSTGRES),
]


@contextmanager
def pg_schema_url(base: str) -> Iterator[str]:
    """A fresh schema on the test server; the returned URL puts it first on the search_path."""
    schema = "dicomd_t_" + uuid.uuid4().hex[:12]
    admin = create_engine(base)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@contextmanager
def backend_url(backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'index.db'}"
    else:
        assert PG_URL
        with pg_schema_url(PG_URL) as url:
            yield url
