"""DIMSE benchmark: dicomd's DICOM listener against Orthanc's DICOM port, same corpus, same clients, one run.

  .venv/bin/python -m bench.dimse --count 2000      # N CT instances (bench/corpus.py, ct128 by default)
  .venv/bin/python -m bench.dimse --count 1000 --find-studies 50000   # and C-FIND at 50k more studies

Lines (each server started fresh on its own temp dir):
  C-STORE x1 / x4   DCMTK storescu of N instances over 1 association, then of N other instances spread
                    over 4 concurrent associations (one storescu process each): instances/s, wall clock
  C-FIND study      study-level queries by PatientID (single value) on one pynetdicom association, with
                    a few return keys: p50 / p95 latency in ms
  C-MOVE study      a study of --move-study instances (1,000 by default, 4 series), stored over 4
                    associations, then moved whole to DCMTK's storescp (--ignore: it receives and
                    drops): instances/s, median of 3 moves
  C-GET study       the same study fetched whole by DCMTK's getscu (--ignore) on its own association:
                    instances/s, median of 3 after a first one not counted
  C-FIND at scale   with --find-studies N: N more studies of one tiny instance each (N/2 patients), stored
                    by storescu over 4 associations (that rate is a line too), then the C-FIND line again
                    on the larger index
The table gives each figure for both servers and dicomd's advantage (throughput: dicomd / Orthanc;
latency: Orthanc / dicomd; above 1 = dicomd better). Below it, the bounds of this machine, measured after
the servers (skip with --no-bounds): storescu's C-STORE lines into DCMTK's storescp --ignore, which stores
nothing (the client's own ceiling), and the rate of device flushes in the work dir; from them, the most a
receiver that flushes before each response can reach over one association, beside 3x Orthanc.

The pynetdicom client runs with dicomd's reactor (dicomd/dimse/reactor.py, as the listener does): stock
pynetdicom's requestor pauses its association reactor by a flag that is stale for a moment, and a response
that comes back within it is lost to the reactor (pynetdicom issue #875); a server that answers a C-FIND
within ~1 ms lands there now and then. The same client, so the same fix, measures both servers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from bench import servers, sysinfo
from bench.client import percentile
from bench.corpus import Corpus, CorpusSpec
from dicomd.dimse import reactor

BENCH = Path(__file__).resolve().parent
DESTINATION_AE = "BENCHSCP"
# DCMTK keeps Nagle's algorithm on unless told: each of its small writes would then wait for the peer's
# delayed ACK (~40 ms here, for both servers alike); the clients must not be what is measured
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
FIND_QUERIES = 200
MOVES = 3


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class DicomServer:
    """A server under test with its DICOM port."""

    name: str
    server: servers.Server | None  # None: a receiver its caller runs (storescp)
    ae_title: str
    dicom_port: int

    def stop(self) -> None:
        """Stop the server, keeping its data dir: removed with the run's work dir at the end."""
        if self.server is not None:
            self.server.keep = True
            self.server.stop()


def _wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on DICOM port {port} after {timeout} s")


def start_dicomd(workdir: str, destination_port: int) -> DicomServer:
    port = servers.free_port()
    extra = ["--dicom-port", str(port), "--dicom-ae-title", "DICOMD"]
    extra += ["--dicom-peers", f"{DESTINATION_AE}=127.0.0.1:{destination_port}"]
    srv = servers.start_dicomd(workdir, extra=extra)
    try:
        _wait_for_port(port)
    except Exception:
        srv.stop()
        raise
    return DicomServer("dicomd", srv, "DICOMD", port)


def start_orthanc(workdir: str, destination_port: int) -> DicomServer:
    """Orthanc with the fair configuration of bench/servers.py, its DICOM server on, the destination
    declared as a modality and C-FIND/C-MOVE allowed from any calling AE (as dicomd allows loopback)."""
    servers.ensure_orthanc()
    wd = tempfile.mkdtemp(prefix="orthanc-", dir=workdir)
    http_port, dicom_port = servers.free_port(), servers.free_port()
    cfg = servers.orthanc_config(os.path.join(wd, "storage"), http_port)
    cfg |= {
        "DicomServerEnabled": True,
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "DicomModalities": {"bench": [DESTINATION_AE, "127.0.0.1", destination_port]},
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowMove": True,
        "DicomAlwaysAllowGet": True,
        "DicomCheckModalityHost": False,
    }
    cfg_path = os.path.join(wd, "orthanc.json")
    Path(cfg_path).write_text(json.dumps(cfg, indent=2))
    log_path = os.path.join(wd, "orthanc.log")
    with open(log_path, "wb") as out:
        # Orthanc's DICOM server is DCMTK's: the same switch turns Nagle off for it
        proc = subprocess.Popen(
            [servers.ORTHANC_BIN, cfg_path], stdout=out, stderr=subprocess.STDOUT, cwd=wd, env=DCMTK_ENV
        )
    srv = servers.Server("orthanc", "127.0.0.1", http_port, "/dicom-web", wd, proc, servers.orthanc_version())
    try:
        _wait_for_port(dicom_port, timeout=60)
    except Exception:
        srv.stop()
        raise
    return DicomServer("orthanc", srv, "ORTHANC", dicom_port)


# ---- the corpus on disk ----------------------------------------------------------------------------


def write_corpus(corpus: Corpus, directory: Path, parts: int) -> list[Path]:
    """The corpus's instances as files, dealt round-robin into `parts` sub-directories."""
    dirs = [directory / f"part{k}" for k in range(parts)]
    for d in dirs:
        d.mkdir(parents=True)
    for i in range(corpus.spec.count):
        (dirs[i % parts] / f"{i:08d}.dcm").write_bytes(corpus.instance(i))
    return dirs


# ---- the lines -------------------------------------------------------------------------------------


@dataclass
class Figures:
    values: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def store(target: DicomServer, dirs: list[Path], count: int) -> float:
    """storescu of every file of `dirs`, one association (process) per directory: instances/s."""
    cmd = ["storescu", "-aet", "BENCHSCU", "-aec", target.ae_title, "+sd", "+r"]
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [*cmd, "127.0.0.1", str(target.dicom_port), str(d)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=DCMTK_ENV,  # without it storescu waits for a delayed ACK after every request
        )
        for d in dirs
    ]
    errors = [p.communicate()[1].decode(errors="replace") for p in procs]
    elapsed = time.perf_counter() - started
    failed = [e for p, e in zip(procs, errors, strict=True) if p.returncode != 0]
    if failed:
        raise RuntimeError(f"storescu failed against {target.name}: {failed[0][-500:]}")
    return count / elapsed


def _no_delay(event: Any) -> None:
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@contextlib.contextmanager
def association(target: DicomServer, model: str) -> Iterator[object]:
    ae = AE(ae_title="BENCHSCU")
    ae.add_requested_context(model)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    assoc = ae.associate(
        "127.0.0.1",
        target.dicom_port,
        ae_title=target.ae_title,
        evt_handlers=[(evt.EVT_CONN_OPEN, _no_delay)],
    )
    if not assoc.is_established:
        raise RuntimeError(f"{target.name} refused the association")
    try:
        yield assoc
    finally:
        assoc.release()


def find_latencies(target: DicomServer, corpus: Corpus) -> tuple[list[float], int]:
    """Study-level C-FINDs by PatientID: the latency of each (s) and the matches found in all."""
    model = StudyRootQueryRetrieveInformationModelFind
    latencies: list[float] = []
    matches = 0
    with association(target, model) as assoc:
        for q in range(FIND_QUERIES):
            identifier = Dataset()
            identifier.QueryRetrieveLevel = "STUDY"
            identifier.PatientID = corpus.study(q % corpus.spec.n_studies).patient.pid
            identifier.StudyInstanceUID = identifier.StudyDate = identifier.PatientName = ""
            identifier.AccessionNumber = identifier.ModalitiesInStudy = ""
            started = time.perf_counter()
            for status, ds in assoc.send_c_find(identifier, model):  # type: ignore[attr-defined]
                if status is None or "Status" not in status:
                    raise RuntimeError(f"{target.name}: C-FIND got no response")
                if ds is not None and status.Status in (0xFF00, 0xFF01):
                    matches += 1
                elif status.Status not in (0xFF00, 0xFF01, 0x0000):
                    raise RuntimeError(f"{target.name}: C-FIND failed with 0x{status.Status:04X}")
            latencies.append(time.perf_counter() - started)
    return latencies, matches


@contextlib.contextmanager
def storescp(port: int, cwd: str | None = None) -> Iterator[None]:
    """DCMTK's storescp with --ignore on ``port``: it receives every instance and stores nothing."""
    proc = subprocess.Popen(
        ["storescp", "-aet", DESTINATION_AE, "--ignore", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=cwd,
        env=DCMTK_ENV,
    )
    try:
        _wait_for_port(port)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def move_rate(target: DicomServer, corpus: Corpus) -> float:
    """C-MOVE of the corpus's first study to storescp: instances/s, the median of MOVES moves (the first
    is a warm-up, not counted)."""
    model = StudyRootQueryRetrieveInformationModelMove
    expected = min(corpus.spec.per_study, corpus.spec.count)
    rates: list[float] = []
    with association(target, model) as assoc:
        for _ in range(MOVES + 1):
            identifier = Dataset()
            identifier.QueryRetrieveLevel = "STUDY"
            identifier.StudyInstanceUID = corpus.study(0).uid
            started = time.perf_counter()
            final = None
            for status, _ds in assoc.send_c_move(identifier, DESTINATION_AE, model):  # type: ignore[attr-defined]
                if status is None or "Status" not in status:
                    raise RuntimeError(f"{target.name}: C-MOVE got no response")
                if status.Status != 0xFF00:
                    final = status
            elapsed = time.perf_counter() - started
            completed = int(getattr(final, "NumberOfCompletedSuboperations", 0) or 0)
            if final is None or final.Status != 0x0000 or completed != expected:
                status_text = "none" if final is None else f"0x{final.Status:04X}"
                raise RuntimeError(f"{target.name}: C-MOVE ended {status_text}, {completed}/{expected} sent")
            rates.append(expected / elapsed)
    return statistics.median(rates[1:])


def get_rate(target: DicomServer, corpus: Corpus) -> float:
    """C-GET of the corpus's first study by getscu (which receives and drops): instances/s, the median of
    MOVES fetches after a first one not counted."""
    expected = min(corpus.spec.per_study, corpus.spec.count)
    # (-v: the final status report, to check that every instance came)
    cmd = ["getscu", "-v", "-aet", "BENCHSCU", "-aec", target.ae_title, "-S", "--ignore"]
    cmd += ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={corpus.study(0).uid}"]
    cmd += ["127.0.0.1", str(target.dicom_port)]
    rates: list[float] = []
    for _ in range(MOVES + 1):
        started = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=DCMTK_ENV, timeout=600)
        elapsed = time.perf_counter() - started
        report = done.stdout + done.stderr
        if done.returncode != 0 or f"Number of Completed Suboperations : {expected}\n" not in report:
            raise RuntimeError(f"getscu failed against {target.name}: {report[-500:]}")
        rates.append(expected / elapsed)
    return statistics.median(rates[1:])


def find_line(figures: Figures, target: DicomServer, corpus: Corpus, key: str, label: str) -> None:
    """The C-FIND latency line (``key``_p50, ``key``_p95, in ms) on the corpus's patients."""
    latencies, matches = find_latencies(target, corpus)
    if matches < FIND_QUERIES:
        figures.notes.append(f"{label} found {matches} studies for {FIND_QUERIES} queries")
    figures.values[f"{key}_p50"] = percentile(latencies, 50) * 1000
    figures.values[f"{key}_p95"] = percentile(latencies, 95) * 1000


def run_server(
    start: Callable[[str, int], DicomServer],
    workdir: str,
    corpora: tuple[Corpus, Corpus],
    moved: Corpus,
    files: Path,
    scale: Corpus | None = None,
) -> Figures:
    figures = Figures()
    destination_port = servers.free_port()
    target = start(workdir, destination_port)
    one, four = corpora
    try:
        log(f"{target.name}: C-STORE over 1 association")
        figures.values["store1"] = store(target, [files / "one" / "part0"], one.spec.count)
        log(f"{target.name}: C-STORE over 4 associations")
        four_dirs = sorted((files / "four").iterdir())
        figures.values["store4"] = store(target, four_dirs, four.spec.count)
        log(f"{target.name}: C-FIND")
        find_line(figures, target, one, "find", "C-FIND")
        log(f"{target.name}: C-MOVE of a {moved.spec.count}-instance study")
        store(target, sorted((files / "move").iterdir()), moved.spec.count)
        with storescp(destination_port):
            figures.values["move"] = move_rate(target, moved)
        log(f"{target.name}: C-GET of that study")
        figures.values["get"] = get_rate(target, moved)
        if scale is not None:
            log(f"{target.name}: C-STORE of {scale.spec.n_studies} more studies over 4 associations")
            figures.values["scale_store"] = store(
                target, sorted((files / "scale").iterdir()), scale.spec.count
            )
            log(f"{target.name}: C-FIND at {scale.spec.n_studies + one.spec.n_studies} studies")
            find_line(figures, target, scale, "scale_find", "C-FIND at scale")
    finally:
        target.stop()
    return figures


LINES = [
    ("store1", "C-STORE, 1 association (instances/s)", True),
    ("store4", "C-STORE, 4 associations (instances/s)", True),
    ("find_p50", "C-FIND study level p50 (ms)", False),
    ("find_p95", "C-FIND study level p95 (ms)", False),
    ("move", "C-MOVE of a {move_study}-instance study (instances/s)", True),
    ("get", "C-GET of that study (instances/s)", True),
    ("scale_store", "C-STORE of the scale corpus, 4 associations (instances/s)", True),
    ("scale_find_p50", "C-FIND study level p50 at scale (ms)", False),
    ("scale_find_p95", "C-FIND study level p95 at scale (ms)", False),
]


def render(results: dict[str, Figures], move_study: int) -> str:
    d, o = results.get("dicomd", Figures()), results.get("orthanc", Figures())
    rows = ["| line | dicomd | Orthanc | dicomd advantage |", "|---|---:|---:|---:|"]
    for key, label, higher_is_better in LINES:
        dv, ov = d.values.get(key), o.values.get(key)
        ratio = ""
        if dv and ov:
            ratio = f"{(dv / ov if higher_is_better else ov / dv):.2f}x"
        if dv is None and ov is None:
            continue  # a line this run did not measure
        shown = ["" if v is None else f"{v:.1f}" for v in (dv, ov)]
        rows.append(f"| {label.format(move_study=f'{move_study:,}')} | {shown[0]} | {shown[1]} | {ratio} |")
    notes = [f"- {name}: {n}" for name, f in results.items() for n in f.notes]
    return "\n".join(rows + notes)


def run_null_receiver(workdir: str, corpora: tuple[Corpus, Corpus], files: Path) -> Figures:
    """The C-STORE lines into a receiver that stores nothing (``storescp``, run in ``workdir``): what
    storescu reaches into it is the client's own ceiling on this machine."""
    figures = Figures()
    port = servers.free_port()
    one, four = corpora
    with storescp(port, cwd=workdir):
        target = DicomServer("storescp", None, DESTINATION_AE, port)
        log("storescp --ignore (stores nothing): C-STORE over 1 association")
        figures.values["store1"] = store(target, [files / "one" / "part0"], one.spec.count)
        log("storescp --ignore (stores nothing): C-STORE over 4 associations")
        figures.values["store4"] = store(target, sorted((files / "four").iterdir()), four.spec.count)
    return figures


def render_bounds(null: Figures, flush_rate: float | None, orthanc: Figures | None) -> str:
    """What this machine lets any durable C-STORE receiver reach, measured in the same run: the client's
    own ceiling (storescu into a receiver that stores nothing) and one device flush per acknowledged
    instance over one association (storescu sends the next instance only after the response, and a
    durable receiver answers only after a flush); each beside 3x Orthanc's figure of the run."""
    one, four = null.values.get("store1"), null.values.get("store4")
    by_orthanc = orthanc.values if orthanc else {}
    lines = ["Bounds on this machine (same run):"]
    if one and four:
        lines.append(
            f"- DCMTK storescu into storescp --ignore (stores nothing): {one:,.1f} instances/s over one "
            f"association, {four:,.1f} over four: the client's own ceiling"
        )
    if flush_rate:
        lines.append(
            f"- a device flush in the work dir (create + write 39 KB + fsync): {flush_rate:,.0f}/s, "
            f"{1000 / flush_rate:.2f} ms each"
        )
    if one and flush_rate:
        bound = 1 / (1 / one + 1 / flush_rate)
        line = (
            f"- over one association a durable receiver waits for the client and one flush per instance: "
            f"at most 1 / (1/{one:,.0f} + 1/{flush_rate:,.0f}) = {bound:,.0f} instances/s, whatever its CPU"
        )
        if by_orthanc.get("store1"):
            target = 3 * by_orthanc["store1"]
            line += f"; 3x Orthanc is {target:,.0f} ({'within' if target <= bound else 'beyond'} that bound)"
        lines.append(line)
    if four and by_orthanc.get("store4"):
        target = 3 * by_orthanc["store4"]
        lines.append(
            f"- over four associations 3x Orthanc is {target:,.0f} instances/s, {target / four:.0%} of the "
            "client's own ceiling"
        )
    return "\n".join(lines) if len(lines) > 1 else ""


def main(argv: list[str] | None = None) -> int:
    reactor.install()  # the client's (module docstring)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=2000, help="instances per C-STORE line (two corpora)")
    ap.add_argument("--size", default="ct128", choices=["tiny", "ct128", "ct512"])
    ap.add_argument("--move-study", type=int, default=1000, help="instances of the study moved (4 series)")
    ap.add_argument("--servers", default="dicomd,orthanc", help="comma list (default: both)")
    ap.add_argument("--workdir", default=None, help="where data dirs go (default: bench/work)")
    ap.add_argument("--keep", action="store_true", help="keep server data dirs")
    ap.add_argument(
        "--settle",
        type=float,
        default=servers.SETTLE_SECONDS,
        help="seconds to wait, after a sync, before the first server (default 65: servers.SETTLE_SECONDS)",
    )
    ap.add_argument(
        "--find-studies", type=int, default=0, help="C-FIND again after storing N one-instance studies"
    )
    ap.add_argument(
        "--no-bounds",
        action="store_true",
        help="skip the C-STORE lines into a receiver that stores nothing and the flush probe",
    )
    a = ap.parse_args(argv)
    workroot = a.workdir or str(BENCH / "work")
    os.makedirs(workroot, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="dimse-", dir=workroot)
    try:
        corpora = (
            Corpus(CorpusSpec(name="dimse1", size=a.size, count=a.count, seed=11)),
            Corpus(CorpusSpec(name="dimse4", size=a.size, count=a.count, seed=12)),
        )
        files = Path(workdir) / "corpus"
        log(f"writing 2 x {a.count} + {a.move_study} {a.size} instances")
        write_corpus(corpora[0], files / "one", 1)
        write_corpus(corpora[1], files / "four", 4)
        per_series = -(-a.move_study // 4)
        moved = Corpus(
            CorpusSpec("dimse-move", a.size, a.move_study, series_per_study=4, per_series=per_series, seed=14)
        )
        write_corpus(moved, files / "move", 4)
        scale = None
        if a.find_studies:
            spec = CorpusSpec(
                "dimse-scale", "tiny", a.find_studies, series_per_study=1, per_series=1, seed=13
            )
            scale = Corpus(spec)
            log(f"writing {a.find_studies} tiny one-instance studies")
            write_corpus(scale, files / "scale", 4)
        if a.settle > 0:
            log(f"letting the file system settle for {a.settle:.0f} s (--settle)")
            servers.settle(a.settle)
        starters = {"dicomd": start_dicomd, "orthanc": start_orthanc}
        results: dict[str, Figures] = {}
        for name in a.servers.split(","):
            # like bench.run: neither the corpus nor the server before leaves dirty pages for this one's
            # syncs (they flush the whole file system) to write back, and each data dir stays until the
            # end (a mass delete makes the next server's files slow to create: servers.SETTLE_SECONDS)
            os.sync()
            results[name] = run_server(starters[name], workdir, corpora, moved, files, scale)
        report = render(results, a.move_study)
        if not a.no_bounds:
            os.sync()
            null = run_null_receiver(workdir, corpora, files)
            bounds = render_bounds(null, sysinfo.fsync_rate(workdir), results.get("orthanc"))
            report += "\n\n" + bounds
        print(report)
    finally:
        if not a.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
