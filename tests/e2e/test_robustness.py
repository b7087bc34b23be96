"""Durability (kill -9 right after a 200 STOW) and concurrent STOW end to end."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx

from support.dicom_files import make_instance, new_uid
from support.dicomweb import stow, unique_id, value
from support.server import Server, kill_group, staged_files, start_server, stop_server


def test_stored_instance_survives_kill_9(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = start_server(data_dir, workers=2)
    study, series, patient = new_uid(), new_uid(), unique_id("DUR")
    sops = [new_uid() for _ in range(3)]
    files = {sop: make_instance(study=study, series=series, sop=sop, patient_id=patient) for sop in sops}
    try:
        with httpx.Client(base_url=server.v2, timeout=30) as client:
            r = stow(client, list(files.values()))
            assert r.status_code == 200, r.text
    finally:
        kill_group(server)  # at once, no graceful shutdown
    restarted = start_server(data_dir, workers=2)
    try:
        with httpx.Client(base_url=restarted.v2, timeout=30) as client:
            found = client.get("/instances", params={"PatientID": patient}).json()
            assert sorted(value(i, "00080018") for i in found) == sorted(sops)
            for sop, data in files.items():
                r = client.get(
                    f"/studies/{study}/series/{series}/instances/{sop}",
                    headers={"Accept": "application/dicom"},
                )
                assert r.status_code == 200
                assert r.content[128:] == data[128:]
            # nothing is left half-done in staging after recovery
            assert not staged_files(data_dir), staged_files(data_dir)
            # and the archive keeps working
            assert (
                stow(client, [make_instance(study=study, series=series, patient_id=patient)]).status_code
                == 200
            )
    finally:
        stop_server(restarted)


def test_concurrent_stow(client: httpx.Client, server: Server) -> None:
    patient = unique_id("CONC")
    threads, per_request = 8, 10
    studies = [new_uid() for _ in range(threads)]
    statuses: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)
    lock = threading.Lock()

    def worker(i: int) -> None:
        try:
            parts = [make_instance(study=studies[i], patient_id=patient) for _ in range(per_request)]
            with httpx.Client(base_url=server.v2, timeout=60) as c:
                barrier.wait()
                r = stow(c, parts)
            with lock:
                statuses.append(r.status_code)
                if r.status_code != 200:
                    errors.append(AssertionError(r.text))
        except BaseException as exc:
            with lock:
                errors.append(exc)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=120)
    assert not errors, errors
    assert statuses == [200] * threads
    found = client.get("/studies", params={"PatientID": patient}).json()
    assert sorted(value(s, "0020000D") for s in found) == sorted(studies)
    assert all(value(s, "00201208") == per_request for s in found)
    assert all(value(s, "00201206") == per_request for s in found)  # make_instance gives each its own series
    instances = client.get("/instances", params={"PatientID": patient, "limit": 1000}).json()
    assert len(instances) == threads * per_request
    assert len({value(i, "00080018") for i in instances}) == threads * per_request
