"""Machine description and the hardware ceilings a result is compared with (fsync rate, loopback)."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import tempfile
import threading
import time


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def machine(workdir: str) -> dict[str, str]:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in _read("/proc/cpuinfo").splitlines()
            if ln.startswith("model name")
        ),
        platform.processor() or "?",
    )
    mem_kb = next(
        (int(ln.split()[1]) for ln in _read("/proc/meminfo").splitlines() if ln.startswith("MemTotal")), 0
    )
    try:
        df = subprocess.run(["df", "-hT", workdir], capture_output=True, text=True).stdout.splitlines()[-1]
        parts = df.split()
        disk = f"{parts[0]} ({parts[1]}, {parts[2]} total, {parts[4]} free)"
    except (OSError, IndexError):
        disk = "?"
    return {
        "cpu": f"{os.cpu_count()} x {cpu}",
        "ram": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "os": (_read("/etc/debian_version").strip() and f"Debian {_read('/etc/debian_version').strip()}")
        or "?",
        "disk": disk,
        "python": platform.python_version(),
        "load average at start": " ".join(_read("/proc/loadavg").split()[:3]),
    }


def fsync_rate(workdir: str, seconds: float = 1.5, size: int = 39_068) -> float:
    """Files/s for create + write(size) + fsync + close, in workdir (what a durable STOW pays)."""
    d = tempfile.mkdtemp(dir=workdir, prefix="fsync-")
    data = os.urandom(size)
    n = 0
    t0 = time.perf_counter()
    try:
        while time.perf_counter() - t0 < seconds:
            fd = os.open(os.path.join(d, f"{n}.bin"), os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, data)
            os.fsync(fd)
            os.close(fd)
            n += 1
        return n / (time.perf_counter() - t0)
    finally:
        for f in os.listdir(d):
            os.unlink(os.path.join(d, f))
        os.rmdir(d)


def loopback_mb_s(total: int = 2 << 30, chunk: int = 1 << 20) -> float:
    """One TCP stream over 127.0.0.1, Python sender and receiver threads (a ceiling for one connection)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    got = [0]

    def recv() -> None:
        c, _ = srv.accept()
        buf = bytearray(chunk)
        while (n := c.recv_into(buf)) > 0:
            got[0] += n
        c.close()

    th = threading.Thread(target=recv)
    th.start()
    s = socket.create_connection(("127.0.0.1", port))
    payload = b"\0" * chunk
    t0 = time.perf_counter()
    sent = 0
    while sent < total:
        s.sendall(payload)
        sent += chunk
    s.close()
    th.join()
    srv.close()
    return got[0] / (time.perf_counter() - t0) / 1e6
