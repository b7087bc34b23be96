"""A real `dicomd serve` for end-to-end tests: on an ephemeral port, with real worker processes, its log
in a file beside its data directory. The fixtures built on it (`server`, `fresh_server`, `client`) are in
tests/conftest.py."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


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


def start_server(
    data_dir: Path,
    *extra: str,
    workers: int = 2,
    env: dict[str, str] | None = None,
    tls: ssl.SSLContext | None = None,
) -> Server:
    """``tls``: the server was given a certificate (--tls-cert-file ...): reach it over https, trusting
    this context."""
    port = free_port()
    log_path = data_dir.parent / f"{data_dir.name}-server.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "wb")  # noqa: SIM115 - handed to the child process
    cmd = [
        sys.executable, "-m", "dicomd", "serve", "--data-dir", str(data_dir),
        "--port", str(port), "--workers", str(workers), *extra,
    ]  # fmt: skip
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    scheme = "https" if tls is not None else "http"
    server = Server(f"{scheme}://127.0.0.1:{port}", data_dir, process, log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"dicomd exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(server.url + "/health/check", timeout=1, verify=tls or True).status_code == 200:
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


def descendants(pid: int) -> list[int]:
    """The pids of a process's descendants (a server's workers and theirs), from /proc."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # field 4 of /proc/<pid>/stat is the parent pid (after the parenthesised command name)
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.append(int(entry.name))
            found += descendants(int(entry.name))
    return found


def kill_group(server: Server) -> None:
    """SIGKILL the server and all its processes at once, no graceful shutdown (it is started in our
    process group, so kill by pid: the parent first, then the children it leaves)."""
    children = descendants(server.process.pid)
    os.kill(server.process.pid, signal.SIGKILL)
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    server.process.wait(timeout=10)
