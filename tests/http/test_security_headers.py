"""Transport protections of every answer (dicomd.http.security): the security headers, the Host check's
rules and the token bucket's arithmetic; in process, through `create_app` (support/asgi.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from dicomd.http.security import BURST, RateLimiter, TrustedHosts, host_name, worker_rate

from support.asgi import in_process, settings_for
from support.dicom_files import make_instance, new_uid
from support.dicomweb import stow_async, unique_id

EXPECTED = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(settings_for(tmp_path / "data", f"sqlite:///{tmp_path / 'index.db'}")) as c:
        yield c


def _assert_protected(response: httpx.Response) -> None:
    for name, expected in EXPECTED.items():
        assert response.headers.get_list(name) == [expected], (name, response.headers)
    assert "strict-transport-security" not in response.headers  # TLS is off


async def test_every_kind_of_answer_carries_the_security_headers(client: httpx.AsyncClient) -> None:
    patient = unique_id("HDR")
    stored = await stow_async(client, [make_instance(patient_id=patient)])
    assert stored.status_code == 200
    found = await client.get("/v2/studies", params={"PatientID": patient})
    assert found.status_code == 200 and len(found.json()) == 1
    metadata = await client.get(f"/v2/studies/{found.json()[0]['0020000D']['Value'][0]}/metadata")
    assert metadata.status_code == 200
    for response in (
        stored,
        found,
        metadata,
        await client.get(f"/v2/studies/{new_uid()}/metadata"),  # 404
        await client.get("/v2/studies", params={"StudyDate": "not a date"}),  # 400
        await client.get("/v9/studies"),  # unknown version
        await client.get("/health/check"),
        await client.get("/v2/api.json"),
        await client.get("/v2/studies", headers={"Host": "evil.example"}),  # refused Host
    ):
        _assert_protected(response)


async def test_a_forged_host_is_refused_before_the_application(client: httpx.AsyncClient) -> None:
    r = await client.post("/v2/studies", content=b"x", headers={"Host": "evil.example:8080"})
    assert r.status_code == 400
    assert r.json() == {"status": 400, "message": "invalid Host header"}
    assert "2" in r.headers["api-supported-versions"]


def test_host_names_lose_their_port_and_case() -> None:
    assert host_name("Archive.Example.org:8080") == "archive.example.org"
    assert host_name("[::1]:8080") == "::1"
    assert host_name("[::1]") == "::1"
    assert host_name("::1") == "::1"
    assert host_name("10.0.0.1") == "10.0.0.1"


def test_trusted_host_rules() -> None:
    trusted = TrustedHosts(["archive.example.org:443", "*.pacs.example", "10.1.2.3"])
    for host in ("archive.example.org", "archive.example.org:8080", "ct.pacs.example", "a.b.pacs.example:1"):
        assert trusted.allows(host), host
    for host in ("localhost:8080", "127.0.0.1", "127.8.9.1:80", "[::1]:8080", "viewer.localhost"):
        assert trusted.allows(host), host  # loopback: always
    for host in ("evil.example", "pacs.example", "xpacs.example", "archive.example.org.evil", "10.1.2.4", ""):
        assert not trusted.allows(host), host
    assert TrustedHosts(["*"]).allows("anything.example:1")


def test_trusted_hosts_from_settings(tmp_path: Path) -> None:
    def trusted(**flags: str) -> TrustedHosts:
        return TrustedHosts.from_settings(
            settings_for(tmp_path, "sqlite:///x.db", **{"trusted_hosts": "", **flags})
        )

    assert not trusted().allows("10.1.2.3")
    assert trusted(host="10.1.2.3").allows("10.1.2.3:8080")  # a specific bind address
    assert not trusted(host="0.0.0.0").allows("0.0.0.0")
    assert trusted(base_url="https://pacs.example.net:8443/dicom").allows("pacs.example.net")
    assert trusted(trusted_hosts="a.example,b.example").allows("b.example")


def test_token_bucket_allows_the_burst_then_the_rate() -> None:
    now = [100.0]
    limiter = RateLimiter(rate=2.0, burst=4.0, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(4)] == [0.0] * 4
    assert limiter.take("a") == pytest.approx(0.5)  # one token comes every half second
    assert limiter.take("b") == 0.0  # per client
    now[0] += 0.5
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0
    now[0] += 60  # a long pause refills to the burst, not beyond
    assert [limiter.take("a") for _ in range(5)].count(0.0) == 4


def test_idle_clients_are_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dicomd.http.security.MAX_TRACKED_CLIENTS", 10)
    now = [0.0]
    limiter = RateLimiter(rate=1.0, burst=2.0, clock=lambda: now[0])
    limiter._prune_at = 10
    for i in range(10):
        limiter.take(f"10.0.0.{i}")
    now[0] += 5  # their buckets are full again
    limiter.take("10.0.1.1")
    limiter.take("10.0.1.2")
    assert set(limiter.buckets) <= {"10.0.1.1", "10.0.1.2"}


def test_each_worker_takes_its_share_of_the_rate(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, "sqlite:///x.db", rate_limit=10, workers=4)
    assert worker_rate(settings) == 2.5
    assert BURST * worker_rate(settings) == 5.0
    assert worker_rate(settings_for(tmp_path, "sqlite:///x.db", rate_limit=0)) == 0
