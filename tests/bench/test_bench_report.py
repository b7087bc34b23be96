"""bench/report.py: the Markdown report rendered from stored results files is the one written by the run
that measured them, the results .json reads back unchanged, and the README gets the latest copy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import report  # not an installed package: importable through pytest's pythonpath

ROOT = Path(__file__).resolve().parents[2]

RESULTS = ROOT / "bench" / "results"
STORED_CORES = 2  # the stored runs were measured on 2 cores ("bound" column); this machine may differ

# One stored run per mode; scale has two index backends, replicas five setups, the others both servers.
# Runs before 2026-11-25 23:30 were written when the fsync row had a shorter label.
STORED = [
    "2026-11-30-0009-quick",
    "2026-11-29-2349-full",
    "2026-11-25-2315-scale",
    "2026-11-25-2035-memory",
    "2026-12-04-1424-replicas",
]
_OLD_FSYNC = "| fsync rate (create+write 39 KB+fsync) |"
_FSYNC = "| fsync rate (create+write 39 KB+fsync, after the servers) |"


@pytest.mark.parametrize("stem", STORED)
def test_stored_results_render_to_the_stored_report(stem: str) -> None:
    mode, results, infos, meta = report.load(RESULTS / f"{stem}.json")
    assert mode == stem.rsplit("-", 1)[1]
    expected = (RESULTS / f"{stem}.md").read_text().replace(_OLD_FSYNC, _FSYNC)
    assert report.render(mode, results, infos, meta, cores=STORED_CORES) == expected


@pytest.mark.parametrize("stem", STORED)
def test_results_json_reads_back_unchanged(stem: str) -> None:
    path = RESULTS / f"{stem}.json"
    _, results, infos, meta = report.load(path)
    assert report.raw_results(results, infos, meta) == json.loads(path.read_text())


def test_ratio_column_only_with_both_servers() -> None:
    _, results, infos, meta = report.load(RESULTS / "2026-11-30-0009-quick.json")
    both = report.render("quick", results, infos, meta, cores=STORED_CORES)
    alone = report.render("quick", {"dicomd": results["dicomd"]}, infos, meta, cores=STORED_CORES)
    assert "| dicomd/Orthanc |" in both and "**" in both
    assert "dicomd/Orthanc" not in alone and "**" not in alone


def test_number_formats() -> None:
    assert [report._ratio(r) for r in (0.0456, 1.234, 12.34, 99.4, 102.4, 1234.0)] == [
        "0.046",
        "1.2",
        "12",
        "99",
        "102",
        "1234",
    ]
    assert [report._f(x) for x in (None, float("nan"), 0.25, 999.94, 1234.6)] == [
        "-",
        "-",
        "0.2",
        "999.9",
        "1,235",
    ]
    assert report._f(0.1234, 2) == "0.12"


def test_readme_gets_the_report_between_its_mode_markers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = tmp_path / "bench"
    (bench / "results").mkdir(parents=True)
    readme = bench / "README.md"
    readme.write_text(
        "intro\n<!-- latest:quick:start -->\nold\n<!-- latest:quick:end -->\n"
        "<!-- latest:full:start -->\nkept\n<!-- latest:full:end -->\n"
    )
    monkeypatch.setattr(report, "BENCH", bench)
    monkeypatch.setattr(report, "README", readme)
    report.update_readme("quick", "# title\nline 1\nline 2", bench / "results" / "x-quick.md")
    assert readme.read_text() == (
        "intro\n<!-- latest:quick:start -->\nFrom `bench/results/x-quick.md`:\nline 1\nline 2\n"
        "<!-- latest:quick:end -->\n<!-- latest:full:start -->\nkept\n<!-- latest:full:end -->\n"
    )


def _replica_line(
    key: str, value: float, parts: dict[str, float], cli: float, **extra: object
) -> report.Line:
    return report.Line(
        key=key,
        title=f"title {key}",
        unit="req/s",
        value=value,
        p50_ms=1.0,
        p99_ms=4.0,
        srv_cpu=parts.get("dicomd", 0.0) + parts.get("postgresql", 0.0),
        cli_cpu=cli,
        ops=100,
        extra={"cpu_parts": parts, **extra},
    )


def _replica_run() -> tuple[
    dict[str, dict[str, report.Line]], dict[str, dict[str, object]], dict[str, object]
]:
    results = {
        "orthanc": {"qido_pid": _replica_line("qido_pid", 50.0, {"dicomd": 100.0}, 5.0)},
        "dicomd-pg-s3 x1": {
            "qido_pid": _replica_line(
                "qido_pid", 1000.0, {"dicomd": 95.0, "postgresql": 40.0, "s3": 0}, 20.0
            ),
            "stow_b10_c8": _replica_line(
                "stow_b10_c8", 400.0, {"dicomd": 30.0, "postgresql": 5.0, "s3": 90.0}, 5
            ),
        },
        "dicomd-pg-s3 x3": {
            "qido_pid": _replica_line(
                "qido_pid",
                1500.0,
                {"dicomd": 120.0, "postgresql": 50.0, "s3": 0},
                30.0,
                cpu_by_replica=[40, 40, 40],
            ),
            "stow_b10_c8": _replica_line(
                "stow_b10_c8",
                300.0,
                {"dicomd": 10.0, "postgresql": 2.0, "s3": 20.0},
                3,
                s3_requests_per_op={"HEAD": 10.0, "PUT": 20.5},
            ),
        },
    }
    infos: dict[str, dict[str, object]] = {
        "orthanc": {},
        "dicomd-pg-s3 x1": {"replicas": 1, "workers_per_replica": 1, "workers": 1},
        "dicomd-pg-s3 x3": {"replicas": 3, "workers_per_replica": 1, "workers": 3},
    }
    meta: dict[str, object] = {
        "date": "2026-12-04 14:00 UTC",
        "machine": {"cpu": "2 x test"},
        "fsync_per_s": 1000.0,
        "loopback_mb_s": 3000.0,
        "versions": {
            "orthanc": "Orthanc 1",
            "dicomd-pg-s3 x1": "d",
            "dicomd-pg-s3 x3": "d",
            "s3 emulator": "moto",
        },
        "client": "bench.client",
        "notes": ["a note"],
    }
    return results, infos, meta


def _row(lines: list[str], test: str, setup: str) -> str:
    return next(ln for ln in lines if ln.startswith(f"| title {test} | {setup} |"))


def test_replicas_report_summary_details_and_per_core_figures() -> None:
    results, infos, meta = _replica_run()
    text = report.render("replicas", results, infos, meta, cores=2)
    lines = text.splitlines()
    assert "| s3 emulator | moto |" in lines and "- a note" in lines
    # summary: one column per setup, QIDO with its p99, the last replica count over the first
    assert (
        "| test | unit | orthanc | dicomd-pg-s3 x1 | dicomd-pg-s3 x3 | dicomd-pg-s3 x3 / dicomd-pg-s3 x1 |"
        in lines
    )
    assert (
        "| title qido_pid | req/s | 50.0 (p99 4.0 ms) | 1,000 (p99 4.0 ms) | 1,500 (p99 4.0 ms) | **1.5x** |"
        in lines
    )
    assert "| title stow_b10_c8 | req/s | - | 400.0 | 300.0 | **0.75x** |" in lines
    # details: CPU per part (server / PostgreSQL / S3 emulator / client), per replica, and the bound
    assert _row(lines, "qido_pid", "orthanc") == (
        "| title qido_pid | orthanc | 50.0 req/s | 1.0 / 4.0 | 100 / 0 / 0 / 5 | - | - "
        "| ~1 core busy (serialized?) (Orthanc 100%, client 5%) |"
    )
    assert _row(lines, "qido_pid", "dicomd-pg-s3 x1").endswith(
        "| 95 / 40 / 0 / 20 | - | - | dicomd workers (1 x ~1 core; dicomd 95%, PostgreSQL 40%, client 20%) |"
    )
    assert _row(lines, "qido_pid", "dicomd-pg-s3 x3").endswith(
        "| 120 / 50 / 0 / 30 | 40 / 40 / 40 | - "
        "| CPU: 2 cores shared (dicomd 120%, PostgreSQL 50%, client 30%) |"
    )
    assert _row(lines, "stow_b10_c8", "dicomd-pg-s3 x1").endswith(
        "| S3 emulator (one Python process, ~1 core; S3 emulator 90%, dicomd 30%, PostgreSQL 5%) |"
    )
    assert _row(lines, "stow_b10_c8", "dicomd-pg-s3 x3").endswith(
        "| HEAD 10, PUT 20.5 | latency: S3 emulator round trips (S3 emulator 20%, dicomd 10%, client 3%) |"
    )
    # per busy core: figure / (CPU % / 100), "-" under 5 % busy; replica setups only
    per_core = lines[lines.index("| test | setup | dicomd | PostgreSQL | S3 emulator | client |") :]
    assert "| title qido_pid | dicomd-pg-s3 x1 | 1,053 | 2,500 | - | 5,000 |" in per_core
    assert "| title stow_b10_c8 | dicomd-pg-s3 x3 | 3,000 | - | 1,500 | - |" in per_core
    assert not any(ln.startswith("| title qido_pid | orthanc |") for ln in per_core)


def test_replica_bound_names_the_busy_workers() -> None:
    ln = _replica_line("qido_pid", 900.0, {"dicomd": 180.0, "postgresql": 0.0, "s3": 0.0}, 0.0)
    assert report._replica_bound(ln, cores=4, workers=2) == "dicomd workers (2 x ~1 core; dicomd 180%)"
    ln = _replica_line(
        "qido_pid", 900.0, {"dicomd": 100.0, "postgresql": 0.0, "s3": 0.0}, 0.0, cpu_by_replica=[90, 10]
    )
    assert report._replica_bound(ln, cores=4, workers=2) == "one replica's worker(s) (dicomd 100%)"
    failed = report.Line(key="x", title="x", unit="req/s", value=float("nan"), errors=3)
    assert report._replica_bound(failed, cores=2, workers=1) == "errors"
