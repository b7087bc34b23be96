"""How long a store's acknowledgement waits for the disk, by the design of its flush (issue 15).

The same kind of group commit (ct128 instances: a staged DICOM file and a metadata file each, one index
transaction, the files renamed into place) runs three ways, in process, on this machine's disk, with
dicomd's own object store and index:

  shared    dicomd's path where SQLite shares the objects' file system (ingest/shared_flush.py): the
            index commits without its own flush, one syncfs covers the new files and the WAL
  journal   an overwrite-only path dicomd does not have: each instance's bytes go into a preallocated
            ring file (blocks already written: an overwrite, no new block or inode to flush), an
            fdatasync of it, the index commits with its own WAL flush; the files are written unflushed,
            a syncfs every 256 instances makes them durable (after it the ring could be reused; after a
            crash the ring would be replayed). Its amortized syncfs counts in its figures
  none      no flush at all, as Orthanc runs: the floor

Modes alternate in short rounds (the order rotating) so that a host whose speed moves within minutes
moves them alike; before each mode's turn everything is synced (untimed), so that no mode's syncfs writes
back what another left dirty. Reports, per mode, the wall time of a commit (staging to published) and the
CPU per instance of this process (the kernel's write-back threads not included). All three stage through
the same store, which notes a CRC-32 per file (~7 us per 39 KB) for the shared path's recovery; `none`
also records its unsynced rows, as `shared` does; `journal`'s flushed commit takes a pooled connection, as
dicomd's flushed commits do.

  .venv/bin/python -m bench.ack_paths --batch 1 --commits 1200
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import servers
from bench.corpus import Corpus, CorpusSpec
from dicomd.index.store import Index, PreparedInstance
from dicomd.ingest.committer import commit_batch
from dicomd.ingest.prepare import PrepareJob, prepare_staged
from dicomd.ingest.shared_flush import SharedFlush
from dicomd.storage.base import METADATA
from dicomd.storage.local import LocalObjectStore, LocalStager

MODES = ("shared", "journal", "none")
RING_BYTES = 64 << 20
JOURNAL_SYNC_EVERY = 256  # instances between the journal path's syncfs of the files
WARMUP = 300  # instances per mode first, not measured: the index's first pages, the caches


@dataclass(frozen=True, slots=True)
class Ready:
    """One instance to store: its bytes, its metadata object and its index rows (prepared beforehand)."""

    key: str
    data: bytes
    metadata: bytes
    prepared: PreparedInstance


@dataclass
class Result:
    mode: str
    waits: list[float] = field(default_factory=list)  # seconds per commit
    cpu: float = 0.0  # seconds of this process's CPU
    instances: int = 0

    def row(self) -> str:
        waits = sorted(self.waits)
        return (
            f"| {self.mode} | {statistics.median(waits) * 1e3:.2f} | {statistics.mean(waits) * 1e3:.2f} | "
            f"{waits[int(len(waits) * 0.99)] * 1e3:.2f} | {self.cpu / self.instances * 1e6:,.0f} |"
        )


class DataDir:
    """One mode's data dir: its object store, index and (journal) ring."""

    def __init__(self, mode: str, root: Path) -> None:
        self.mode = mode
        root.mkdir(parents=True)
        self.store = LocalObjectStore(root / "objects-root")
        for fan_out in range(16**3):  # all there in a running archive: a new one costs ~150 us
            (self.store.objects / f"{fan_out:03x}").mkdir(mode=0o700, exist_ok=True)
        self.index = Index(f"sqlite:///{root / 'index.db'}")
        self.index.migrate()
        self.shared = SharedFlush.where_possible(self.index, self.store, overwrite=False)
        if self.shared is None:
            raise RuntimeError("this file system has no syncfs: the shared path cannot run here")
        self.ring = -1
        self.offset = 0
        self.unsynced = 0
        if mode == "journal":
            ring = root / "ring"
            with open(ring, "wb") as f:  # written, not fallocated: an overwrite then allocates nothing
                for _ in range(RING_BYTES >> 20):
                    f.write(bytes(1 << 20))
                f.flush()
                os.fsync(f.fileno())
            self.ring = os.open(ring, os.O_WRONLY | os.O_CLOEXEC)

    def commit(self, batch: Sequence[Ready]) -> None:
        store = self.store
        for item in batch:
            store.stage_bytes(item.key, [item.data])
            store.stage_metadata(item.key, item.metadata)
        items = [item.prepared for item in batch]
        keys = [item.key for item in batch]
        if self.mode == "shared":
            commit_batch(self.index, store, items, overwrite=False, shared_flush=self.shared)
            return
        if self.mode == "journal":
            for item in batch:
                record = item.data + item.metadata
                if self.offset + len(record) > RING_BYTES:
                    self.offset = 0
                os.pwrite(self.ring, record, self.offset)
                self.offset += len(record)
            os.fdatasync(self.ring)
            self.index.add_instances(items, overwrite=False)  # flushed: SQLite's own WAL fsync
        else:
            assert self.shared is not None
            self.index.add_instances(items, overwrite=False, unsynced=self.shared.batch(keys))
        store.publish(keys)
        if self.mode == "journal":
            self.unsynced += len(batch)
            if self.unsynced >= JOURNAL_SYNC_EVERY:
                store.sync([])  # the files of the last 256 instances: the ring's space is free again
                self.unsynced = 0

    def close(self) -> None:
        if self.ring >= 0:
            os.close(self.ring)
        self.store.close()
        self.index.close()


def prepare(corpus: Corpus, start: int, count: int, scratch: str) -> list[Ready]:
    """Instances ``start``.. of the corpus with their index rows (parsed here, outside the timing)."""
    stager = LocalStager(scratch)
    ready = []
    for i in range(start, start + count):
        data = corpus.instance(i)
        key = os.urandom(16).hex()
        outcome, prepared = prepare_staged(PrepareJob(key, None, 2, 1, 10_000, data), stager)
        if prepared is None:
            raise RuntimeError(f"corpus instance {i}: {outcome.messages}")
        metadata = Path(stager.staged_file(key, METADATA)).read_bytes()
        os.unlink(stager.staged_file(key, METADATA))
        ready.append(Ready(key, data, metadata, prepared))
    return ready


def run(
    workroot: Path, *, batch: int, commits: int, rounds: int, modes: Sequence[str] = MODES, settle: float = 0
) -> list[Result]:
    per_round = commits // rounds
    if per_round < 1:
        raise ValueError("fewer commits than rounds")
    per_mode = WARMUP + per_round * rounds * batch
    corpus = Corpus(CorpusSpec(size="ct128", count=per_mode * len(modes)))
    root = Path(tempfile.mkdtemp(prefix="ack-", dir=workroot))
    paths: list[DataDir] = []
    try:
        scratch = root / "prepare"
        scratch.mkdir()
        queues = {mode: prepare(corpus, n * per_mode, per_mode, str(scratch)) for n, mode in enumerate(modes)}
        paths = [DataDir(mode, root / mode) for mode in modes]
        for path in paths:
            warm, queues[path.mode] = queues[path.mode][:WARMUP], queues[path.mode][WARMUP:]
            for start in range(0, WARMUP, 50):
                path.commit(warm[start : start + 50])
            path.store.sync([])
        servers.settle(settle)
        results = {mode: Result(mode) for mode in modes}
        for round_ in range(rounds):
            turn = round_ % len(paths)
            # this round's instances of each mode, cut beforehand: no list copying in the measured CPU
            first = round_ * per_round * batch
            chunks = {
                mode: [
                    queue[start : start + batch] for start in range(first, first + per_round * batch, batch)
                ]
                for mode, queue in queues.items()
            }
            for path in paths[turn:] + paths[:turn]:  # each mode first as often
                os.sync()  # what the previous turn left dirty is not this one's to write back
                result = results[path.mode]
                before = resource.getrusage(resource.RUSAGE_SELF)
                for chunk in chunks[path.mode]:
                    started = time.perf_counter()
                    path.commit(chunk)
                    result.waits.append(time.perf_counter() - started)
                    result.instances += len(chunk)
                after = resource.getrusage(resource.RUSAGE_SELF)
                result.cpu += after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        return [results[mode] for mode in modes]
    finally:
        for path in paths:
            path.close()
        shutil.rmtree(root, ignore_errors=True)


def render(results: Sequence[Result], batch: int, rounds: int) -> str:
    lines = [
        f"Acknowledgement paths, batch {batch} (ct128: 39 KB DICOM + its metadata object), "
        f"{results[0].instances:,} instances per mode in {rounds} alternating rounds",
        "",
        "| path | commit ms p50 | mean | p99 | CPU us/inst (this process) |",
        "|---|---:|---:|---:|---:|",
        *(r.row() for r in results),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ack_paths", description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=1, help="instances per commit (default 1)")
    ap.add_argument(
        "--commits",
        type=int,
        default=1200,
        help="measured commits per mode, rounded down to a multiple of --rounds (default 1200)",
    )
    ap.add_argument("--rounds", type=int, default=6, help="alternating rounds (default 6)")
    ap.add_argument("--workdir", default=str(servers.REPO / "bench" / "work"), help="on the disk to measure")
    ap.add_argument(
        "--settle", type=float, default=servers.SETTLE_SECONDS, help="seconds after a sync before measuring"
    )
    args = ap.parse_args(argv)
    if args.batch < 1 or args.rounds < 1:
        ap.error("--batch and --rounds must be at least 1")
    workroot = Path(args.workdir)
    workroot.mkdir(parents=True, exist_ok=True)
    results = run(workroot, batch=args.batch, commits=args.commits, rounds=args.rounds, settle=args.settle)
    print(render(results, args.batch, args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
