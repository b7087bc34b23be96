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

# One stored run per mode; scale has two index backends, the others both servers. Runs before
# 2026-11-25 23:30 were written when the fsync row had a shorter label.
STORED = ["2026-11-30-0009-quick", "2026-11-29-2349-full", "2026-11-25-2315-scale", "2026-11-25-2035-memory"]
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
