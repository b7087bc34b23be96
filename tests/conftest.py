"""Shared fixtures: the real server (`dicomd serve` on an ephemeral port, real worker processes; see
support/server.py), shared per index and object store backend (`server`, `client`) or one's own
(`fresh_server`), and the object store emulators (support/emulators.py).

Helpers live in support/ (importable from every test directory: pytest's `pythonpath` holds tests/), not
here: test modules never import conftest.py (there are several, all named `conftest`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.backends import SERVER_BACKENDS, backend_url
from support.emulators import azure_emulator, emulator_for, s3_emulator  # noqa: F401 - session fixtures
from support.server import Server, start_server, stop_server


@pytest.fixture(scope="session", params=SERVER_BACKENDS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One shared server per index and object store combination for end-to-end tests ("sqlite-file"
    always; "postgresql-file", "postgresql-s3" and "postgresql-azure" when DICOMD_TEST_POSTGRES_URL is
    set, the cloud ones on the session's emulators). Tests must use their own UIDs when they write, and
    look at objects through the API only (``fresh_server`` keeps them in its data directory)."""
    index, objects = request.param.split("-")
    data_dir = tmp_path_factory.mktemp(f"server-{request.param}") / "data"
    args: list[str] = []
    env: dict[str, str] = {}
    if objects != "file":
        storage_url, options = emulator_for(request, objects).new_store()
        args = ["--storage-url", storage_url]
        env = {"DICOMD_STORAGE_OPTIONS": options}  # credentials stay off the command line
    with backend_url(index, data_dir.parent) as url:
        srv = start_server(data_dir, "--index-url", url, *args, env=env)
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
