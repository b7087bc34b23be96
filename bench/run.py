"""The one benchmark command: dicomd vs Orthanc, same corpus, same client, one run.

  .venv/bin/python -m bench.run --quick     # CI subset, < 2 minutes, reports figures, never fails on noise
  .venv/bin/python -m bench.run --full      # 50k corpus, STOW matrix, all lines (~15-25 min)
  .venv/bin/python -m bench.run --scale     # dicomd QIDO/metadata latency at 10k, 100k, 1M instances
  .venv/bin/python -m bench.run --memory    # 2 GB instance: STOW + retrieve, peak RSS per server process
  .venv/bin/python -m bench.run --replicas  # 1, 2, 3 replicas on PostgreSQL + S3 emulator vs single node
  .venv/bin/python -m bench.run --pixels    # frame transcoding, rendered JPEG, thumbnails (bench/pixels.py)

Results: bench/results/<date>-<mode>.md (+ .json), latest summary copied into bench/README.md.
See bench/README.md for what each line means.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import random
import re
import resource
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import servers, sysinfo
from bench.client import ACCEPT_DICOM, ACCEPT_FRAME, ACCEPT_JSON, STOW_CT, Pool, multipart, percentile
from bench.corpus import Corpus, CorpusSpec, template
from bench.report import Line, raw_results, render, rerender, write_report

BENCH = Path(__file__).resolve().parent


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# Configuration per mode
# --------------------------------------------------------------------------------------------------


@dataclass
class Config:
    mode: str
    count: int  # main ct128 corpus
    large: int  # ct512 instances (studies of 2 series x 10)
    big_study: bool  # one 1,000-instance study (metadata latency target)
    matrix: list[tuple[int, int]]  # STOW (batch, concurrency) cells
    cell_max: int  # instances per STOW cell at most
    cell_secs: float
    dur: float  # seconds per read line
    read_conc: int = 8
    client_procs: int = 1
    mixed_conc: int = 8
    bulk_batch: int = 50
    bulk_conc: int = 4


MODES: dict[str, Config] = {
    "quick": Config(
        mode="quick",
        count=4000,  # the cells take 2,500 (500 + 1,000 + 1,000), the load the rest
        large=40,
        big_study=False,
        matrix=[(1, 1), (10, 4), (50, 16)],
        cell_max=1000,
        cell_secs=2,
        dur=1.5,
    ),
    "full": Config(
        mode="full",
        count=50_000,
        large=400,
        big_study=True,
        matrix=[(b, c) for b in (1, 10, 50) for c in (1, 4, 16)],
        cell_max=3000,
        cell_secs=10,
        dur=10,
        client_procs=2,
    ),
    # bench/pixels.py: its own 48-instance corpus; 3 s per line
    "pixels": Config(
        mode="pixels", count=0, large=0, big_study=False, matrix=[], cell_max=0, cell_secs=0, dur=3
    ),
}


# --------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, srv: servers.Server, pool: Pool, cfg: Config) -> None:
        self.srv, self.pool, self.cfg = srv, pool, cfg
        self.lines: dict[str, Line] = {}
        self.base = {"host": srv.host, "port": srv.port, "root": srv.root}

    def run(self, job: dict[str, Any], procs: int = 1) -> tuple[dict[str, Any], float]:
        pids = self.srv.pids()
        c0 = {p: servers.cpu_seconds([p]) for p in pids}
        res = self.pool.run({**self.base, **job}, procs)
        c1 = {p: servers.cpu_seconds([p]) for p in pids}
        # server CPU over the client's measured window (the 0.3 s start delay is idle time)
        w = max(res["wall"], 1e-9)
        res["srv_cpu_by_pid"] = {str(p): round(100 * (c1[p] - c0[p]) / w) for p in pids}
        return res, 100 * sum(c1[p] - c0[p] for p in pids) / w

    def add(
        self, key: str, title: str, res: dict[str, Any], srv_cpu: float, unit: str = "req/s", note: str = ""
    ) -> Line:
        lat = [x for v in res["lat"].values() for x in v]
        wall = res["wall"]
        value = res["instances"] / wall if unit == "inst/s" else res["ops"] / wall
        mb = (res["sent"] + res["recv"]) / wall / 1e6
        nreq = res["ops"] + res["errors"]
        line = Line(
            key=key,
            title=title,
            unit=unit,
            value=value,
            mb_s=mb,
            p50_ms=percentile(lat, 50) * 1000,
            p99_ms=percentile(lat, 99) * 1000,
            srv_cpu=srv_cpu,
            cli_cpu=100 * res["cpu"] / wall,
            cli_us=1e6 * res["cpu"] / max(1, nreq),
            ops=res["ops"],
            errors=res["errors"],
            note=note,
        )
        if res["errors"]:
            line.extra["err_sample"] = res["err_sample"]
            line.extra["status"] = res["status"]
            log(f"  ! {key}: {res['errors']} errors, e.g. {res['err_sample'][:2]}")
        if len(res.get("srv_cpu_by_pid", {})) > 1:  # e.g. dicomd master + workers: is the load balanced?
            line.extra["srv_cpu_by_pid"] = res["srv_cpu_by_pid"]
        if len(res["lat"]) > 1:
            line.extra["p50_by_op"] = {k: round(percentile(v, 50) * 1000, 2) for k, v in res["lat"].items()}
        self.lines[key] = line
        log(
            f"  {key:<22} {value:9.1f} {unit:<6} {mb:8.1f} MB/s  p50 {line.p50_ms:7.1f} ms  "
            f"p99 {line.p99_ms:7.1f} ms  srv {srv_cpu:4.0f}%  cli {line.cli_cpu:3.0f}% "
            f"({line.cli_us:.0f} us/req)"
        )
        return line

    # ---- phases ----

    def stow(
        self,
        key: str,
        title: str,
        spec: CorpusSpec,
        start: int,
        stop: int,
        batch: int,
        conc: int,
        secs: float | None = None,
        procs: int = 1,
    ) -> int:
        job = {
            "kind": "stow",
            "concurrency": conc,
            "corpus": spec.as_dict(),
            "start": start,
            "stop": stop,
            "batch": batch,
        }
        if secs:
            job["duration"] = secs
        res, cpu = self.run(job, procs)
        self.add(key, title, res, cpu, unit="inst/s")
        return int(res["cursor"])

    def get(
        self,
        key: str,
        title: str,
        paths: list[str],
        accept: str,
        conc: int,
        dur: float,
        keep_body: bool = False,
        procs: int = 1,
        max_ops: int = 0,
        note: str = "",
    ) -> Line:
        job = {"kind": "get", "concurrency": conc, "paths": paths, "accept": accept, "keep_body": keep_body}
        warm = {**job, "duration": min(1.0, dur / 3), "max_ops": max(1, max_ops // 4) if max_ops else 0}
        self.pool.run({**self.base, **warm}, procs)
        res, cpu = self.run({**job, "duration": dur, "max_ops": max_ops}, procs)
        return self.add(key, title, res, cpu, note=note)


def http_json(url: str, accept: str = ACCEPT_JSON) -> Any:
    req = urllib.request.Request(url, headers={"Accept": accept, "Accept-Encoding": "identity"})
    with urllib.request.urlopen(req, timeout=300) as r:
        body = r.read()
    return json.loads(body) if body.strip() else []


def qido_paths(c: Corpus, n: int, upto: int | None = None) -> dict[str, list[str]]:
    q = c.query_params(n, upto=upto)
    enc = {k: [urllib.parse.quote(p, safe="=*-^") for p in v] for k, v in q.items()}
    return {k: [f"/studies?{p}&limit=100" for p in v] for k, v in enc.items()}


def http_get(url: str, accept: str) -> tuple[int, str, bytes]:
    """(status, Content-Type, body) of one GET, errors included."""
    req = urllib.request.Request(url, headers={"Accept": accept, "Accept-Encoding": "identity"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def multipart_payloads(body: bytes, content_type: str) -> list[bytes]:
    """The part payloads of a multipart/related body (for checking a few answers, not for timing)."""
    m = re.search(r'boundary="?([^";\s]+)"?', content_type)
    if not m:
        raise ValueError(f"no boundary in Content-Type {content_type!r}")
    out = []
    for seg in (b"\r\n" + body).split(b"\r\n--" + m.group(1).encode())[1:]:
        if seg.startswith(b"--"):
            break
        out.append(seg.partition(b"\r\n\r\n")[2])
    return out


def stow_one(srv: servers.Server, data: bytes) -> None:
    chunks, _ = multipart([data])
    req = urllib.request.Request(
        srv.base + "/studies",
        data=b"".join(chunks),
        method="POST",
        headers={"Content-Type": STOW_CT, "Accept": ACCEPT_JSON, "Accept-Encoding": "identity"},
    )
    with urllib.request.urlopen(req, timeout=600) as r:
        r.read()


def frame_path(c: Corpus, i: int, frame: int) -> str:
    s, se, _ = c.locate(i)
    return f"/studies/{c.study(s).uid}/series/{c.series_uid(s, se)}/instances/{c.sop_uid(i)}/frames/{frame}"


def check_frame(srv: servers.Server, path: str, expected: bytes) -> str:
    """'' when the server answers 200 with exactly `expected` as its one part, else what differs."""
    st, ct, body = http_get(srv.base + path, ACCEPT_FRAME)
    if st != 200:
        return f"{path} -> {st}: {body[:200]!r}"
    parts = multipart_payloads(body, ct)
    if [len(p) for p in parts] != [len(expected)] or parts[0] != expected:
        return (
            f"{path} -> 200 with parts of {[len(p) for p in parts]} bytes ({ct}), "
            f"expected one part of {len(expected)} bytes equal to the stored frame"
        )
    return ""


def frame_lines(
    b: Bench, key: str, title: str, paths: list[str], checks: list[tuple[str, bytes]], procs: int
) -> None:
    """Check a few frames byte for byte, then time the paths over 1 connection and over 8."""
    errs = [e for p, x in checks if (e := check_frame(b.srv, p, x))]
    if errs:
        note = f"not timed: {errs[0]}"
        log(f"  ! {key}: {note}")
        b.lines[key] = Line(key=key, title=title, unit="req/s", value=float("nan"), errors=1, note=note)
        return
    b.get(f"{key}_c1", f"{title}, 1 conn", paths, ACCEPT_FRAME, 1, b.cfg.dur)
    b.get(
        f"{key}_c8",
        f"{title}, {b.cfg.read_conc} conn",
        paths,
        ACCEPT_FRAME,
        b.cfg.read_conc,
        b.cfg.dur,
        procs=procs,
    )


def bench_frames(b: Bench, mc: Corpus, info: dict[str, Any]) -> None:
    """Single frames: frame 1 of random ct128 instances, then random frames of one multi-frame instance."""
    srv, cfg = b.srv, b.cfg
    log(f"{srv.name}: frames")
    picks = random.Random(11).sample(range(mc.spec.count), min(300, mc.spec.count))
    px = pixel_data(mc.instance(picks[0]))
    frame_lines(
        b,
        "frame",
        f"Frame retrieve ct128 (frame 1 of a random instance, {len(px) / 1e3:.0f} KB)",
        [frame_path(mc, i, 1) for i in picks],
        [(frame_path(mc, i, 1), px) for i in picks[:3]],
        cfg.client_procs,
    )
    n = MULTIFRAME_FRAMES
    parts, _, study = _stream_big_instance(n, root=MULTIFRAME_ROOT, distinct=True)
    frames = parts[2:]
    stow_one(srv, b"".join(parts))
    base = f"/studies/{study}/series/{MULTIFRAME_ROOT}.3/instances/{MULTIFRAME_ROOT}.1/frames/"
    order = random.Random(12).sample(range(1, n + 1), n)
    frame_lines(
        b,
        "frame_mf",
        f"Frame retrieve, {n}-frame 512x512 instance (random frame, {len(frames[0]) / 1e3:.0f} KB)",
        [f"{base}{k}" for k in order],
        [(f"{base}{k}", frames[k - 1]) for k in (1, n // 2, n)],
        cfg.client_procs,
    )
    info["frame_bytes"] = {"ct128": len(px), "multiframe": len(frames[0])}


def pixel_data(instance: bytes) -> bytes:
    import io

    import pydicom

    return bytes(pydicom.dcmread(io.BytesIO(instance)).PixelData)


def bench_server(srv: servers.Server, pool: Pool, cfg: Config) -> tuple[dict[str, Line], dict[str, Any]]:
    b = Bench(srv, pool, cfg)
    info: dict[str, Any] = {}
    main = CorpusSpec(name="main", size="ct128", count=cfg.count)
    large = CorpusSpec(name="large", size="ct512", count=cfg.large, series_per_study=2, per_series=10)
    big = CorpusSpec(name="big", size="ct128", count=1000, series_per_study=4, per_series=250, seed=2)
    writes = CorpusSpec(name="mixed-writes", size="ct128", count=1_000_000, seed=3)
    mc = Corpus(main)
    inst_mb = len(template("ct128").data) / 1e6

    # 1. STOW matrix on an empty server: each cell stores fresh instances of the main corpus
    log(f"{srv.name}: STOW matrix")
    cursor = 0
    for batch, conc in cfg.matrix:
        n = min(cfg.cell_max, max(batch * conc * 4, cfg.cell_max if batch > 1 else cfg.cell_max // 2))
        stop = min(cfg.count, cursor + n)
        cursor = b.stow(
            f"stow_b{batch}_c{conc}",
            f"STOW ct128 ({inst_mb * 1000:.0f} KB), batch {batch}, {conc} conn",
            main,
            cursor,
            stop,
            batch,
            conc,
            cfg.cell_secs,
        )
    # 2. the rest of the corpus
    t0 = time.perf_counter()
    if cursor < cfg.count:
        log(f"{srv.name}: loading instances {cursor}..{cfg.count}")
        b.stow(
            "stow_load",
            f"STOW load to {cfg.count} ct128, batch {cfg.bulk_batch}, {cfg.bulk_conc} conn",
            main,
            cursor,
            cfg.count,
            cfg.bulk_batch,
            cfg.bulk_conc,
        )
    info["load_seconds"] = time.perf_counter() - t0
    b.stow(
        "stow_ct512",
        f"STOW ct512 ({len(template('ct512').data) / 1e3:.0f} KB), batch 4, 4 conn",
        large,
        0,
        cfg.large,
        4,
        4,
    )
    if cfg.big_study:
        b.stow("stow_big", "STOW 1,000-instance study, batch 50, 4 conn", big, 0, 1000, 50, 4)

    # 3. sanity: the same queries must select the same rows on both servers
    qp = qido_paths(mc, 200)
    info["qido_rows"] = {}
    for k, paths in qp.items():
        rows = [len(http_json(srv.base + p)) for p in paths[:20]]
        info["qido_rows"][k] = sum(rows) / len(rows)
    st0 = mc.study(0)
    info["study_meta_instances"] = len(http_json(f"{srv.base}/studies/{st0.uid}/metadata"))
    log(f"{srv.name}: rows per query {info['qido_rows']}, study metadata {info['study_meta_instances']} inst")

    # 4. QIDO
    log(f"{srv.name}: QIDO")
    procs = cfg.client_procs
    titles = {
        "pid": "QIDO studies by PatientID",
        "name": "QIDO studies by PatientName prefix*",
        "date": "QIDO studies by StudyDate 30-day range",
    }
    for k, paths in qp.items():
        b.get(f"qido_{k}", titles[k], paths, ACCEPT_JSON, cfg.read_conc, cfg.dur, True, procs)

    # 5. metadata
    log(f"{srv.name}: metadata")
    n_st = main.n_studies
    studies = [mc.study(s).uid for s in range(0, n_st, max(1, n_st // 200))]
    b.get(
        "meta_study",
        f"Study metadata ({main.per_study} instances)",
        [f"/studies/{u}/metadata" for u in studies],
        ACCEPT_JSON,
        4,
        cfg.dur,
        True,
        procs,
    )
    series = [
        f"/studies/{mc.study(s).uid}/series/{mc.series_uid(s, se)}/metadata"
        for s in range(0, n_st, max(1, n_st // 100))
        for se in range(main.series_per_study)
    ]
    b.get(
        "meta_series",
        f"Series metadata ({main.per_series} instances)",
        series,
        ACCEPT_JSON,
        4,
        cfg.dur,
        True,
        procs,
    )
    if cfg.big_study:
        bc = Corpus(big)
        path = f"/studies/{bc.study(0).uid}/metadata"
        # the first request, before any server-side cache holds the answer (what a viewer waits for
        # when it opens a study just stored)
        started = time.perf_counter()
        status, _, _ = http_get(f"http://{srv.host}:{srv.port}{srv.root}{path}", ACCEPT_JSON)
        cold_ms = (time.perf_counter() - started) * 1000
        line = b.get(
            "meta_big",
            "Study metadata, 1,000 instances (1 conn: latency)",
            [path],
            ACCEPT_JSON,
            1,
            cfg.dur,
            True,
            note=f"first request {cold_ms:.0f} ms" if status == 200 else f"first request: HTTP {status}",
        )
        if status == 200:
            line.extra["cold_ms"] = round(cold_ms, 1)

    # 6. retrieve
    log(f"{srv.name}: retrieve")
    b.get(
        "wado_study",
        f"Study retrieve ct128 ({main.per_study} inst, {main.per_study * inst_mb:.1f} MB)",
        [f"/studies/{u}" for u in studies],
        ACCEPT_DICOM,
        4,
        cfg.dur,
    )
    lc = Corpus(large)
    lst = [f"/studies/{lc.study(s).uid}" for s in range(large.n_studies)]
    b.get(
        "wado_study_512",
        f"Study retrieve ct512 ({large.per_study} inst, "
        f"{large.per_study * len(template('ct512').data) / 1e6:.1f} MB)",
        lst,
        ACCEPT_DICOM,
        2,
        cfg.dur,
    )
    for key in ("wado_study", "wado_study_512"):
        ln = b.lines[key]
        ln.unit, ln.value = "MB/s", ln.mb_s or 0.0

    # 7. single frames
    bench_frames(b, mc, info)

    # 8. mixed: 80% reads, 20% single-instance writes
    log(f"{srv.name}: mixed")
    job = {
        "kind": "mixed",
        "concurrency": cfg.mixed_conc,
        "corpus": writes.as_dict(),
        "start": 0,
        "stop": writes.count,
        "batch": 1,
        "duration": cfg.dur,
        "keep_body": True,
        "weights": {"qido": 0.4, "series_meta": 0.2, "series_get": 0.2, "stow": 0.2},
        "paths_by_label": {
            "qido": qp["pid"],
            "series_meta": series,
            "series_get": [p.removesuffix("/metadata") for p in series],
        },
        "accept_by_label": {"qido": ACCEPT_JSON, "series_meta": ACCEPT_JSON, "series_get": ACCEPT_DICOM},
    }
    res, cpu = b.run(job)
    b.add("mixed", "Mixed: 40% QIDO, 20% series metadata, 20% series retrieve, 20% STOW x1", res, cpu)
    info["disk_bytes"] = srv.data_bytes()
    return b.lines, info


# --------------------------------------------------------------------------------------------------
# Scale and memory runs
# --------------------------------------------------------------------------------------------------


def bench_scale(
    srv: servers.Server,
    pool: Pool,
    sizes: list[int],
    size: str,
    dur: float,
    load: str = "stow",
    info: dict[str, Any] | None = None,
    *,
    per_study: int = 100,
) -> dict[str, Line]:
    # per_study = series_per_study x per_series: 4 x 25 (the default), or 1 series of per_study
    series, per_series = (4, per_study // 4) if per_study % 4 == 0 and per_study >= 20 else (1, per_study)
    spec = CorpusSpec(
        name="scale", size=size, count=max(sizes), seed=5, series_per_study=series, per_series=per_series
    )
    c = Corpus(spec)
    b = Bench(srv, pool, MODES["quick"])
    loaded = 0
    for n in sizes:
        log(f"{srv.name}: scale: loading to {n}")
        t0 = time.perf_counter()
        if load == "import":
            segments = bulk_import(srv, spec, loaded, n)
            if info is not None:  # the rate of each slice shows any growth of cost with the index size
                rates = info.setdefault("import rate per segment (instances/s)", {})
                # and its CPU, which a host whose speed moves within minutes leaves more alone (system
                # CPU also shows a file system slowed by files deleted just before: servers.SETTLE_SECONDS)
                user = info.setdefault("import user CPU per instance per segment (us)", {})
                system = info.setdefault("import system CPU per instance per segment (us)", {})
                for first, last, seconds, user_s, system_s in segments:
                    label, count = f"{first:,}-{last:,}", last - first
                    rates[label] = round(count / seconds, 1)
                    user[label] = round(user_s / count * 1e6)
                    system[label] = round(system_s / count * 1e6)
        else:
            b.stow(f"load_{n}", f"STOW load {loaded}..{n}", spec, loaded, n, 50, 4)
        loaded = n
        secs = time.perf_counter() - t0
        if info is not None:
            info.setdefault(f"load_s ({load})", {})[f"{n:,}"] = round(secs, 1)
        log(f"  loaded in {secs:.0f}s")
        # the load leaves gigabytes of dirty pages; reads measured while the kernel writes them back
        # wait on the disk (a 1M date-range p99 of 115 ms against 7 ms after a sync): the lines
        # measure the index, so the write-back is waited for first, and its time reported
        t0 = time.perf_counter()
        os.sync()
        if info is not None:
            waited = round(time.perf_counter() - t0, 1)
            info.setdefault("write-back after the load (s)", {})[f"{n:,}"] = waited
        qp = qido_paths(c, 300, upto=n)
        n_st = max(1, n // spec.per_study)
        studies = [f"/studies/{c.study(s).uid}/metadata" for s in range(0, n_st, max(1, n_st // 300))]
        for k, paths in qp.items():
            b.get(f"{n}_qido_{k}_c1", f"{n:,}: QIDO {k}, 1 conn", paths, ACCEPT_JSON, 1, dur, True)
            b.get(f"{n}_qido_{k}_c8", f"{n:,}: QIDO {k}, 8 conn", paths, ACCEPT_JSON, 8, dur, True)
        b.get(
            f"{n}_meta_c1",
            f"{n:,}: study metadata ({spec.per_study} inst), 1 conn",
            studies,
            ACCEPT_JSON,
            1,
            dur,
            True,
        )
    return b.lines


def bulk_import(
    srv: servers.Server, spec: CorpusSpec, start: int, stop: int
) -> list[tuple[int, int, float, float, float]]:
    """Load instances [start, stop) with `dicomd import` into the running server's data dir (no HTTP), in
    slices of 100k (aligned): (first, stop, seconds of the import alone, user and system CPU seconds of the
    import and its parser processes) per slice."""
    import shutil
    import subprocess
    import tempfile

    if srv.name != "dicomd":
        raise RuntimeError("--scale-load import works for dicomd only")
    corpus = Corpus(spec)
    batch = 100_000  # written and imported in slices: bounded temp space (~0.7 GB of tiny instances)
    segments: list[tuple[int, int, float, float, float]] = []
    first = start
    while first < stop:
        last = min(stop, (first // batch + 1) * batch)
        tmp = tempfile.mkdtemp(prefix="import-", dir=srv.workdir)
        try:
            for i in range(first, last):
                with open(os.path.join(tmp, f"{i}.dcm"), "wb") as f:
                    f.write(corpus.instance(i))
            cmd = [str(servers.DICOMD_BIN), "import", "--data-dir", os.path.join(srv.workdir, "data")]
            if srv.index_url:  # same index as the running server
                cmd += ["--index-url", srv.index_url]
            started, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run([*cmd, tmp], check=True)
            seconds, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
            # the import's and its parser processes' (waited-for children of this process and of theirs)
            user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
            segments.append((first, last, seconds, user, system))
            log(f"  import {first:,}-{last:,}: {(last - first) / seconds:,.0f} instances/s")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        first = last
    return segments


MULTIFRAME_FRAMES = 50
MULTIFRAME_ROOT = "1.2.826.0.1.3680043.8.498.78"  # SOP = root.1, study = root.2, series = root.3


def index_bytes(srv: servers.Server, schema: servers.PgSchema | None) -> int:
    """Size of dicomd's index: the PostgreSQL schema, or the SQLite file (+ WAL) in the data dir."""
    if schema is not None:
        return schema.size_bytes()
    data = Path(srv.workdir) / "data"
    return sum(p.stat().st_size for p in data.glob("index.db*") if p.is_file())


def _stream_big_instance(
    frames: int,
    rows: int = 512,
    cols: int = 512,
    root: str = "1.2.826.0.1.3680043.8.498.77",
    distinct: bool = False,
) -> tuple[list[bytes], int, str]:
    """A multi-frame 16-bit instance of `frames` frames: header bytes + element header + frame chunks.

    One frame chunk, repeated `frames` times by the caller; with `distinct`, one chunk per frame, frame
    k's first 4 bytes set to k (so a check can tell frames apart).
    """
    import io

    from pydicom.filewriter import dcmwrite
    from pydicom.uid import UID

    from bench.corpus import build_template

    ds = build_template("ct512")
    ds.NumberOfFrames = frames
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(f"{root}.1")
    ds.StudyInstanceUID = f"{root}.2"
    ds.SeriesInstanceUID = f"{root}.3"
    ds.PatientID, ds.PatientName = "BIG2GB", "BIG^INSTANCE"
    frame = ds.PixelData
    del ds.PixelData
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    head = buf.getvalue()
    n = len(frame) * frames
    elem = b"\xe0\x7f\x10\x00OW\x00\x00" + n.to_bytes(4, "little")
    chunks = [k.to_bytes(4, "little") + frame[4:] for k in range(1, frames + 1)] if distinct else [frame]
    return [head, elem, *chunks], len(head) + len(elem) + n, ds.StudyInstanceUID


def bench_memory(srv: servers.Server, gib: float) -> dict[str, Line]:
    """Store then retrieve one ~gib GiB instance; report per-process peak RSS (VmHWM)."""
    import asyncio

    from bench.client import BOUNDARY, HttpConn, HttpError

    frames = max(1, int(gib * (1 << 30) / (512 * 512 * 2)))
    parts, size, study = _stream_big_instance(frames)
    head, elem, frame = parts[:3]
    lines: dict[str, Line] = {}
    rss0 = servers.rss_mb(srv.pids(), "VmRSS")

    def body() -> Any:
        yield b"--" + BOUNDARY + b"\r\nContent-Type: application/dicom\r\n\r\n" + head + elem
        for _ in range(frames):
            yield frame
        yield b"\r\n--" + BOUNDARY + b"--\r\n"

    blen = len(b"--" + BOUNDARY + b"\r\nContent-Type: application/dicom\r\n\r\n") + size
    blen += len(b"\r\n--" + BOUNDARY + b"--\r\n")

    async def go() -> tuple[float, int, float, int]:
        c = HttpConn(srv.host, srv.port)
        t0 = time.perf_counter()
        r = await c.request(
            "POST",
            srv.root + "/studies",
            f"Content-Type: {STOW_CT}\r\nAccept: application/dicom+json\r\n".encode(),
            body(),
            blen,
            keep_body=True,
        )
        t1 = time.perf_counter()
        st1 = r.status
        if st1 >= 300:
            log(f"  ! big STOW -> {st1} {r.body[:300]!r}")
        r2 = await c.request(
            "GET", f"{srv.root}/studies/{study}", f"Accept: {ACCEPT_DICOM}\r\n".encode(), keep_body=False
        )
        t2 = time.perf_counter()
        c.close()
        return t1 - t0, st1, t2 - t1, r2.status if r2.nbytes >= size else -r2.nbytes

    log(f"{srv.name}: memory: {size / 2**30:.2f} GiB instance")
    title = f"Peak RSS per process, STOW + retrieve of one {size / 2**30:.2f} GiB instance"
    try:
        stow_s, st1, get_s, st2 = asyncio.run(go())
    except HttpError as e:
        peak = servers.rss_mb(srv.pids(), "VmHWM")
        worst = max(peak.values()) if peak else float("nan")
        note = f"failed: {e} (peak RSS so far {worst:.0f} MB)"
        log(f"  ! {note}")
        return {"mem_2g": Line(key="mem_2g", title=title, unit="MB", value=float("nan"), errors=1, note=note)}
    peak = servers.rss_mb(srv.pids(), "VmHWM")
    worst = max(peak.values()) if peak else 0.0
    note = f"STOW {st1} in {stow_s:.1f}s, retrieve {st2} in {get_s:.1f}s; RSS before " + ", ".join(
        f"{v:.0f}" for v in rss0.values()
    )
    lines["mem_2g"] = Line(
        key="mem_2g",
        title=title,
        unit="MB",
        value=worst,
        mb_s=2 * size / (stow_s + get_s) / 1e6,
        note=note,
        extra={"per_process_peak_mb": {str(k): round(v) for k, v in peak.items()}},
    )
    log(f"  peak RSS per process {peak} ({note})")
    return lines


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def calibrate_client(pool: Pool, secs: float = 1.0) -> dict[str, float]:
    """The client against a null server: its own ceiling (req/s, CPU us/req, MB/s) in one process."""
    import subprocess

    out: dict[str, float] = {}
    for size, conc, label in ((300, 8, "small"), (10_000_000, 2, "large")):
        port = servers.free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.nullserver", str(port), str(size)], cwd=BENCH.parent
        )
        try:
            for _ in range(50):
                with contextlib.suppress(OSError):
                    socket_ok = __import__("socket").create_connection(("127.0.0.1", port), timeout=0.2)
                    socket_ok.close()
                    break
                time.sleep(0.1)
            job = {
                "host": "127.0.0.1",
                "port": port,
                "root": "",
                "kind": "get",
                "concurrency": conc,
                "paths": ["/studies?PatientID=X&limit=100"],
                "accept": ACCEPT_JSON,
                "duration": secs,
                "keep_body": size < 1_000_000,
            }
            r = pool.run(job, 1)
            out[f"{label}_req_s"] = r["ops"] / r["wall"]
            out[f"{label}_us_req"] = 1e6 * r["cpu"] / max(1, r["ops"])
            out[f"{label}_mb_s"] = r["recv"] / r["wall"] / 1e6
        finally:
            proc.terminate()
            proc.wait()
    return out


def dicomd_ready() -> bool:
    return servers.dicomd_available()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_const", dest="mode", const="quick")
    g.add_argument("--full", action="store_const", dest="mode", const="full")
    g.add_argument("--scale", action="store_const", dest="mode", const="scale")
    g.add_argument("--memory", action="store_const", dest="mode", const="memory")
    g.add_argument("--pixels", action="store_const", dest="mode", const="pixels")
    g.add_argument(
        "--replicas",
        action="store_const",
        dest="mode",
        const="replicas",
        help="scale-out: 1..N dicomd replicas on PostgreSQL + S3 emulator, single-node dicomd, Orthanc",
    )
    ap.add_argument("--replica-counts", default="1,2,3", help="--replicas: replica counts to run")
    ap.add_argument(
        "--replica-storage",
        default="s3",
        choices=["s3", "file"],
        help="--replicas: object store shared by the replicas: moto's S3 server, or a shared directory",
    )
    ap.add_argument(
        "--replica-workers", type=int, default=1, help="--replicas: `dicomd serve --workers` per replica"
    )
    ap.add_argument("--servers", default="dicomd,orthanc", help="comma list (default: both)")
    ap.add_argument("--count", type=int, help="override the main corpus size")
    ap.add_argument("--dur", type=float, help="override seconds per read line")
    ap.add_argument("--client-procs", type=int, help="client processes for read lines")
    ap.add_argument("--workers", type=int, help="dicomd --workers (default: dicomd's default)")
    ap.add_argument("--scale-sizes", default="10000,100000,1000000")
    ap.add_argument(
        "--scale-size",
        default="tiny",
        choices=["tiny", "ct128", "ct512"],
        help="instance size for the scale corpus (same header; tiny keeps 1M at ~5 GB)",
    )
    ap.add_argument(
        "--scale-orthanc", action="store_true", help="also run Orthanc in --scale (first size only)"
    )
    ap.add_argument("--scale-load", default="stow", choices=["stow", "import"])
    ap.add_argument(
        "--scale-per-study",
        type=int,
        default=100,
        help="instances per study in the scale corpus (10: 1M instances in 100k studies)",
    )
    ap.add_argument(
        "--scale-index",
        default="sqlite",
        help="comma list of dicomd index backends for --scale, each a dicomd run: sqlite,postgresql",
    )
    ap.add_argument(
        "--pg-url",
        default=os.environ.get("DICOMD_BENCH_POSTGRES_URL", servers.PG_DEFAULT_URL),
        help="PostgreSQL server for --scale-index postgresql (a fresh schema per run; env "
        f"DICOMD_BENCH_POSTGRES_URL; default {servers.PG_DEFAULT_URL})",
    )
    ap.add_argument("--memory-gib", type=float, default=2.0)
    ap.add_argument("--no-memory", action="store_true", help="skip the 2 GiB instance in --full")
    ap.add_argument("--workdir", default=None, help="where server data dirs go (default: bench/work)")
    ap.add_argument("--keep", action="store_true", help="keep server data dirs")
    ap.add_argument(
        "--settle",
        type=float,
        default=servers.SETTLE_SECONDS,
        help="seconds to wait, after a sync, before the first server starts (default 65: see "
        "SETTLE_SECONDS in bench/servers.py)",
    )
    ap.add_argument("--render", metavar="JSON", help="only re-render the .md of a results .json")
    a = ap.parse_args(argv)
    if a.render:
        print(rerender(Path(a.render)))
        return 0
    mode = a.mode or "quick"
    workdir = a.workdir or str(BENCH / "work")
    os.makedirs(workdir, exist_ok=True)

    wanted = [s.strip() for s in a.servers.split(",") if s.strip()]
    notes: list[str] = []
    if "dicomd" in wanted and not dicomd_ready():
        notes.append(f"dicomd not run: {servers.DICOMD_BIN} does not exist yet")
        wanted.remove("dicomd")
        log(notes[-1])
    if mode == "scale" and "orthanc" in wanted and not a.scale_orthanc:
        wanted.remove("orthanc")
    backends = [x.strip() for x in a.scale_index.split(",") if x.strip()] if mode == "scale" else ["sqlite"]
    if not backends or any(x not in ("sqlite", "postgresql") for x in backends):
        ap.error(f"--scale-index takes sqlite and/or postgresql, not {a.scale_index!r}")
    # (label in the report, server, dicomd index backend); dicomd on SQLite keeps the plain label
    runs = [
        (name if b == "sqlite" else f"{name}-pg", name, b)
        for name in wanted
        for b in (backends if name == "dicomd" else ["sqlite"])
    ]
    if not runs:
        log("nothing to run")
        return 1

    if a.settle > 0:
        log(f"letting the file system settle for {a.settle:.0f} s (--settle)")
        servers.settle(a.settle)
    log("measuring machine ceilings (loopback; fsync after the servers)")
    meta: dict[str, Any] = {
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": sysinfo.machine(workdir),
        "loopback_mb_s": sysinfo.loopback_mb_s(),
        "versions": {},
        "notes": notes,
    }
    cfg = MODES.get(mode, MODES["quick"])
    if a.count:
        cfg.count = a.count
    if a.dur:
        cfg.dur = a.dur
    if a.client_procs:
        cfg.client_procs = a.client_procs
    meta["client"] = (
        f"bench.client (raw HTTP/1.1 on asyncio+uvloop), separate process(es); read lines "
        f"{cfg.client_procs} process(es) x {cfg.read_conc} conn; Accept-Encoding: identity"
    )
    pool = Pool(max(2, cfg.client_procs))
    log("calibrating the client against a null server")
    cal = calibrate_client(pool)
    meta["client_ceiling"] = cal
    log(f"  client ceiling: {cal}")
    if mode == "replicas":
        return replicas_main(a, pool, workdir, wanted, meta)
    results: dict[str, dict[str, Line]] = {}
    infos: dict[str, dict[str, Any]] = {}
    stopped: list[servers.Server] = []
    schemas: list[servers.PgSchema] = []
    try:
        for label, name, backend in runs:
            # write back what the previous server (or the corpus) left dirty, so that this server's first
            # flushes do not pay for it (a sync at commit flushes the whole file system)
            os.sync()
            log(f"starting {label}")
            schema: servers.PgSchema | None = None
            try:
                if name == "dicomd" and backend == "postgresql":
                    schema = servers.PgSchema(a.pg_url)
                    schemas.append(schema)
                    srv = servers.start_dicomd(workdir, a.workers, index_url=schema.url)
                    srv.helper_pids = schema.backend_pids
                elif name == "dicomd":
                    srv = servers.start_dicomd(workdir, a.workers)
                else:
                    srv = servers.start_orthanc(workdir)
            except Exception as e:  # a server that does not start is reported, not fatal
                first = str(e).strip().splitlines()
                notes.append(
                    f"{label} not run: did not start "
                    f"({first[0] if first else e}; {first[-1] if first else ''})"
                )
                log(notes[-1])
                continue
            srv.keep = a.keep
            meta["versions"][label] = srv.version
            if mode == "scale" and name == "dicomd":
                meta["versions"][label] += (
                    f"; index PostgreSQL {schema.server_version} ({schema.shown})"
                    if schema
                    else "; index SQLite (index.db in the data dir)"
                )
            try:
                if mode in ("quick", "full"):
                    results[label], infos[label] = bench_server(srv, pool, cfg)
                elif mode == "scale":
                    sizes = [int(x) for x in a.scale_sizes.split(",")]
                    if name == "orthanc":
                        sizes = sizes[:1]
                    infos[label] = {"index": backend} if name == "dicomd" else {}
                    results[label] = bench_scale(
                        srv,
                        pool,
                        sizes,
                        a.scale_size,
                        a.dur or 3.0,
                        a.scale_load,
                        infos[label],
                        per_study=a.scale_per_study,
                    )
                    if name == "dicomd":
                        infos[label]["index_bytes"] = index_bytes(srv, schema)
                elif mode == "memory":
                    results[label] = bench_memory(srv, a.memory_gib)
                elif mode == "pixels":
                    from bench.pixels import bench_pixels

                    results[label], infos[label] = bench_pixels(srv, pool, cfg)
                if mode == "full" and not a.no_memory:  # on a fresh server: VmHWM is a lifetime peak
                    # its data dir goes after the report, like the others: on ext4 without a journal,
                    # creating files costs up to twice the CPU for ~30 s after a mass delete
                    # (recently_deleted() in the inode allocator), which would tax the next server's STOW
                    srv.stop(cleanup=False)
                    stopped.append(srv)
                    srv = (
                        servers.start_dicomd(workdir, a.workers)
                        if name == "dicomd"
                        else servers.start_orthanc(workdir)
                    )
                    srv.keep = a.keep
                    try:
                        results[label].update(bench_memory(srv, a.memory_gib))
                    except Exception as e:  # reported, the rest of the run stands
                        notes.append(f"{label}: memory line failed: {type(e).__name__}: {e}")
                        log(notes[-1])
                if srv.proc and srv.proc.poll() is not None:
                    notes.append(f"{label} exited during the run (code {srv.proc.returncode})")
            finally:
                # data dirs go after the report (1M files take minutes), except a scale run's when
                # another run follows (two 1M data dirs would need ~50 GB)
                srv.stop(cleanup=mode == "scale" and (label, name, backend) != runs[-1])
                stopped.append(srv)
        # last: the probe creates and deletes thousands of files, and on ext4 without a journal new files
        # cost more CPU for ~30 s after a mass delete (see README), which would tax the first STOW lines
        meta["fsync_per_s"] = sysinfo.fsync_rate(workdir)
        text = render(mode, results, infos, meta)
        path = write_report(mode, text, raw_results(results, infos, meta))
        print(text)
        log(f"written {path}")
    finally:
        pool.close()
        for srv in stopped:
            srv.stop()
        for sc in schemas:
            if a.keep:
                log(f"kept PostgreSQL schema {sc.schema} (--keep)")
            else:
                with contextlib.suppress(Exception):
                    sc.drop()
    return 0


def replicas_main(
    a: argparse.Namespace, pool: Pool, workdir: str, wanted: list[str], meta: dict[str, Any]
) -> int:
    """--replicas: see bench/replicas.py."""
    from bench import replicas

    rc = replicas.ReplicaConfig(
        counts=[int(x) for x in a.replica_counts.split(",") if x.strip()],
        storage=a.replica_storage,
        workers=a.replica_workers,
        pg_url=a.pg_url,
    )
    if a.count:
        rc.corpus = a.count
        rc.stow_max = min(rc.stow_max, a.count)
    if a.dur:
        rc.dur = a.dur
    meta["client"] = (
        "bench.client (raw HTTP/1.1 on asyncio+uvloop), 1 separate process; connections spread "
        "round-robin over the replicas' ports (client-side balancing, no proxy); Accept-Encoding: identity"
    )
    try:
        results, infos = replicas.run_replicas(rc, pool, workdir, wanted, meta, a.keep)
        if not results:
            log("nothing ran")
            return 1
        meta["fsync_per_s"] = sysinfo.fsync_rate(workdir)
        text = render("replicas", results, infos, meta)
        path = write_report("replicas", text, raw_results(results, infos, meta))
        print(text)
        log(f"written {path}")
    finally:
        pool.close()
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
