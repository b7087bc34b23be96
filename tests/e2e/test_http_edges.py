"""Edges of the HTTP service: clients that go away, and the permissions of what the server writes (PHI:
owner-only). Browser viewers on another origin (CORS): tests/api/test_api_cors.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from support.dicom_files import make_instance, multipart, new_uid
from support.dicomweb import DICOM_ANY, stow, unique_id, wait_for
from support.server import Server, start_server, stop_server


def _port(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def test_aborted_uploads_and_downloads_are_one_info_line_not_an_error(fresh_server: Server) -> None:
    study = new_uid()
    parts = [make_instance(study=study, rows=512, columns=512, patient_id=unique_id()) for _ in range(8)]
    body, content_type = multipart(parts)
    with httpx.Client(base_url=fresh_server.v2, timeout=30) as client:
        assert stow(client, parts[:4]).status_code == 200
    head = (
        f"POST /v2/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", _port(fresh_server))) as sock:
        sock.sendall(head + body[: len(body) // 2])  # the upload stops half way
        time.sleep(0.3)
    get = f"GET /v2/studies/{study} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: {DICOM_ANY}\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", _port(fresh_server))) as sock:
        sock.sendall(get)
        sock.recv(1024)  # the download is abandoned after its first bytes
    assert wait_for(lambda: "client disconnected during a POST request" in fresh_server.log(), timeout=10)
    time.sleep(0.5)
    log = fresh_server.log()
    assert "Traceback" not in log and '"level":"error"' not in log, log[-3000:]
    with httpx.Client(base_url=fresh_server.v2, timeout=30) as client:  # and the server serves on
        assert client.get(f"/studies/{study}/metadata").status_code == 200


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
