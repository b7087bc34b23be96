"""A/B of two dicomd versions on a machine whose speed moves: both servers run at once and each STOW line
runs as short bursts, alternately against one and then the other, so that a host that speeds up or slows
down within minutes (by up to 2x here) moves both sides alike. The report gives, per line, each side's
median rate and the median of the pairwise ratios B/A (one pair per round).

  .venv/bin/python -m bench.ab --base HEAD~1          # A: HEAD~1 (a temporary git worktree), B: this checkout
  .venv/bin/python -m bench.ab --env-b DICOMD_X=1     # A and B: this checkout, B with an environment variable

A version from ``--base`` runs from a worktree under the work dir, its C fast path built there, put first on
the servers' PYTHONPATH (the editable install adds this checkout's src after it). Each server keeps its data
dir until the end: deleting files slows the next file creates on ext4 (see SETTLE_SECONDS in servers.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sysconfig
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import servers
from bench.client import Pool
from bench.corpus import CorpusSpec
from bench.run import MODES, Bench

DEFAULT_LINES = "1x1,10x1,10x4,1x16"


@dataclass
class Side:
    name: str
    bench: Bench  # measures a line on one server as the main runner does
    cursor: int = 0  # the next corpus instance this server has not stored


@dataclass(frozen=True)
class LineResult:
    batch: int
    connections: int
    a: list[float]
    b: list[float]
    a_cpu_us: list[float]
    b_cpu_us: list[float]

    @property
    def ratios(self) -> list[float]:
        """B/A per round: the two bursts of a round ran within seconds of each other."""
        return [b / a for a, b in zip(self.a, self.b, strict=True) if a > 0]


def parse_lines(text: str) -> list[tuple[int, int]]:
    """ "10x4,1x16" -> [(10, 4), (1, 16)]: instances per request x connections."""
    lines = []
    for item in text.split(","):
        batch, _, connections = item.strip().partition("x")
        if not batch.isdigit() or not connections.isdigit() or int(batch) < 1 or int(connections) < 1:
            raise ValueError(f"a line is <instances per request>x<connections>, e.g. 10x4: {item!r}")
        lines.append((int(batch), int(connections)))
    return lines


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"an environment variable is NAME=VALUE: {pair!r}")
        env[name] = value
    return env


def render(results: list[LineResult], a_label: str, b_label: str, rounds: int, count: int) -> str:
    out = [
        f"A/B, {rounds} rounds of {count:,} ct128 instances per line and server, both servers up at once "
        f"(A: {a_label}; B: {b_label})",
        "",
        "| line | A inst/s (median) | B inst/s (median) | B/A per round: median (min-max) "
        "| server CPU us/inst A / B |",
        "|---|---:|---:|---|---:|",
    ]
    for r in results:
        ratios = r.ratios
        spread = f"{statistics.median(ratios):.3f} ({min(ratios):.2f}-{max(ratios):.2f})" if ratios else "-"
        out.append(
            f"| batch {r.batch}, {r.connections} conn | {statistics.median(r.a):,.1f} | "
            f"{statistics.median(r.b):,.1f} | {spread} | "
            f"{statistics.median(r.a_cpu_us):,.0f} / {statistics.median(r.b_cpu_us):,.0f} |"
        )
    return "\n".join(out)


def worktree(rev: str, root: Path) -> Path:
    """A detached worktree of ``rev`` under ``root`` with its C fast path built; returns its src dir."""
    path = Path(tempfile.mkdtemp(prefix="ab-", dir=root)) / "tree"
    try:
        subprocess.run(
            ["git", "-C", str(servers.REPO), "worktree", "add", "--detach", "-q", str(path), rev], check=True
        )
        build_fast_path(path)
    except BaseException:
        remove_worktree(path / "src")
        raise
    return path / "src"


def build_fast_path(tree: Path, *, reuse: bool = True) -> None:
    """Build the parser's C fast path in a checkout (without it a server runs the pure Python parser, a
    different program to measure): this checkout's build when the source is the same, else compiled with
    the flags the package build uses (the venv's own setuptools may be too old for pyproject.toml)."""
    source = tree / "src" / "dicomd" / "dicom" / "_fastscan.c"
    if not source.exists():
        return  # a revision from before the fast path
    name = "_fastscan" + str(sysconfig.get_config_var("EXT_SUFFIX"))
    here = servers.REPO / "src" / "dicomd" / "dicom"
    if reuse and (here / name).exists() and (here / "_fastscan.c").read_bytes() == source.read_bytes():
        shutil.copy2(here / name, source.with_name(name))
        return
    # compiled and linked in one step, as setuptools does in two: LDSHARED, CFLAGS, CCSHARED
    flags = " ".join(str(sysconfig.get_config_var(var) or "") for var in ("LDSHARED", "CFLAGS", "CCSHARED"))
    include = f"-I{sysconfig.get_paths()['include']}"
    subprocess.run([*flags.split(), include, str(source), "-o", str(source.with_name(name))], check=True)


def remove_worktree(src: Path) -> None:
    tree = src.parent
    subprocess.run(["git", "-C", str(servers.REPO), "worktree", "remove", "--force", str(tree)], check=False)
    shutil.rmtree(tree.parent, ignore_errors=True)
    subprocess.run(["git", "-C", str(servers.REPO), "worktree", "prune"], check=False)


def _burst(side: Side, batch: int, connections: int, count: int, spec: CorpusSpec) -> tuple[float, float]:
    """One burst of a STOW line into one server: its instances/s and the server's CPU us per instance."""
    key = f"{side.name}: batch {batch} x {connections}"
    start, side.cursor = side.cursor, side.cursor + count
    side.bench.stow(key, key, spec, start, side.cursor, batch, connections, procs=min(connections, 2))
    line = side.bench.lines[key]
    if line.errors:
        raise RuntimeError(f"{side.name}: {line.errors} failed requests: {line.extra.get('err_sample')}")
    return line.value, line.srv_cpu / 100 / line.value * 1e6  # srv_cpu: % of one core


def run(
    lines: list[tuple[int, int]],
    *,
    count: int,
    rounds: int,
    a_src: Path | None,
    env_a: dict[str, str],
    env_b: dict[str, str],
    workroot: Path,
    settle: float,
    warmup: int = 0,
) -> list[LineResult]:
    spec = CorpusSpec(size="ct128", count=warmup + count * rounds * len(lines))
    pool = Pool(2)
    started: list[servers.Server] = []
    try:
        servers.settle(settle)
        a_env = dict(env_a)
        if a_src is not None:
            a_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(a_src), os.environ.get("PYTHONPATH")]))
        started.append(servers.start_dicomd(str(workroot), env=a_env))
        started.append(servers.start_dicomd(str(workroot), env=env_b))
        a = Side("A", Bench(started[0], pool, MODES["quick"]))
        b = Side("B", Bench(started[1], pool, MODES["quick"]))
        for side in (a, b):
            # the first instances a server stores make its fan-out directories (~150 us each): not measured
            if warmup:
                _burst(side, 50, 4, warmup, spec)
        results = []
        for batch, connections in lines:
            rates: dict[str, list[float]] = {"A": [], "B": []}
            cpu_us: dict[str, list[float]] = {"A": [], "B": []}
            for round_ in range(rounds):
                for side in (a, b) if round_ % 2 == 0 else (b, a):  # neither always goes first
                    rate, cpu = _burst(side, batch, connections, count, spec)
                    rates[side.name].append(rate)
                    cpu_us[side.name].append(cpu)
            results.append(LineResult(batch, connections, rates["A"], rates["B"], cpu_us["A"], cpu_us["B"]))
        return results
    finally:
        for srv in started:
            srv.keep = True  # removed below, after both stopped
            srv.stop()
        for srv in started:
            shutil.rmtree(srv.workdir, ignore_errors=True)
        pool.close()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", help="git revision that server A runs (default: this checkout, like B)")
    ap.add_argument(
        "--lines", default=DEFAULT_LINES, help=f"STOW lines, <batch>x<connections> (default {DEFAULT_LINES})"
    )
    ap.add_argument("--count", type=int, default=600, help="instances per burst (default 600)")
    ap.add_argument(
        "--rounds", type=int, default=8, help="bursts per line and server, even: each side first as often"
    )
    ap.add_argument(
        "--warmup", type=int, default=2000, help="instances stored first into each server, not measured"
    )
    ap.add_argument("--env-a", action="append", default=[], metavar="NAME=VALUE", help="for server A")
    ap.add_argument("--env-b", action="append", default=[], metavar="NAME=VALUE", help="for server B")
    ap.add_argument(
        "--workdir", default=None, help="where data dirs and the worktree go (default: bench/work)"
    )
    ap.add_argument(
        "--settle",
        type=float,
        default=servers.SETTLE_SECONDS,
        help="seconds between a sync and the servers' start (default 65: files deleted just before, an "
        "earlier run's data dirs, slow down the creates of whichever server lands near them)",
    )
    args = ap.parse_args(argv)
    if args.count < 1 or args.rounds < 2 or args.rounds % 2 or args.warmup < 0:
        ap.error("--count must be at least 1, --rounds an even number, --warmup at least 0")
    try:
        lines = parse_lines(args.lines)
        env_a, env_b = parse_env(args.env_a), parse_env(args.env_b)
    except ValueError as exc:
        ap.error(str(exc))
    if not args.base and not env_a and not env_b:
        ap.error("nothing to compare: give --base and/or --env-a / --env-b")
    workroot = Path(args.workdir) if args.workdir else servers.REPO / "bench" / "work"
    workroot.mkdir(parents=True, exist_ok=True)
    base = ""
    if args.base:  # named by its commit in the report: HEAD~1 means another commit tomorrow
        revision = ["git", "-C", str(servers.REPO), "rev-parse", "--short", args.base + "^{commit}"]
        found = subprocess.run(revision, capture_output=True, text=True, check=False)
        if found.returncode:
            ap.error(f"--base: no such commit: {args.base}")
        base = found.stdout.strip()
    a_src = worktree(base, workroot) if base else None
    try:
        results = run(
            lines,
            count=args.count,
            rounds=args.rounds,
            a_src=a_src,
            env_a=env_a,
            env_b=env_b,
            workroot=workroot,
            settle=args.settle,
            warmup=args.warmup,
        )
    finally:
        if a_src is not None:
            remove_worktree(a_src)
    a_label = " ".join([f"revision {base} ({args.base})" if base else "this checkout", *args.env_a])
    b_label = " ".join(["this checkout", *args.env_b])
    print(render(results, a_label, b_label, args.rounds, args.count))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
