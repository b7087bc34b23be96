"""`dicomd import` at scale, as a user runs it: progress while it runs (a bar on a terminal, lines
otherwise), Ctrl-C and resume, unchanged files skipped unread (but only while their instances are still
stored), and the list of failures."""

from __future__ import annotations

import os
import pty
import re
import secrets
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from support.dicom_files import make_instance, new_uid
from support.server import staged_files, start_server, stop_server


def _command(data_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "dicomd", "import", "--data-dir", str(data_dir), *args]


_UID_ROOT = "1.2.826.0.1.3680043.10.1234."
_PLACEHOLDER = _UID_ROOT + "1" * 30  # a template's SOP Instance UID, replaced by one of the same length


def _corpus(folder: Path, count: int, study_count: int = 10) -> list[str]:
    """`count` small instances in `study_count` studies, in nested folders; their SOP Instance UIDs.
    One instance per study is built with pydicom, the others by replacing its SOP Instance UID (in the
    file meta and the data set) with another of the same length: thousands of files in well under a
    second."""
    templates = [
        make_instance(study=new_uid(), sop=_PLACEHOLDER, patient_id="RESUME") for _ in range(study_count)
    ]
    sops = []
    for i in range(count):
        sop = f"{_UID_ROOT}{secrets.randbelow(9 * 10**29) + 10**29}"
        target = folder / f"s{i % study_count}" / f"{i}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(templates[i % study_count].replace(_PLACEHOLDER.encode(), sop.encode()))
        sops.append(sop)
    return sops


def _counts(stdout: str) -> dict[str, int]:
    found = re.search(
        r"stored (\d+), already stored (\d+)(?: \((\d+) skipped unread[^)]*\))?, failed (\d+)", stdout
    )
    assert found, stdout
    stored, already, skipped, failed = found.groups()
    return {
        "stored": int(stored),
        "already": int(already),
        "skipped": int(skipped or 0),
        "failed": int(failed),
    }


def test_progress_lines_then_ctrl_c_then_resume(tmp_path: Path) -> None:
    # more files than the import has in progress at once (2 batches of 500 pending, 1 committing, the
    # parsers' queues): Ctrl-C after the first progress line must leave some unread
    sops = _corpus(tmp_path / "in", 8000)
    data_dir = tmp_path / "data"
    proc = subprocess.Popen(
        _command(data_dir, "--progress-interval", "0.2", str(tmp_path / "in")),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    lines = []
    try:
        # wait for a progress line that shows some files done, then press Ctrl-C
        while True:
            line = proc.stderr.readline()
            assert line, f"the import ended before it could be interrupted: {lines}"
            lines.append(line)
            progress = re.match(r"import: (\d+) (?:of (\d+) )?files", line)
            if progress and int(progress.group(1)) > 0:
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    first = _counts(out)
    assert proc.returncode == 130, (out, err)
    assert "stopping after the files in progress" in err and "run the same command again to resume" in err
    assert 0 < first["stored"] < len(sops), "Ctrl-C should stop the import part way"
    # the line says where it is: done of found, what became of them, the rate and (once counted) the ETA
    assert re.search(r"import: \d+ (of \d+ files|files \(\d+\+ found\)): stored \d+, .* files/s", lines[-1])
    assert re.search(r"; [1-9]\d* files/s", lines[-1]), "files are done: the rate is not 0"
    assert not staged_files(data_dir), "an interrupted import leaves nothing staged"

    again = subprocess.run(
        _command(data_dir, str(tmp_path / "in")), capture_output=True, text=True, timeout=300
    )
    second = _counts(again.stdout)
    assert again.returncode == 0, again.stderr
    # what the first run stored is skipped without reading it; the rest is stored now; nothing twice
    assert second["skipped"] == first["stored"] + first["already"]
    assert first["stored"] + second["stored"] == len(sops)

    server = start_server(data_dir, workers=1)
    try:
        found: list[str] = []
        while page := httpx.get(
            f"{server.v2}/instances", params={"PatientID": "RESUME", "limit": 1000, "offset": len(found)}
        ).json():
            found += [i["00080018"]["Value"][0] for i in page]
        assert sorted(found) == sorted(sops)
    finally:
        stop_server(server)


def test_a_changed_or_deleted_file_is_read_again(tmp_path: Path) -> None:
    source = tmp_path / "in"
    _corpus(source, 6, study_count=2)
    data_dir = tmp_path / "data"
    assert subprocess.run(_command(data_dir, str(source)), capture_output=True, timeout=120).returncode == 0

    # a file whose modification time changed is parsed again (and found identical)
    touched = source / "s0" / "0.dcm"
    os.utime(touched, ns=(time.time_ns(), time.time_ns()))
    again = subprocess.run(_command(data_dir, str(source)), capture_output=True, text=True, timeout=120)
    assert _counts(again.stdout) == {"stored": 0, "already": 6, "skipped": 5, "failed": 0}

    # an instance deleted from the archive since: its file is imported again, not skipped
    server = start_server(data_dir, workers=1)
    try:
        one = httpx.get(
            f"{server.v2}/instances", params={"PatientID": "RESUME", "includefield": "0020000D"}
        ).json()[0]
        study = one["0020000D"]["Value"][0]
        in_study = len(httpx.get(f"{server.v2}/studies/{study}/instances").json())
        assert httpx.delete(f"{server.v2}/studies/{study}").status_code in (200, 202, 204)
    finally:
        stop_server(server)
    third = subprocess.run(_command(data_dir, str(source)), capture_output=True, text=True, timeout=120)
    assert _counts(third.stdout) == {
        "stored": in_study,
        "already": 6 - in_study,
        "skipped": 6 - in_study,
        "failed": 0,
    }


def test_failed_list_names_each_failure_with_its_reason(tmp_path: Path) -> None:
    source = tmp_path / "in"
    _corpus(source, 3, study_count=1)
    (source / "notes.txt").write_text("not DICOM")
    (source / "empty.dcm").write_bytes(b"")
    listing = tmp_path / "failed.tsv"
    done = subprocess.run(
        _command(tmp_path / "data", "--failed-list", str(listing), str(source)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert _counts(done.stdout) == {"stored": 3, "already": 0, "skipped": 0, "failed": 2}
    rows = dict(line.split("\t", 1) for line in listing.read_text().splitlines())
    assert set(rows) == {str((source / "notes.txt").absolute()), str((source / "empty.dcm").absolute())}
    assert all(reason.strip() for reason in rows.values())


def test_a_terminal_gets_a_progress_bar(tmp_path: Path) -> None:
    _corpus(tmp_path / "in", 300, study_count=3)
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        _command(tmp_path / "data", str(tmp_path / "in")),
        stdout=subprocess.PIPE,
        stderr=follower,
        env={**os.environ, "COLUMNS": "200", "TERM": "xterm"},
    )
    os.close(follower)
    shown = b""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                shown += chunk
            elif proc.poll() is not None:
                break
        proc.wait(timeout=60)
    finally:
        proc.kill()
        os.close(leader)
    text = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", shown).decode(errors="replace")
    assert proc.returncode == 0
    assert "300/300" in text and "stored 300" in text, text[-2000:]
    assert "━" in text  # rich's bar


def test_a_file_named_twice_is_imported_once(tmp_path: Path) -> None:
    """The same file reached twice (a directory and a file in it) is one stored instance and one already
    stored, not a crash."""
    source = tmp_path / "in"
    _corpus(source, 1, study_count=1)
    [only] = list(source.rglob("*.dcm"))
    done = subprocess.run(
        _command(tmp_path / "data", str(source), str(only)), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert _counts(done.stdout) == {"stored": 1, "already": 1, "skipped": 0, "failed": 0}
