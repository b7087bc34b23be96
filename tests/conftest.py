"""Shared fixtures: the real server (`dicomd serve` on an ephemeral port, real worker processes; see
support/server.py), shared per index backend (`server`, `client`) or one's own (`fresh_server`).

Helpers live in support/ (importable from every test directory: pytest's `pythonpath` holds tests/), not
here: test modules never import conftest.py (there are several, all named `conftest`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.backends import BACKENDS, backend_url
from support.server import Server, start_server, stop_server


@pytest.fixture(scope="session", params=BACKENDS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One shared server per index backend for end-to-end tests (every test using it runs on SQLite and,
    when DICOMD_TEST_POSTGRES_URL is set, on PostgreSQL). Tests must use their own UIDs when they write."""
    data_dir = tmp_path_factory.mktemp(f"server-{request.param}") / "data"
    with backend_url(request.param, data_dir.parent) as url:
        srv = start_server(data_dir, "--index-url", url)
        yield srv
        stop_server(srv)


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[Server]:
    """A server of its own, for tests that need an empty archive or special settings."""
    srv = start_server(tmp_path / "data", workers=1)
    yield srv
    stop_server(srv)


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.v2, timeout=30) as c:
        yield c
