"""Start the servers under test: Orthanc (Debian packages) and dicomd, each on a temp dir and a free port.

Both are plain child processes of the benchmark (no systemd, no docker). Each exposes:
  base       http://127.0.0.1:PORT + DICOMweb root ("/dicom-web" for Orthanc, "/v2" for dicomd)
  pids()     the server's process ids (dicomd: master + workers) for CPU and RSS accounting
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DICOMD_BIN = REPO / ".venv" / "bin" / "dicomd"
ORTHANC_BIN = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
# Orthanc's JPEG 2000 / JPEG-LS codecs (and transcoding of them) come from its GDCM plugin
GDCM_PLUGIN = "/usr/share/orthanc/plugins/libOrthancGdcm.so"
# On ext4 without a journal, a new file skips one by one the inodes deleted in the last 60 s (360 s while
# their inode table block is dirty: fs/ext4/ialloc.c, recently_deleted): right after a mass delete
# (the test suite's, an earlier run's) creating a file cost up to ~1 ms here instead of ~20-50 us, and the
# first server measured paid for it. A sync (no dirty inode table left), then this wait, before it starts.
SETTLE_SECONDS = 65.0


def settle(seconds: float) -> None:
    os.sync()
    time.sleep(seconds)


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
    """apt-get install orthanc + orthanc-dicomweb + orthanc-gdcm when missing (the package's service is
    never used)."""
    if all(os.path.exists(p) for p in (ORTHANC_BIN, DICOMWEB_PLUGIN, GDCM_PLUGIN)):
        return
    if not install:
        raise RuntimeError("Orthanc not installed: apt-get install -y orthanc orthanc-dicomweb orthanc-gdcm")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update"], check=False, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "orthanc", "orthanc-dicomweb", "orthanc-gdcm"], check=True, env=env
    )
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
    index_url: str = ""  # dicomd: --index-url given to serve and import ("" = SQLite in the data dir)
    helper_pids: Callable[[], list[int]] | None = None  # e.g. the PostgreSQL backends serving dicomd

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}{self.root}"

    def pids(self) -> list[int]:
        """The server's processes (+ its helpers': their CPU is the server's cost too)."""
        own = descendants(self.proc.pid) if self.proc else []
        return own + (self.helper_pids() if self.helper_pids else [])

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
        "Plugins": [DICOMWEB_PLUGIN, GDCM_PLUGIN],
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


def _launch_orthanc(workdir: str, log_mode: str) -> tuple[subprocess.Popen[bytes], str]:
    """Orthanc on the configuration in workdir/orthanc.json, its output in workdir/orthanc.log."""
    log = os.path.join(workdir, "orthanc.log")
    with open(log, log_mode) as out:
        proc = subprocess.Popen(
            [ORTHANC_BIN, os.path.join(workdir, "orthanc.json")],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    return proc, log


def restart_orthanc(srv: Server) -> None:
    """Orthanc again on the same configuration, port and storage (after a crash: its data are still
    there); raises RuntimeError when it does not come back."""
    srv.proc, log = _launch_orthanc(srv.workdir, "ab")
    _wait(f"{srv.base}/studies?limit=1", srv.proc, log)


def start_orthanc(workroot: str | None = None, threads: int = 50) -> Server:
    ensure_orthanc()
    wd = tempfile.mkdtemp(prefix="orthanc-", dir=workroot)
    port = free_port()
    cfg = orthanc_config(os.path.join(wd, "storage"), port, threads)
    Path(wd, "orthanc.json").write_text(json.dumps(cfg, indent=2))
    proc, log = _launch_orthanc(wd, "wb")
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
    workroot: str | None = None,
    workers: int | None = None,
    extra: list[str] | None = None,
    index_url: str = "",
    env: dict[str, str] | None = None,
) -> Server:
    """`dicomd serve` on a fresh data dir and a free port; `env` is added to this process' environment."""
    if not dicomd_available():
        raise RuntimeError(f"{DICOMD_BIN} not found")
    wd = tempfile.mkdtemp(prefix="dicomd-", dir=workroot)
    port = free_port()
    cmd = [str(DICOMD_BIN), "serve", "--data-dir", os.path.join(wd, "data"), "--host", "127.0.0.1"]
    cmd += ["--port", str(port)]
    if workers:
        cmd += ["--workers", str(workers)]
    if index_url:
        cmd += ["--index-url", index_url]
    cmd += extra or []
    log = os.path.join(wd, "dicomd.log")
    os.makedirs(os.path.join(wd, "data"), exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, cwd=wd, env={**os.environ, **(env or {})}
        )
    srv = Server("dicomd", "127.0.0.1", port, "/v2", wd, proc, dicomd_version(), index_url=index_url)
    try:
        _wait(f"http://127.0.0.1:{port}/health/check", proc, log, timeout=90)
    except Exception:
        srv.stop()
        raise
    return srv


# ---- replicas: several dicomd serve processes sharing one index and one object store ----------------


@dataclass
class ReplicaGroup:
    """N `dicomd serve` processes on one PostgreSQL schema and one object store, each with its own data
    dir and port. The client spreads its connections over `targets` (no proxy); `host`/`port`/`base` are
    the first replica's, for the runner's single requests (any replica answers the same)."""

    name: str
    replicas: list[Server]
    helper_pids: Callable[[], list[int]] | None = None  # the PostgreSQL backends serving the replicas
    keep: bool = False

    @property
    def host(self) -> str:
        return self.replicas[0].host

    @property
    def port(self) -> int:
        return self.replicas[0].port

    @property
    def root(self) -> str:
        return self.replicas[0].root

    @property
    def base(self) -> str:
        return self.replicas[0].base

    @property
    def targets(self) -> list[list[object]]:
        return [[r.host, r.port] for r in self.replicas]

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.replicas[0].proc

    def dicomd_pids(self) -> list[int]:
        return [p for r in self.replicas for p in (descendants(r.proc.pid) if r.proc else [])]

    def pids(self) -> list[int]:
        return self.dicomd_pids() + (self.helper_pids() if self.helper_pids else [])

    def exited(self) -> list[int]:
        """Exit codes of replicas that are no longer running."""
        return [r.proc.returncode for r in self.replicas if r.proc and r.proc.poll() is not None]

    def stop(self, cleanup: bool = True) -> None:
        for r in self.replicas:
            r.keep = self.keep
            r.stop(cleanup)


_ACCESS_LINE = re.compile(rb'\] "(GET|PUT|HEAD|POST|DELETE) ')


class S3Emulator:
    """moto's S3 server (from the project venv) on a free port with one empty bucket; objects in memory.

    It runs on the same cores as everything else, so `pids()` lets the runner count its CPU."""

    ACCESS = {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench-secret",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
    }

    def __init__(self, workroot: str | None, bucket: str = "dicomd-bench") -> None:
        binary = REPO / ".venv" / "bin" / "moto_server"
        if not binary.exists():
            raise RuntimeError(f"{binary} not found (pip install 'moto[server]' in the venv)")
        self.bucket = bucket
        self.port = free_port()
        self.workdir = tempfile.mkdtemp(prefix="s3emu-", dir=workroot)
        self.log = os.path.join(self.workdir, "moto.log")
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(binary), "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        try:
            _wait(f"{self.endpoint}/moto-api/", self.proc, self.log, timeout=60)
            req = urllib.request.Request(f"{self.endpoint}/{bucket}", method="PUT", data=b"")
            with urllib.request.urlopen(req, timeout=10) as r:
                r.read()
        except Exception:
            self.stop()
            raise
        try:
            from importlib.metadata import version

            self.version = f"moto {version('moto')} (S3 server, objects in memory)"
        except Exception:
            self.version = "moto (S3 server)"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def storage_args(self, prefix: str) -> list[str]:
        """`dicomd serve` flags for this bucket under `prefix` (credentials go in the environment)."""
        # plain http to the endpoint is allowed by dicomd itself for an http:// endpoint
        options = f"aws_endpoint={self.endpoint},aws_region=us-east-1"
        return ["--storage-url", f"s3://{self.bucket}/{prefix}", "--storage-options", options]

    def object_count(self, prefix: str, most: int = 1000) -> int:
        """Objects under `prefix` (at most `most`): proof that the replicas stored into S3."""
        q = urllib.parse.urlencode({"list-type": "2", "prefix": prefix, "max-keys": str(most)})
        with urllib.request.urlopen(f"{self.endpoint}/{self.bucket}?{q}", timeout=30) as r:
            body = r.read().decode()
        return body.count("<Key>")

    def pids(self) -> list[int]:
        return descendants(self.proc.pid) if self.proc.poll() is None else []

    def request_counts(self) -> dict[str, int]:
        """Requests served so far, by method (from the server's access log: one line per request)."""
        counts: dict[str, int] = {}
        with contextlib.suppress(OSError), open(self.log, "rb") as f:
            for line in f:
                m = _ACCESS_LINE.search(line)
                if m:
                    method = m.group(1).decode()
                    counts[method] = counts.get(method, 0) + 1
        return counts

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


# ---- PostgreSQL index -----------------------------------------------------------------------------

PG_DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


class PgSchema:
    """A fresh schema on a PostgreSQL server for one dicomd run, so that runs never see each other's data.

    `url` is the server's URL with the schema first on the search_path (what dicomd is given as its
    index_url); `drop()` removes the schema and everything in it.
    """

    def __init__(self, base_url: str) -> None:
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url
        from sqlalchemy.pool import NullPool

        self.schema = "dicomd_bench_" + uuid.uuid4().hex[:12]
        self.engine = create_engine(base_url, poolclass=NullPool)
        with self.engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{self.schema}"'))
            show = {k: str(conn.execute(text(f"SHOW {k}")).scalar()) for k in self.SETTINGS}
        self.server_version = show.pop("server_version").split()[0]
        # application_name tags dicomd's connections, so that their backends' CPU can be counted
        url = make_url(base_url).update_query_dict(
            {"options": f"-csearch_path={self.schema}", "application_name": self.schema}
        )
        self.url = url.render_as_string(hide_password=False)
        self.shown = (
            f"{make_url(base_url).render_as_string(hide_password=True)}, schema {self.schema}, "
            + ", ".join(f"{k} {v}" for k, v in show.items())
        )

    SETTINGS = ("server_version", "shared_buffers", "synchronous_commit", "fsync")

    def backend_pids(self) -> list[int]:
        """The PostgreSQL backends of dicomd's connections (same machine: their CPU is read from /proc)."""
        from sqlalchemy import text

        q = text("SELECT pid FROM pg_stat_activity WHERE application_name = :s")
        try:
            with self.engine.connect() as conn:
                return [int(p) for p in conn.execute(q, {"s": self.schema}).scalars()]
        except Exception:  # accounting only: never fails a run
            return []

    def size_bytes(self) -> int:
        """Tables + indexes + TOAST of the schema."""
        from sqlalchemy import text

        q = text(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = :s AND c.relkind = 'r'"
        )
        with self.engine.connect() as conn:
            return int(conn.execute(q, {"s": self.schema}).scalar() or 0)

    def drop(self) -> None:
        from sqlalchemy import text

        with self.engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))
        self.engine.dispose()


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
