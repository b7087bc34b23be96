"""The worker supervisor: connections are spread evenly over the worker processes, also after a worker
was restarted, and every connection is served."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from support.server import Server, descendants, start_server, stop_server


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[Server]:
    srv = start_server(tmp_path / "data", workers=2)
    _wait_until_both_workers_serve(srv)
    yield srv
    stop_server(srv)


def _wait_until_both_workers_serve(server: Server) -> None:
    """The server answers once one worker is up; until the other one's application has started, every
    connection goes to the first (all of them answered)."""
    deadline = time.monotonic() + 30
    while True:
        conns = _open_connections(server, 2)
        both = len(_connections_per_process(server, conns)) == 2
        for conn in conns:
            conn.close()
        if both:
            return
        assert time.monotonic() < deadline, "the second worker never took a connection"
        time.sleep(0.1)


def _port(server: Server) -> int:
    port = urlsplit(server.url).port
    assert port is not None
    return port


def _open_connections(server: Server, n: int) -> list[socket.socket]:
    """n keep-alive connections, opened one after the other, each having had one request answered."""
    conns = []
    for _ in range(n):
        conn = socket.create_connection(("127.0.0.1", _port(server)), timeout=10)
        conn.sendall(b"GET /health/check HTTP/1.1\r\nHost: test\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = conn.recv(4096)
            assert chunk, "connection closed without an answer"
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:100]
        conns.append(conn)
    return conns


def _connections_per_process(server: Server, conns: list[socket.socket]) -> Counter[int]:
    """How many of the connections ``conns`` each of the server's processes holds."""
    port = _port(server)
    clients = {conn.getsockname()[1] for conn in conns}
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)
        if local == port and remote in clients:
            inodes.add(fields[9])
    held: Counter[int] = Counter()
    for pid in descendants(server.process.pid):
        try:
            links = [os.readlink(f) for f in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        held[pid] = sum(1 for link in links if link.startswith("socket:[") and link[8:-1] in inodes)
    return +held  # processes holding none (e.g. the resource tracker) left out


def _workers(server: Server) -> list[int]:
    """The worker processes (spawned by multiprocessing; not its resource tracker)."""
    found = []
    for pid in descendants(server.process.pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            found.append(pid)
    return found


def _wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_connections_of_one_client_are_spread_evenly(two_workers: Server) -> None:
    conns = _open_connections(two_workers, 4)
    try:
        assert sorted(_connections_per_process(two_workers, conns).values()) == [2, 2]
        conns += _open_connections(two_workers, 2)
        assert sorted(_connections_per_process(two_workers, conns).values()) == [3, 3]
    finally:
        for conn in conns:
            conn.close()


def test_a_restarted_worker_takes_its_share(two_workers: Server) -> None:
    conns = _open_connections(two_workers, 2)
    held = _connections_per_process(two_workers, conns)
    for conn in conns:
        conn.close()
    victim = next(iter(held))
    os.kill(victim, signal.SIGKILL)
    _wait_for(lambda: victim not in _workers(two_workers) and len(_workers(two_workers)) == 2)
    _wait_until_both_workers_serve(two_workers)
    conns = _open_connections(two_workers, 4)
    try:
        counts = _connections_per_process(two_workers, conns)
        assert sorted(counts.values()) == [2, 2]
    finally:
        for conn in conns:
            conn.close()
