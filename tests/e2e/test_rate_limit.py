"""Per-client rate limits (dicomd.http.security): beyond `rate_limit` requests per second (bursts of
twice that) a client gets 429 with Retry-After, in the JSON form of other errors; it recovers once it
waits; health checks are never limited."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from support.server import Server, start_server, stop_server

RATE = 5  # requests per second, one worker: its bucket holds 10


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("rate") / "data", "--rate-limit", str(RATE), workers=1)
    yield srv
    stop_server(srv)


def test_a_client_over_the_rate_gets_429_with_retry_after_then_recovers(limited: Server) -> None:
    with httpx.Client(base_url=limited.v2, timeout=10) as client:
        statuses = [client.get("/studies", params={"limit": 1}).status_code for _ in range(40)]
        assert statuses[0] == 200
        assert 2 * RATE <= statuses.count(200) < 40, statuses  # the burst, and a few refilled meanwhile
        refused = client.get("/studies", params={"limit": 1})
        assert refused.status_code == 429
        assert refused.json() == {"status": 429, "message": "too many requests; try again later"}
        retry_after = int(refused.headers["retry-after"])
        assert 1 <= retry_after <= 2
        assert "api-supported-versions" in refused.headers
        time.sleep(retry_after)
        assert client.get("/studies", params={"limit": 1}).status_code == 200


def test_health_checks_are_never_limited(limited: Server) -> None:
    with httpx.Client(base_url=limited.url, timeout=10) as client:
        for _ in range(50):
            client.get("/v2/studies", params={"limit": 1})  # the bucket is empty after these
        assert client.get("/v2/studies", params={"limit": 1}).status_code == 429
        assert all(client.get("/health/check").status_code == 200 for _ in range(30))
