"""`dicomd import`: bulk loading from disk through the same stage/sync/commit/publish path as STOW."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx

from support.dicom_files import TEST_FILES, make_instance, new_uid
from support.server import staged_files, start_server, stop_server


def run_import(data_dir: Path, *paths: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "dicomd", "import", "--data-dir", str(data_dir), *map(str, paths)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_import_directory_then_serve(tmp_path: Path) -> None:
    src = tmp_path / "in"
    (src / "nested").mkdir(parents=True)
    study = new_uid()
    originals = {}
    for i in range(12):
        sop = new_uid()
        data = make_instance(study=study, sop=sop, patient_id="IMPORT-1", InstanceNumber=i + 1)
        (src / ("nested" if i % 2 else ".") / f"{i}.dcm").write_bytes(data)
        originals[sop] = data
    (src / "notes.txt").write_text("not DICOM")
    data_dir = tmp_path / "data"

    first = run_import(data_dir, src)
    assert first.returncode == 1, first.stderr  # the text file failed
    assert "stored 12, already stored 0, failed 1" in first.stdout
    assert "notes.txt" in first.stderr and "DICM" in first.stderr

    again = run_import(data_dir, src / "nested")
    # imported before and unchanged: not even read again (the import journal)
    assert "stored 0, already stored 6 (6 skipped unread" in again.stdout and again.returncode == 0
    assert not staged_files(data_dir)

    server = start_server(data_dir, workers=1)
    try:
        with httpx.Client(base_url=server.v2) as c:
            found = c.get("/instances", params={"PatientID": "IMPORT-1", "limit": 100}).json()
            assert len(found) == 12
            sop = next(iter(originals))
            one = c.get(
                f"/studies/{study}/instances",
                params={"SOPInstanceUID": sop, "includefield": "0020000E"},
            ).json()[0]
            series = one["0020000E"]["Value"][0]
            r = c.get(
                f"/studies/{study}/series/{series}/instances/{sop}", headers={"accept": "application/dicom"}
            )
            assert r.status_code == 200 and r.content == originals[sop]
    finally:
        stop_server(server)


def test_import_real_world_files(tmp_path: Path) -> None:
    result = run_import(tmp_path / "data", TEST_FILES)
    assert "stored " in result.stdout
    stored = int(result.stdout.split("stored ", 1)[1].split(",", 1)[0])
    assert stored > 60  # every readable Part 10 file with the required attributes


def test_optimize_replaces_the_seeded_planner_statistics(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    src = tmp_path / "in"
    src.mkdir()
    study = new_uid()
    for n in range(3):
        (src / f"{n}.dcm").write_bytes(make_instance(study=study, sop=new_uid(), series=new_uid()))
    assert run_import(data_dir, src).returncode == 0

    def study_rows_estimate() -> int:
        with sqlite3.connect(data_dir / "index.db") as db:
            (stat,) = db.execute("SELECT stat FROM sqlite_stat1 WHERE idx = 'ix_study_patient_id'").fetchone()
        return int(stat.split()[0])

    assert study_rows_estimate() > 1000  # seeded at migration: planned as for a large archive
    cmd = [sys.executable, "-m", "dicomd", "optimize", "--data-dir", str(data_dir)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "planner statistics refreshed" in done.stdout
    assert study_rows_estimate() == 1  # the one study really stored
