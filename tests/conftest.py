"""Shared fixtures: the real server (`dicomd serve` on an ephemeral port, real worker processes) and the
real-world DICOM files bundled with pydicom."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from index_helpers import BACKENDS, backend_url

PYDICOM_DATA = Path(os.path.dirname(pydicom.__file__)) / "data"
TEST_FILES = PYDICOM_DATA / "test_files"
CHARSET_FILES = PYDICOM_DATA / "charset_files"


def staged_files(data_dir: Path) -> list[Path]:
    """Files left in any staging area of the data dir's object store (lock files of live areas aside)."""
    staging = data_dir / "objects" / "staging"
    return [p for p in staging.rglob("*") if p.is_file() and not p.name.endswith(".lock")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str  # http://127.0.0.1:port
    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def v2(self) -> str:
        return self.url + "/v2"

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(data_dir: Path, *extra: str, workers: int = 2, env: dict[str, str] | None = None) -> Server:
    port = free_port()
    log_path = data_dir.parent / f"{data_dir.name}-server.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "wb")  # noqa: SIM115 - handed to the child process
    cmd = [
        sys.executable, "-m", "dicomd", "serve", "--data-dir", str(data_dir),
        "--port", str(port), "--workers", str(workers), *extra,
    ]  # fmt: skip
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    server = Server(f"http://127.0.0.1:{port}", data_dir, process, log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"dicomd exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(server.url + "/health/check", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"dicomd did not become healthy:\n{server.log()}")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


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
