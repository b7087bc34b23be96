"""STOW on a full disk, end to end: every response is a truthful DICOM JSON answer per instance (stored ones
in ReferencedSOPSequence and retrievable byte-exact, the others in FailedSOPSequence with 0xA700 Out of
Resources and absent from QIDO), 507 when nothing could be stored for lack of space, never a 500, no staged
file left behind; and the same server stores again once space returns.

The disk is a small tmpfs mounted for the test (root may mount on CI machines), holding the whole data
directory (the SQLite index fills up too: its commits fail) or only the object store (index on the real
disk, SQLite or PostgreSQL). Where mounting is not permitted (EPERM), the same run happens in process with
a full disk simulated at the storage layer (the staged writes fail with ENOSPC once a byte budget is
spent); the test says which path ran (printed, and recorded as the `disk_full_path` property).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from support.backends import PG_URL, backend_url
from support.dicom_files import make_instance, new_uid
from support.dicomweb import (
    FAILURE_REASON,
    REFERENCED_SOP_INSTANCE,
    failed_items,
    referenced_items,
    stow,
    unique_id,
    value,
)
from support.server import start_server, stop_server

OUT_OF_RESOURCES = 0xA700
PROCESSING_FAILURE = 0x0110
DISK_BYTES = 8 << 20
FREE_WHEN_FILLING = 1536 << 10  # what the ballast leaves: a few requests fill it
PARTS_PER_REQUEST = 6
# (rows, columns) of 16-bit pixels: 0.5 KB to 80 KB instances, so that small ones may still fit
# where big ones no longer do
SMALL, BIG = [(16, 16), (64, 64)], [(128, 128), (200, 200)]

_libc = ctypes.CDLL(None, use_errno=True)
_MNT_DETACH = 2


@contextlib.contextmanager
def tmpfs(path: Path, size: int) -> Iterator[bool]:
    """Mount a tmpfs of ``size`` bytes on ``path``; yields False (nothing mounted) where mounting is not
    permitted (EPERM), raises on any other failure, unmounts afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size},mode=0700".encode()
    if _libc.mount(b"tmpfs", os.fsencode(path), b"tmpfs", 0, options) != 0:
        err = ctypes.get_errno()
        if err == errno.EPERM:
            yield False
            return
        raise OSError(err, os.strerror(err), str(path))
    try:
        yield True
    finally:
        if _libc.umount2(os.fsencode(path), 0) != 0:
            _libc.umount2(os.fsencode(path), _MNT_DETACH)  # still busy: detach it all the same


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path: Path, leave: int) -> Path:
    """A ballast file that leaves about ``leave`` bytes free on the file system of ``path``."""
    ballast = path / "ballast"
    remaining = max(0, free_bytes(path) - leave)
    chunk = b"\0" * (1 << 20)
    with open(ballast, "wb") as f:
        while remaining > 0:
            remaining -= f.write(chunk[: min(remaining, len(chunk))])
    return ballast


# ---- the run and its checks (the same for both paths) ------------------------------------------


@dataclass
class Run:
    sent: dict[str, bytes] = field(default_factory=dict)  # SOP Instance UID -> bytes, every part sent
    urls: dict[str, str] = field(default_factory=dict)  # SOP Instance UID -> its WADO-RS instance URL
    stored: set[str] = field(default_factory=set)  # listed in a ReferencedSOPSequence
    statuses: list[int] = field(default_factory=list)


def check_response(r: httpx.Response, parts: dict[str, bytes]) -> set[str]:
    """Check one STOW response against the parts sent; returns the SOP Instance UIDs it says are stored."""
    assert r.status_code in (200, 202, 409, 507), (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/dicom+json"), r.headers
    body = r.json()
    assert isinstance(body, dict)
    referenced, failed = referenced_items(body), failed_items(body)
    assert len(referenced) + len(failed) == len(parts), body  # every part accounted for, once
    stored = {value(i, REFERENCED_SOP_INSTANCE) for i in referenced}
    assert stored <= set(parts) and len(stored) == len(referenced), body
    for item in failed:
        sop = value(item, REFERENCED_SOP_INSTANCE)
        assert sop is None or (sop in parts and sop not in stored), item
        # nothing but the full disk made these fail
        assert value(item, FAILURE_REASON) == OUT_OF_RESOURCES, item
        assert item["00741048"]["Value"][0]["00000902"]["Value"][0].endswith("out of storage space"), item
    if not failed:
        expected = 200
    elif stored:
        expected = 202
    else:
        expected = 507  # nothing stored and every failure is out of resources
    assert r.status_code == expected, body
    return stored


def send(client: httpx.Client, run: Run, patient: str, sizes: list[tuple[int, int]]) -> int:
    study, series = new_uid(), new_uid()
    parts = {}
    for i in range(PARTS_PER_REQUEST):
        sop = new_uid()
        rows, columns = sizes[i % len(sizes)]
        parts[sop] = make_instance(
            study=study, series=series, sop=sop, patient_id=patient, rows=rows, columns=columns
        )
    r = stow(client, list(parts.values()))
    stored = check_response(r, parts)
    run.sent.update(parts)
    run.urls.update({sop: f"/studies/{study}/series/{series}/instances/{sop}" for sop in parts})
    run.stored |= stored
    run.statuses.append(r.status_code)
    return r.status_code


def fill_the_disk(client: httpx.Client, patient: str) -> Run:
    """Two senders STOW requests of several instances until the disk is full and a few requests more."""
    run = Run()
    rounds_after_full = 0
    with ThreadPoolExecutor(2) as pool:
        for _ in range(60):
            # one request of mixed sizes and one of big instances at a time (the big ones fail first)
            statuses = list(pool.map(lambda sizes: send(client, run, patient, sizes), [SMALL + BIG, BIG]))
            if 507 in run.statuses:
                rounds_after_full += 1
            if rounds_after_full >= 4 and all(s == 507 for s in statuses):
                break
    assert 200 in run.statuses, run.statuses  # some were stored before the disk was full
    assert 507 in run.statuses, run.statuses  # and the disk did get full
    # a part that fails for another reason (empty: not DICOM) makes it a 409, not a 507
    parts = {new_uid(): b""} | {
        sop: make_instance(sop=sop, rows=200, columns=200) for sop in (new_uid(), new_uid())
    }
    r = stow(client, list(parts.values()))
    assert r.status_code == 409, r.text
    reasons = sorted(value(i, FAILURE_REASON) for i in failed_items(r.json()))
    assert reasons == [PROCESSING_FAILURE, OUT_OF_RESOURCES, OUT_OF_RESOURCES], r.text
    return run


def check_archive(client: httpx.Client, run: Run, patient: str) -> None:
    """The archive holds exactly the instances the responses said were stored, byte-exact."""
    found: set[str] = set()
    while True:
        page = client.get("/instances", params={"PatientID": patient, "limit": 1000, "offset": len(found)})
        assert page.status_code == 200, page.text
        batch = {value(i, "00080018") for i in page.json()}
        if not batch:
            break
        found |= batch
    assert found == run.stored, (len(found), len(run.stored))
    for sop in run.stored:
        got = client.get(run.urls[sop], headers={"Accept": "application/dicom"})
        assert got.status_code == 200 and got.content == run.sent[sop], sop


def check_recovered(client: httpx.Client, run: Run, patient: str) -> None:
    """With space back, a re-send of instances that failed (and of some that were stored) is a 200."""
    failed = [sop for sop in run.sent if sop not in run.stored][: PARTS_PER_REQUEST * 2]
    again = failed + sorted(run.stored)[:2]
    r = stow(client, [run.sent[sop] for sop in again])
    assert r.status_code == 200, r.text
    assert {value(i, REFERENCED_SOP_INSTANCE) for i in referenced_items(r.json())} == set(again)
    run.stored |= set(again)
    assert send(client, run, patient, SMALL + BIG) == 200
    check_archive(client, run, patient)


def staged_files(staging: Path) -> list[Path]:
    return [p for p in staging.rglob("*") if p.is_file() and not p.name.endswith(".lock")]


def run_until_full_and_back(client: httpx.Client, staging: Path, make_room: Callable[[], None]) -> Run:
    patient = unique_id("FULL")
    run = fill_the_disk(client, patient)
    assert not staged_files(staging), staged_files(staging)  # failed parts left nothing behind
    check_archive(client, run, patient)
    make_room()
    check_recovered(client, run, patient)
    assert not staged_files(staging), staged_files(staging)
    return run


# ---- the test -----------------------------------------------------------------------------------

LAYOUTS = [
    pytest.param("data-dir", "sqlite", id="index-and-objects-on-the-full-disk"),
    pytest.param("objects", "sqlite", id="objects-on-the-full-disk-sqlite"),
    pytest.param(
        "objects",
        "postgresql",
        id="objects-on-the-full-disk-postgresql",
        marks=pytest.mark.skipif(not PG_URL, reason="DICOMD_TEST_POSTGRES_URL not set"),
    ),
]


@pytest.mark.parametrize(("on_full_disk", "backend"), LAYOUTS)
def test_stow_until_the_disk_is_full_and_after(
    tmp_path: Path,
    on_full_disk: str,
    backend: str,
    monkeypatch: pytest.MonkeyPatch,
    record_property: Callable[[str, object], None],
) -> None:
    disk = tmp_path / "disk"
    with backend_url(backend, tmp_path) as index_url, tmpfs(disk, DISK_BYTES) as mounted:
        record_property("disk_full_path", "tmpfs" if mounted else "in-process fault injection")
        print(f"disk full path: {'tmpfs' if mounted else 'in-process fault injection (mount: EPERM)'}")
        if not mounted:
            _in_process_run(tmp_path / "data", index_url, monkeypatch)
            return
        # the audit trail lives elsewhere: on the full disk it would close the API (fail-closed, tested in
        # tests/audit), and this test is about the archive's own answers
        audit = {"DICOMD_AUDIT_LOG": str(tmp_path / "audit.jsonl")}
        if on_full_disk == "data-dir":  # the SQLite index in it too
            data_dir, storage, env = disk / "data", disk / "data" / "objects", audit
            args: list[str] = []
        else:
            data_dir, storage = tmp_path / "data", disk / "objects"
            env = {"DICOMD_STORAGE_PATH": str(storage), **audit}
            args = ["--index-url", index_url]
        server = start_server(data_dir, *args, workers=2, env=env)
        try:
            ballast = fill(disk, FREE_WHEN_FILLING)
            with httpx.Client(base_url=server.v2, timeout=60) as client:
                run = run_until_full_and_back(client, storage / "staging", ballast.unlink)
            print(f"statuses: { {s: run.statuses.count(s) for s in sorted(set(run.statuses))} }")
        finally:
            stop_server(server)


# ---- the fallback: in process, a full disk simulated at the storage layer ------------------------


class _SimulatedDisk:
    """A byte budget for the staged writes of the ingest path; spent, they fail with ENOSPC."""

    def __init__(self, budget: int) -> None:
        self.budget = budget

    def charge(self, size: int) -> None:
        if size > self.budget:
            self.budget = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.budget -= size


def _in_process_run(data_dir: Path, index_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Starlette would rather have httpx2 under its test client
        from starlette.testclient import TestClient

    from dicomd.app import create_app
    from dicomd.config import Settings
    from dicomd.storage import local

    disk = _SimulatedDisk(FREE_WHEN_FILLING)
    real_write_all = local.write_all

    def write_all(fd: int, data: bytes | memoryview) -> None:  # staged parts and metadata alike
        disk.charge(len(data))
        real_write_all(fd, data)

    monkeypatch.setattr(local, "write_all", write_all)
    data_dir.mkdir()
    settings = Settings(data_dir=data_dir, index_url=index_url)
    with TestClient(create_app(settings), base_url="http://testserver/v2") as client:
        staging = settings.effective_storage_path / "staging"
        run_until_full_and_back(client, staging, lambda: setattr(disk, "budget", DISK_BYTES))


def test_delete_on_a_full_index_disk_is_507_and_deletes_nothing(tmp_path: Path) -> None:
    """A database fault on DELETE is a clear 507 (disk full) or 503, never a 500, and nothing is lost."""
    disk = tmp_path / "disk"
    with tmpfs(disk, DISK_BYTES) as mounted:
        if not mounted:
            pytest.skip("mounting a tmpfs is not permitted here (CI machines allow it)")
        server = start_server(
            disk / "data", workers=1, env={"DICOMD_AUDIT_LOG": str(tmp_path / "audit.jsonl")}
        )
        try:
            with httpx.Client(base_url=server.v2, timeout=30) as client:
                study = new_uid()
                parts = [make_instance(study=study, patient_id=unique_id("FULL")) for _ in range(20)]
                assert stow(client, parts).status_code == 200
                ballast = fill(disk, 0)
                r = client.delete(f"/studies/{study}")
                assert r.status_code in (204, 507, 503), r.text
                if r.status_code != 204:
                    assert r.json()["message"] and "nothing was deleted" in r.json()["message"]
                    assert client.get(f"/studies/{study}/metadata").status_code == 200
                ballast.unlink()
                assert client.delete(f"/studies/{study}").status_code in (204, 404)
            assert "Traceback" not in server.log(), server.log()[-2000:]
        finally:
            stop_server(server)
