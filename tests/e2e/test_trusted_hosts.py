"""The Host header is checked before anything answers (dicomd.http.security): RetrieveURL and BulkDataURI
are built from it, so a forged one gets 400 instead of being reflected into answers; trusted ones (loopback,
trusted_hosts, base_url's host) give URLs that lead back to the server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.dicom_files import make_instance
from support.dicomweb import stow, unique_id, value
from support.server import Server, start_server, stop_server

RETRIEVE_URL = "00081190"


@pytest.fixture(scope="module")
def named_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("hosts") / "data"
    srv = start_server(data_dir, "--trusted-hosts", "archive.example.org, *.pacs.example", workers=1)
    yield srv
    stop_server(srv)


def _port(server: Server) -> int:
    return httpx.URL(server.url).port or 0


def _retrieve_url(client: httpx.Client, host: str) -> str:
    patient = unique_id("HOST")
    assert stow(client, [make_instance(patient_id=patient)], Host=host).status_code == 200
    r = client.get("/studies", params={"PatientID": patient}, headers={"Host": host})
    assert r.status_code == 200, r.text
    return str(value(r.json()[0], RETRIEVE_URL))


@pytest.mark.parametrize("forged", ["evil.example", "evil.example:80", "archive.example.org.evil.example"])
def test_a_forged_host_gets_400_and_nothing_reflected(named_server: Server, forged: str) -> None:
    with httpx.Client(base_url=named_server.v2, timeout=10) as client:
        for method, path in (("GET", "/studies"), ("POST", "/studies"), ("GET", "/api.json")):
            r = client.request(method, path, headers={"Host": forged})
            assert r.status_code == 400, (method, path, r.text)
            assert r.json() == {"status": 400, "message": "invalid Host header"}
            assert "evil" not in r.text
            assert r.headers["x-content-type-options"] == "nosniff"  # refusals carry the headers too
        # health probes come with whatever Host a load balancer knows; their answer holds no URL
        health = client.get(named_server.url + "/health/check", headers={"Host": forged})
        assert health.status_code == 200


@pytest.mark.parametrize("host", ["archive.example.org", "ARCHIVE.example.org", "ct.pacs.example"])
def test_a_trusted_host_gives_urls_with_that_host(named_server: Server, host: str) -> None:
    port = _port(named_server)
    with httpx.Client(base_url=named_server.v2, timeout=10) as client:
        url = _retrieve_url(client, f"{host}:{port}")
        assert url.lower().startswith(f"http://{host}:{port}/v2/studies/".lower()), url


def test_loopback_hosts_are_trusted_by_default(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", workers=1)
    try:
        port = _port(server)
        with httpx.Client(base_url=server.v2, timeout=10) as client:
            for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "localhost"):
                assert client.get("/studies", params={"limit": 1}, headers={"Host": host}).status_code == 200
            url = _retrieve_url(client, f"localhost:{port}")
            assert url.startswith(f"http://localhost:{port}/v2/studies/"), url
            assert client.get("/studies", headers={"Host": "archive.example.org"}).status_code == 400
    finally:
        stop_server(server)


def test_base_url_is_used_and_its_host_trusted(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", "--base-url", "https://pacs.example.net/dicom", workers=1)
    try:
        with httpx.Client(base_url=server.v2, timeout=10) as client:
            assert client.get("/studies", headers={"Host": "evil.example"}).status_code == 400
            url = _retrieve_url(client, "pacs.example.net")  # what a reverse proxy passes on
            assert url.startswith("https://pacs.example.net/dicom/v2/studies/"), url
    finally:
        stop_server(server)
