"""`app_client`: the application in the test's process (support/asgi.py), for API tests of one request's
HTTP behaviour; like `server`, once per index backend (SQLite and, when configured, PostgreSQL), but with
an archive of its own per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from support.asgi import in_process, settings_for
from support.backends import BACKENDS, backend_url


@pytest.fixture(params=BACKENDS)
async def app_client(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    with backend_url(request.param, tmp_path) as url:
        async with in_process(settings_for(tmp_path / "data", url)) as client:
            yield client
