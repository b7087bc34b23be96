"""Health endpoints of a real server: /health/check (each dependency with its latency), /health/ready
(load balancers) and /health/live; and an index database that goes away and comes back (PostgreSQL
behind a TCP relay the test cuts): 503 with Retry-After, never a hang, then recovery by itself."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from dicomd.api.health import PROBE_REUSE

from support.backends import PG_URL, pg_schema_url
from support.dicom_files import make_instance
from support.dicomweb import failed_items, stow, wait_for
from support.relay import Relay
from support.server import Server, start_server, stop_server


def test_health_reports_each_dependency_with_its_latency(fresh_server: Server) -> None:
    r = httpx.get(fresh_server.url + "/health/check", timeout=10)
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "healthy" and body["version"]
    for name in ("index", "storage"):
        assert body["dependencies"][name]["status"] == "up"
        assert body["dependencies"][name]["latency_ms"] >= 0
    ready = httpx.get(fresh_server.url + "/health/ready", timeout=10)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert httpx.get(fresh_server.url + "/health/live", timeout=10).json()["status"] == "alive"


@pytest.fixture
def relayed_server(tmp_path: Path) -> Iterator[tuple[Server, Relay]]:
    if not PG_URL:
        pytest.skip("DICOMD_TEST_POSTGRES_URL not set")
    with pg_schema_url(PG_URL) as url:
        parsed = make_url(url)
        relay = Relay((parsed.host or "127.0.0.1", parsed.port or 5432))
        relayed = parsed.set(host="127.0.0.1", port=relay.port).render_as_string(hide_password=False)
        server = start_server(tmp_path / "data", "--index-url", relayed, "--db-timeout", "2", workers=1)
        try:
            yield server, relay
        finally:
            stop_server(server)
            relay.close()


def test_an_index_outage_gives_503_with_retry_after_and_recovers(
    relayed_server: tuple[Server, Relay],
) -> None:
    server, relay = relayed_server
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/v2/studies").status_code == 200
        relay.cut()
        started = time.monotonic()
        r = client.get("/v2/studies")
        assert r.status_code == 503 and r.headers["retry-after"] == "5", r.text
        time.sleep(PROBE_REUSE)  # health answers are reused for up to a second
        for path in ("/health/check", "/health/ready"):
            r = client.get(path)
            assert r.status_code == 503, (path, r.text)
            assert r.headers["retry-after"] == "5"
        # a store during the outage: every instance failed with Out of Resources, nothing stored, 503
        with httpx.Client(base_url=server.v2, timeout=30) as v2:
            stored = stow(v2, [make_instance()])
        assert stored.status_code == 503 and stored.headers["retry-after"] == "5", stored.text
        assert [item["00081197"]["Value"] for item in failed_items(stored.json())] == [[0xA700]]
        assert time.monotonic() - started < 30  # bounded by the timeouts, never a hang
        assert client.get("/health/check").json()["dependencies"]["index"]["status"] != "up"
        assert client.get("/health/live").status_code == 200  # alive: no reason to restart it
        relay.restore()
        deadline = time.monotonic() + 15
        while client.get("/v2/studies").status_code != 200:
            assert time.monotonic() < deadline, "the server did not recover by itself"
            time.sleep(0.2)
        # health answers are reused for up to a second: the next probe sees the database again
        assert wait_for(lambda: client.get("/health/ready").status_code == 200, timeout=5)
