"""Start the servers under test: Orthanc (Debian packages) and dicomd, each on a temp dir and a free port.

Both are plain child processes of the benchmark (no systemd, no docker). Each exposes:
  base       http://127.0.0.1:PORT + DICOMweb root ("/dicom-web" for Orthanc, "/v2" for dicomd)
  pids()     the server's process ids (dicomd: master + workers) for CPU and RSS accounting
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DICOMD_BIN = REPO / ".venv" / "bin" / "dicomd"
ORTHANC_BIN = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return 200 <= r.status < 300
    except Exception:
        return False


def ensure_orthanc(install: bool = True) -> None:
    """apt-get install orthanc + orthanc-dicomweb when missing (the package's service is never used)."""
    if os.path.exists(ORTHANC_BIN) and os.path.exists(DICOMWEB_PLUGIN):
        return
    if not install:
        raise RuntimeError("Orthanc not installed: apt-get install -y orthanc orthanc-dicomweb")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update"], check=False, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "orthanc", "orthanc-dicomweb"], check=True, env=env)
    # the package may start its own service (on 8042/4242); ours never depends on it
    subprocess.run(["service", "orthanc", "stop"], check=False, capture_output=True)


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
            if int(st[st.rfind(")") + 2 :].split()[1]) == pid:
                out.append(int(d))
        except (OSError, ValueError, IndexError):
            continue
    return out


def descendants(pid: int) -> list[int]:
    res, todo = [], [pid]
    while todo:
        p = todo.pop()
        res.append(p)
        todo.extend(_children(p))
    return res


@dataclass
class Server:
    name: str
    host: str
    port: int
    root: str  # DICOMweb root path, no trailing slash
    workdir: str
    proc: subprocess.Popen[bytes] | None = None
    version: str = ""
    notes: list[str] = field(default_factory=list)
    keep: bool = False

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}{self.root}"

    def pids(self) -> list[int]:
        return descendants(self.proc.pid) if self.proc else []

    def data_bytes(self) -> int:
        total = 0
        for dp, _, files in os.walk(self.workdir):
            for f in files:
                with contextlib.suppress(OSError):
                    total += os.path.getsize(os.path.join(dp, f))
        return total

    def stop(self, cleanup: bool = True) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if cleanup and not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _wait(url: str, proc: subprocess.Popen[bytes], log: str, timeout: float = 60) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server exited ({proc.returncode}); log: {log}\n{Path(log).read_text()[-3000:]}"
            )
        if _http_ok(url):
            return
        time.sleep(0.2)
    raise RuntimeError(f"server did not answer {url} in {timeout}s; log {log}")


def orthanc_config(storage: str, http_port: int, threads: int = 50) -> dict[str, object]:
    """The fair configuration (see ../shared/reference/peers.md and bench/README.md)."""
    return {
        "Name": "bench-orthanc",
        "StorageDirectory": storage,
        "IndexDirectory": storage,  # default embedded SQLite index
        "StorageCompression": False,
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "HttpThreadsCount": threads,
        "HttpCompressionEnabled": True,  # default; the client sends Accept-Encoding: identity anyway
        "KeepAlive": True,
        "TcpNoDelay": True,
        "RemoteAccessAllowed": True,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,  # DIMSE not benchmarked
        "StorageAccessOnFind": "Never",
        "OverwriteInstances": False,
        "SaveJobs": False,
        "Plugins": [DICOMWEB_PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Host": "", "Ssl": False, "EnableWado": True},
    }


def orthanc_version() -> str:
    try:
        out = subprocess.run([ORTHANC_BIN, "--version"], capture_output=True, text=True).stdout.split()
        v = out[1] if len(out) > 1 else "?"
    except OSError:
        v = "?"
    try:
        plug = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "orthanc-dicomweb"], capture_output=True, text=True
        ).stdout
    except OSError:
        plug = "?"
    return f"Orthanc {v} + DICOMweb plugin {plug or '?'}"


def start_orthanc(workroot: str | None = None, threads: int = 50) -> Server:
    ensure_orthanc()
    wd = tempfile.mkdtemp(prefix="orthanc-", dir=workroot)
    port = free_port()
    cfg = orthanc_config(os.path.join(wd, "storage"), port, threads)
    cfgpath = os.path.join(wd, "orthanc.json")
    Path(cfgpath).write_text(json.dumps(cfg, indent=2))
    log = os.path.join(wd, "orthanc.log")
    with open(log, "wb") as out:
        proc = subprocess.Popen([ORTHANC_BIN, cfgpath], stdout=out, stderr=subprocess.STDOUT, cwd=wd)
    srv = Server("orthanc", "127.0.0.1", port, "/dicom-web", wd, proc, orthanc_version())
    try:
        _wait(f"http://127.0.0.1:{port}/system", proc, log)
        _wait(f"{srv.base}/studies?limit=1", proc, log)
    except Exception:
        srv.stop()
        raise
    return srv


def dicomd_available() -> bool:
    return DICOMD_BIN.exists()


def dicomd_version() -> str:
    try:
        out = subprocess.run(
            [str(REPO / ".venv/bin/python"), "-c", "import dicomd; print(dicomd.__version__)"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        out = "?"
    rev = ""
    with contextlib.suppress(OSError):
        rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    return f"dicomd {out or '?'}" + (f" ({rev})" if rev else "")


def start_dicomd(
    workroot: str | None = None, workers: int | None = None, extra: list[str] | None = None
) -> Server:
    if not dicomd_available():
        raise RuntimeError(f"{DICOMD_BIN} not found")
    wd = tempfile.mkdtemp(prefix="dicomd-", dir=workroot)
    port = free_port()
    cmd = [str(DICOMD_BIN), "serve", "--data-dir", os.path.join(wd, "data"), "--host", "127.0.0.1"]
    cmd += ["--port", str(port)]
    if workers:
        cmd += ["--workers", str(workers)]
    cmd += extra or []
    log = os.path.join(wd, "dicomd.log")
    os.makedirs(os.path.join(wd, "data"), exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=wd)
    srv = Server("dicomd", "127.0.0.1", port, "/v2", wd, proc, dicomd_version())
    try:
        _wait(f"http://127.0.0.1:{port}/health/check", proc, log, timeout=90)
    except Exception:
        srv.stop()
        raise
    return srv


# ---- process accounting --------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """user+sys CPU seconds of these processes (alive ones)."""
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                st = f.read()
            fields = st[st.rfind(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            continue
    return total / _TICK


def rss_mb(pids: list[int], key: str = "VmHWM") -> dict[int, float]:
    """Per-process VmHWM (peak RSS) or VmRSS, MB."""
    out = {}
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        out[p] = int(line.split()[1]) / 1024
        except OSError:
            continue
    return out
