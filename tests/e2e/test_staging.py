"""Staged parts belong to the process that receives them: commands that share the data directory with a
running server (`dicomd optimize`, `dicomd import`) and a worker that replaces a crashed one recover only
the staging areas of dead processes, so no acknowledged instance is ever lost (issue 9, finding 1)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from support.dicom_files import make_instance, new_uid
from support.dicomweb import REFERENCED_SOP_INSTANCE, REFERENCED_SOP_SEQUENCE, stow, unique_id, wait_for
from support.server import Server, descendants, staged_files, start_server, stop_server


class _Load:
    """STOW batches from a few client threads until stopped; remembers what was acknowledged."""

    def __init__(self, server: Server, threads: int = 2, batch: int = 10) -> None:
        self.server = server
        self.batch = batch
        self.acknowledged: dict[str, tuple[str, str, bytes]] = {}  # sop -> (study, series, bytes)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> _Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def _run(self) -> None:
        with httpx.Client(base_url=self.server.v2, timeout=60) as client:
            while not self._stop.is_set():
                study, series, patient = new_uid(), new_uid(), unique_id("STG")
                files = {}
                for _ in range(self.batch):
                    sop = new_uid()
                    files[sop] = make_instance(study=study, series=series, sop=sop, patient_id=patient)
                try:
                    r = stow(client, list(files.values()))
                except httpx.TransportError:
                    continue  # e.g. its worker was killed: nothing was acknowledged
                if r.status_code != 200:
                    self.errors.append(f"{r.status_code}: {r.text[:200]}")
                    continue
                with self._lock:
                    for item in r.json()[REFERENCED_SOP_SEQUENCE]["Value"]:
                        sop = item[REFERENCED_SOP_INSTANCE]["Value"][0]
                        self.acknowledged[sop] = (study, series, files[sop])

    def wait_for_count(self, n: int, timeout: float = 30) -> None:
        assert wait_for(lambda: len(self.acknowledged) >= n, timeout=timeout), len(self.acknowledged)


def _check_every_acknowledged_instance(
    server: Server, acknowledged: dict[str, tuple[str, str, bytes]]
) -> None:
    missing: list[str] = []
    with httpx.Client(base_url=server.v2, timeout=30) as client:
        for sop, (study, series, data) in acknowledged.items():
            r = client.get(
                f"/studies/{study}/series/{series}/instances/{sop}", headers={"Accept": "application/dicom"}
            )
            if r.status_code != 200 or r.content[128:] != data[128:]:
                missing.append(f"{sop}: {r.status_code}, {len(r.content)} of {len(data)} bytes")
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged instances lost: {missing[:5]}"


def _workers(server: Server) -> list[int]:
    """The web worker processes (not multiprocessing's resource tracker)."""
    found = []
    for pid in descendants(server.process.pid):
        try:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:  # gone meanwhile (e.g. the worker just killed)
            continue
    return found


def _dicomd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomd", *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_optimize_and_import_next_to_a_loaded_server_lose_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    to_import = tmp_path / "import"
    to_import.mkdir()
    for i in range(20):
        (to_import / f"{i}.dcm").write_bytes(make_instance(patient_id=unique_id("IMP")))
    server = start_server(data_dir, workers=2)
    try:
        with _Load(server) as load:
            load.wait_for_count(100)
            runs: list[Callable[[], subprocess.CompletedProcess[str]]] = [
                lambda: _dicomd("optimize", "--data-dir", str(data_dir)),
                lambda: _dicomd("import", str(to_import), "--data-dir", str(data_dir), "--processes", "1"),
            ] * 3
            for run in runs:
                done = run()
                assert done.returncode == 0, done.stderr
                assert "Traceback" not in done.stderr, done.stderr
                time.sleep(0.2)
        assert not load.errors, load.errors[:3]
        assert len(load.acknowledged) > 300
        _check_every_acknowledged_instance(server, load.acknowledged)
        assert wait_for(lambda: not staged_files(data_dir), timeout=10), staged_files(data_dir)
        assert "Traceback" not in server.log(), server.log()[-3000:]
    finally:
        stop_server(server)


def test_a_crashed_workers_staged_parts_are_recovered_by_its_replacement(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = start_server(data_dir, workers=2)
    try:
        with _Load(server, threads=4, batch=40) as load:
            for _ in range(3):  # a worker dies with parts staged (some of them committed)
                load.wait_for_count(len(load.acknowledged) + 100)
                os.kill(_workers(server)[0], signal.SIGKILL)
                assert wait_for(lambda: len(_workers(server)) == 2, timeout=30)
        # without a restart of the server: the replacement workers finished the dead ones' parts
        assert wait_for(lambda: not staged_files(data_dir), timeout=15), staged_files(data_dir)
        _check_every_acknowledged_instance(server, load.acknowledged)
    finally:
        stop_server(server)


def test_a_command_waits_for_the_index_lock_then_says_why_it_gave_up(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    assert _dicomd("optimize", "--data-dir", str(data_dir)).returncode == 0  # creates the index
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "time.sleep(60)\n",
            str(data_dir / "index.db.write-lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        done = _dicomd("optimize", "--data-dir", str(data_dir), "--lock-timeout", "1")
        assert time.monotonic() - started < 30
        assert done.returncode == 1
        assert "Traceback" not in done.stderr
        assert "the index is busy" in done.stderr and "write lock" in done.stderr, done.stderr
    finally:
        holder.kill()
        holder.wait()
    done = _dicomd("optimize", "--data-dir", str(data_dir), "--lock-timeout", "1")
    assert done.returncode == 0, done.stderr
