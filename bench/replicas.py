"""The scale-out run (``python -m bench.run --replicas``): 1, 2, 3 ``dicomd serve`` replicas on one
PostgreSQL schema and one object store (moto's S3 emulator, or a shared directory), next to the single-node
dicomd (SQLite + local files) and Orthanc, over the same three lines:

  STOW ct128, batch 10, 8 conn (inst/s) | QIDO studies by PatientID, 8 conn (req/s, p99) |
  study retrieve ct128, 6 conn (MB/s)

The client spreads its connections round-robin over the replicas' ports (client-side balancing, no proxy).
Each setup starts empty: a fresh schema, a fresh emulator (or directory), fresh replicas; all dropped after.
CPU is counted per part (dicomd processes, their PostgreSQL backends, the emulator, the client) since they
all share this machine's cores: the report's "bound (guess)" and its per-core figures come from that.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from bench import servers
from bench.client import ACCEPT_DICOM, ACCEPT_JSON, Pool
from bench.corpus import Corpus, CorpusSpec, template
from bench.report import Line
from bench.run import Bench, Config, http_json, log, qido_paths

STOW_BATCH, STOW_CONC = 10, 8
QIDO_CONC = 8  # as in the other modes
RETRIEVE_CONC = 6  # divisible by 1, 2 and 3: every replica gets the same number of connections


@dataclass
class ReplicaConfig:
    counts: list[int]  # replica counts, e.g. [1, 2, 3]
    storage: str  # "s3" (moto) or "file" (a shared directory)
    workers: int  # `dicomd serve --workers` per replica
    pg_url: str
    corpus: int = 4000  # ct128 instances per setup: the STOW line's, then a load to this many
    stow_max: int = 3000  # instances the STOW line stores at most
    stow_secs: float = 10.0  # ... or for this long
    dur: float = 5.0  # seconds per read line
    load_secs: float = 40.0  # the load after the STOW line stops here (a slow store): reads use what is in


class PartsBench(Bench):
    """`Bench` with the CPU split by part: dicomd (or Orthanc), PostgreSQL backends, S3 emulator."""

    def __init__(
        self,
        srv: servers.Server | servers.ReplicaGroup,
        pool: Pool,
        cfg: Config,
        emulator: servers.S3Emulator | None = None,
    ) -> None:
        super().__init__(srv, pool, cfg)  # type: ignore[arg-type]
        self.group = srv if isinstance(srv, servers.ReplicaGroup) else None
        self.emulator = emulator
        if self.group is not None:
            self.base["targets"] = self.group.targets

    def parts(self) -> dict[str, list[int]]:
        if self.group is None:
            return {"server": self.srv.pids()}
        out = {
            f"replica{i + 1}": servers.descendants(r.proc.pid)
            for i, r in enumerate(self.group.replicas)
            if r.proc
        }
        out["postgresql"] = self.group.helper_pids() if self.group.helper_pids else []
        if self.emulator is not None:
            out["s3"] = self.emulator.pids()
        return out

    def run(self, job: dict[str, Any], procs: int = 1) -> tuple[dict[str, Any], float]:
        parts = self.parts()
        s3_before = self.emulator.request_counts() if self.emulator else {}
        c0 = {k: servers.cpu_seconds(v) for k, v in parts.items()}
        res = self.pool.run({**self.base, **job}, procs)
        c1 = {k: servers.cpu_seconds(v) for k, v in parts.items()}
        if self.emulator is not None:
            # the job's requests as logged by the emulator: a guide to S3 requests per operation
            s3_after = self.emulator.request_counts()
            res["s3_requests"] = {k: v - s3_before.get(k, 0) for k, v in s3_after.items()}
        wall = max(res["wall"], 1e-9)
        pct = {k: 100 * (c1[k] - c0[k]) / wall for k in parts}
        by_replica = [round(v) for k, v in pct.items() if k.startswith("replica")]
        cpu = {
            "dicomd": sum(v for k, v in pct.items() if k.startswith("replica") or k == "server"),
            "postgresql": pct.get("postgresql", 0.0),
            "s3": pct.get("s3", 0.0),
        }
        res["cpu_parts"] = {k: round(v) for k, v in cpu.items()}
        if len(by_replica) > 1:
            res["cpu_by_replica"] = by_replica
        # the server's cost is dicomd + its PostgreSQL backends (as in the scale run); the emulator apart
        return res, cpu["dicomd"] + cpu["postgresql"]

    def add(
        self, key: str, title: str, res: dict[str, Any], srv_cpu: float, unit: str = "req/s", note: str = ""
    ) -> Line:
        line = super().add(key, title, res, srv_cpu, unit, note)
        line.extra["cpu_parts"] = res["cpu_parts"]
        if "cpu_by_replica" in res:
            line.extra["cpu_by_replica"] = res["cpu_by_replica"]
        if res.get("s3_requests") and res["ops"]:
            line.extra["s3_requests_per_op"] = {
                k: round(v / res["ops"], 1) for k, v in sorted(res["s3_requests"].items()) if v
            }
        line.extra.pop("srv_cpu_by_pid", None)
        return line


def bench_setup(
    srv: servers.Server | servers.ReplicaGroup,
    pool: Pool,
    rc: ReplicaConfig,
    emulator: servers.S3Emulator | None = None,
    s3_prefix: str = "",
) -> tuple[dict[str, Line], dict[str, Any]]:
    """The three lines on one setup (a server or a replica group), starting empty."""
    cfg = Config(
        mode="replicas",
        count=rc.corpus,
        large=0,
        big_study=False,
        matrix=[],
        cell_max=rc.stow_max,
        cell_secs=rc.stow_secs,
        dur=rc.dur,
    )
    b = PartsBench(srv, pool, cfg, emulator)
    name = getattr(srv, "name", "?")
    spec = CorpusSpec(name="main", size="ct128", count=rc.corpus)
    corpus = Corpus(spec)
    info: dict[str, Any] = {}
    inst_kb = len(template("ct128").data) / 1e3

    log(f"{name}: STOW batch {STOW_BATCH}, {STOW_CONC} conn")
    stop = min(rc.stow_max, rc.corpus)
    cursor = b.stow(
        f"stow_b{STOW_BATCH}_c{STOW_CONC}",
        f"STOW ct128 ({inst_kb:.0f} KB), batch {STOW_BATCH}, {STOW_CONC} conn",
        spec,
        0,
        stop,
        STOW_BATCH,
        STOW_CONC,
        rc.stow_secs,
    )
    if cursor < rc.corpus:
        log(f"{name}: loading instances {cursor}..{rc.corpus} (at most {rc.load_secs:.0f} s)")
        t0 = time.perf_counter()
        job = {"kind": "stow", "concurrency": 4, "corpus": spec.as_dict(), "start": cursor, "stop": rc.corpus}
        res, _ = b.run({**job, "batch": 50, "duration": rc.load_secs})
        info["load_inst_s"] = round(res["instances"] / max(1e-9, time.perf_counter() - t0))
        cursor = int(res["cursor"])
        if res["errors"]:
            info["load_errors"] = res["errors"]
    info["instances"] = cursor  # the reads below use the studies and patients stored by now
    if emulator is not None:
        # a store that ignored --storage-url would write local files: the bucket must hold the objects
        info["s3_objects_seen"] = emulator.object_count(s3_prefix)
        if not info["s3_objects_seen"]:
            info["warning"] = "no objects in the S3 bucket: the replicas did not store into S3"
            log(f"  ! {name}: {info['warning']}")

    qp = qido_paths(corpus, 200, upto=cursor)["pid"]
    rows = [len(http_json(srv.base + p)) for p in qp[:20]]
    info["qido_rows"] = round(sum(rows) / len(rows), 2)
    log(f"{name}: QIDO by PatientID ({info['qido_rows']} studies per query)")
    b.get("qido_pid", "QIDO studies by PatientID", qp, ACCEPT_JSON, QIDO_CONC, rc.dur, True)

    log(f"{name}: study retrieve")
    studies = [f"/studies/{corpus.study(s).uid}" for s in range(max(1, cursor // spec.per_study))]
    line = b.get(
        "wado_study",
        f"Study retrieve ct128 ({spec.per_study} inst, {spec.per_study * inst_kb / 1e3:.1f} MB), "
        f"{RETRIEVE_CONC} conn",
        studies,
        ACCEPT_DICOM,
        RETRIEVE_CONC,
        rc.dur,
    )
    line.unit, line.value = "MB/s", line.mb_s or 0.0
    return b.lines, info


def start_group(
    label: str,
    n: int,
    rc: ReplicaConfig,
    workdir: str,
    schema: servers.PgSchema,
    storage: list[str],
    env: dict[str, str],
) -> servers.ReplicaGroup:
    """N replicas, started one after the other (the first one migrates the schema)."""
    group = servers.ReplicaGroup(label, [], helper_pids=schema.backend_pids)
    try:
        for _ in range(n):
            srv = servers.start_dicomd(workdir, rc.workers, extra=storage, index_url=schema.url, env=env)
            group.replicas.append(srv)
    except Exception:
        group.stop()
        raise
    return group


def run_replicas(
    rc: ReplicaConfig, pool: Pool, workdir: str, wanted: list[str], meta: dict[str, Any], keep: bool
) -> tuple[dict[str, dict[str, Line]], dict[str, dict[str, Any]]]:
    """Orthanc, single-node dicomd, then each replica count; a setup that fails is a note, not fatal."""
    results: dict[str, dict[str, Line]] = {}
    infos: dict[str, dict[str, Any]] = {}
    notes: list[str] = meta["notes"]
    setups: list[tuple[str, int]] = [(name, 0) for name in ("orthanc", "dicomd") if name in wanted]
    if "dicomd" in wanted:
        setups += [(f"dicomd-pg-{rc.storage} x{n}", n) for n in rc.counts]
    # data dirs go at the end: on ext4 without a journal, creating files costs more CPU for ~30 s after a
    # mass delete (see README), which would tax the next setup's STOW
    leftovers: list[servers.Server | servers.ReplicaGroup | str] = []
    for label, n in setups:
        os.sync()  # what the previous setup left dirty must not be flushed by this one's first syncs
        log(f"starting {label}")
        schema: servers.PgSchema | None = None
        emulator: servers.S3Emulator | None = None
        shared = prefix = ""
        srv: servers.Server | servers.ReplicaGroup | None = None
        try:
            if label == "orthanc":
                srv = servers.start_orthanc(workdir)
                infos[label] = {"setup": "1 process, SQLite index + local files (its default)"}
            elif label == "dicomd":
                srv = servers.start_dicomd(workdir)
                infos[label] = {
                    "setup": "1 dicomd serve (default workers: one per core), SQLite index + local files",
                    "workers": os.cpu_count() or 1,
                }
            else:
                schema = servers.PgSchema(rc.pg_url)
                env: dict[str, str] = {}
                prefix = f"{label.replace(' ', '-')}-{int(time.time())}"
                if rc.storage == "s3":
                    emulator = servers.S3Emulator(workdir)
                    storage = emulator.storage_args(prefix)
                    env = dict(servers.S3Emulator.ACCESS)
                    meta["versions"]["s3 emulator"] = emulator.version
                else:
                    shared = tempfile.mkdtemp(prefix="shared-objects-", dir=workdir)
                    storage = ["--storage-path", shared]
                srv = start_group(label, n, rc, workdir, schema, storage, env)
                infos[label] = {
                    "setup": f"{n} replica(s) x {rc.workers} worker(s), PostgreSQL index, "
                    + ("S3 (moto) objects" if rc.storage == "s3" else "shared directory objects"),
                    "replicas": n,
                    "workers_per_replica": rc.workers,
                    "workers": n * rc.workers,
                }
                meta["versions"][label] = (
                    f"{srv.replicas[0].version}; index PostgreSQL {schema.server_version} ({schema.shown})"
                )
            if label in ("orthanc", "dicomd"):
                assert isinstance(srv, servers.Server)
                meta["versions"][label] = srv.version
            srv.keep = keep
            results[label], more = bench_setup(srv, pool, rc, emulator, s3_prefix=prefix if emulator else "")
            infos[label].update(more)
            exited = srv.exited() if isinstance(srv, servers.ReplicaGroup) else []
            if isinstance(srv, servers.Server) and srv.proc and srv.proc.poll() is not None:
                exited = [srv.proc.returncode]
            if exited:
                notes.append(f"{label}: server process(es) exited during the run (codes {exited})")
        except Exception as e:  # reported; the other setups still run
            first = str(e).strip().splitlines()
            notes.append(f"{label} not run: {type(e).__name__}: {first[0] if first else ''}"[:400])
            log(notes[-1])
        finally:
            if srv is not None:
                srv.stop(cleanup=False)
                leftovers.append(srv)
            if emulator is not None:
                emulator.stop()
            if shared:
                leftovers.append(shared)
            if schema is not None:
                if keep:
                    log(f"kept PostgreSQL schema {schema.schema} (--keep)")
                else:
                    with contextlib.suppress(Exception):
                        schema.drop()
    for item in leftovers:
        if isinstance(item, str):
            if not keep:
                shutil.rmtree(item, ignore_errors=True)
        else:
            item.stop()  # already stopped: removes its data dir(s) unless kept
    return results, infos
