"""Edges of the HTTP service: clients that go away, browser viewers on another origin (CORS), and the
permissions of what the server writes (PHI: owner-only)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import Server, start_server, stop_server
from test_e2e_common import DICOM_ANY, make_instance, multipart, new_uid, stow, unique_id, wait_for

VIEWER = "http://viewer.example:3000"


@pytest.fixture(scope="module")
def cors_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("cors") / "data"
    srv = start_server(data_dir, workers=1, env={"DICOMD_CORS_ORIGINS": f"{VIEWER}, https://other.example"})
    yield srv
    stop_server(srv)


def _port(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def test_aborted_uploads_and_downloads_are_one_info_line_not_an_error(fresh_server: Server) -> None:
    study = new_uid()
    parts = [make_instance(study=study, rows=512, columns=512, patient_id=unique_id()) for _ in range(8)]
    body, content_type = multipart(parts)
    with httpx.Client(base_url=fresh_server.v2, timeout=30) as client:
        assert stow(client, parts[:4]).status_code == 200
    head = (
        f"POST /v2/studies HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", _port(fresh_server))) as sock:
        sock.sendall(head + body[: len(body) // 2])  # the upload stops half way
        time.sleep(0.3)
    get = f"GET /v2/studies/{study} HTTP/1.1\r\nHost: x\r\nAccept: {DICOM_ANY}\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", _port(fresh_server))) as sock:
        sock.sendall(get)
        sock.recv(1024)  # the download is abandoned after its first bytes
    assert wait_for(lambda: "client disconnected during a POST request" in fresh_server.log(), timeout=10)
    time.sleep(0.5)
    log = fresh_server.log()
    assert "Traceback" not in log and '"level":"error"' not in log, log[-3000:]
    with httpx.Client(base_url=fresh_server.v2, timeout=30) as client:  # and the server serves on
        assert client.get(f"/studies/{study}/metadata").status_code == 200


def test_cors_preflight_from_an_allowed_origin(cors_server: Server) -> None:
    r = httpx.options(
        cors_server.v2 + "/studies",
        headers={
            "Origin": VIEWER,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "accept, authorization",
        },
    )
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == VIEWER
    assert "GET" in r.headers["access-control-allow-methods"]
    assert "authorization" in r.headers["access-control-allow-headers"].lower()


def test_cors_headers_on_responses_to_an_allowed_origin(cors_server: Server) -> None:
    patient = unique_id("CORS")
    with httpx.Client(base_url=cors_server.v2, timeout=30, headers={"Origin": VIEWER}) as client:
        r = stow(client, [make_instance(patient_id=patient)])
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == VIEWER
        r = client.get("/studies", params={"PatientID": patient})
        assert r.status_code == 200 and len(r.json()) == 1
        assert r.headers["access-control-allow-origin"] == VIEWER
        exposed = r.headers["access-control-expose-headers"].lower()
        for header in ("content-type", "content-length", "etag"):
            assert header in exposed, exposed
        missing = client.get(f"/studies/{new_uid()}/metadata")  # errors carry the headers too
        assert missing.status_code == 404 and missing.headers["access-control-allow-origin"] == VIEWER


def test_cors_refuses_other_origins(cors_server: Server) -> None:
    r = httpx.options(
        cors_server.v2 + "/studies",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert r.status_code == 400
    assert "access-control-allow-origin" not in r.headers
    r = httpx.get(cors_server.v2 + "/studies", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers  # the browser withholds the answer


def test_without_cors_origins_no_cors_headers_are_sent(fresh_server: Server) -> None:
    r = httpx.options(
        fresh_server.v2 + "/studies", headers={"Origin": VIEWER, "Access-Control-Request-Method": "GET"}
    )
    assert r.status_code == 405
    assert "access-control-allow-origin" not in r.headers


def test_everything_the_server_writes_is_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the common default, under which files used to be world-readable
    try:
        server = start_server(tmp_path / "data", workers=2)
        try:
            with httpx.Client(base_url=server.v2, timeout=30) as client:
                assert (
                    stow(client, [make_instance(patient_id=unique_id()) for _ in range(3)]).status_code == 200
                )
            written = list((tmp_path / "data").rglob("*"))
            names = {p.name for p in written}
            assert {"index.db", "index.db-wal", "index.db-shm"} <= names, names
            loose = {str(p): oct(p.stat().st_mode & 0o777) for p in written if p.stat().st_mode & 0o077}
            assert not loose, loose
        finally:
            stop_server(server)
        # a data directory dicomd creates is owner-only itself
        created = tmp_path / "new" / "data"
        subprocess.run(
            [sys.executable, "-m", "dicomd", "optimize", "--data-dir", str(created)], check=True, timeout=120
        )
        assert created.stat().st_mode & 0o777 == 0o700
    finally:
        os.umask(old)
