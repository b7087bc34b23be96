"""Idempotent re-send end to end: routers and gateways re-send a study after a timeout, so an instance whose
bytes equal the stored ones is a success that changes nothing (no new version, no change-feed entry); a
different instance under a stored SOP Instance UID still follows `duplicate_policy`."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.backends import BACKENDS, backend_url
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
from support.server import Server, start_server, stop_server

ALREADY_EXISTS = 45070  # 0xB00E
DICOM = {"Accept": "application/dicom"}


def _latest_sequence(client: httpx.Client) -> int:
    latest = client.get("/changefeed/latest").json()
    return int(latest.get("Sequence", 0))


def _entries_since(client: httpx.Client, sequence: int) -> list[dict[str, Any]]:
    r = client.get("/changefeed", params={"offset": sequence, "limit": 100})
    assert r.status_code == 200, r.text
    return list(r.json())


def _referenced(r: httpx.Response) -> set[str]:
    return {value(i, REFERENCED_SOP_INSTANCE) for i in referenced_items(r.json())}


def _instance_url(study: str, series: str, sop: str) -> str:
    return f"/studies/{study}/series/{series}/instances/{sop}"


def _metadata_etag(client: httpx.Client, study: str, series: str, sop: str) -> str:
    # the ETag names the stored object's key: a new version would change it
    r = client.get(_instance_url(study, series, sop) + "/metadata")
    assert r.status_code == 200, r.text
    return r.headers["etag"]


def _count(client: httpx.Client, patient: str) -> int:
    return len(client.get("/instances", params={"PatientID": patient, "limit": 1000}).json())


def test_identical_resend_of_one_instance_is_a_success_that_changes_nothing(
    client: httpx.Client, server: Server
) -> None:
    v1 = httpx.Client(base_url=server.v1, timeout=30)
    study, series, sop, patient = new_uid(), new_uid(), new_uid(), unique_id()
    data = make_instance(study=study, series=series, sop=sop, patient_id=patient)
    assert stow(client, [data]).status_code == 200
    etag = _metadata_etag(client, study, series, sop)
    with v1:
        sequence = _latest_sequence(v1)
        r = stow(client, [data])
        assert r.status_code == 200, r.text
        assert _referenced(r) == {sop}
        assert not failed_items(r.json())
        assert _entries_since(v1, sequence) == []  # no change-feed entry
    assert _metadata_etag(client, study, series, sop) == etag  # the same stored version
    assert client.get(_instance_url(study, series, sop), headers=DICOM).content == data
    assert _count(client, patient) == 1


def test_identical_resend_mixed_with_new_instances(client: httpx.Client, server: Server) -> None:
    study, series, patient = new_uid(), new_uid(), unique_id()
    old = {new_uid(): b"" for _ in range(3)}
    for sop in old:
        old[sop] = make_instance(study=study, series=series, sop=sop, patient_id=patient)
    assert stow(client, list(old.values())).status_code == 200
    etags = {sop: _metadata_etag(client, study, series, sop) for sop in old}
    new = {
        sop: make_instance(study=study, series=series, sop=sop, patient_id=patient)
        for sop in (new_uid(), new_uid())
    }
    with httpx.Client(base_url=server.v1, timeout=30) as v1:
        sequence = _latest_sequence(v1)
        parts = list(old.values())[:2] + list(new.values()) + list(old.values())[2:]
        r = stow(client, parts)
        assert r.status_code == 200, r.text
        assert _referenced(r) == set(old) | set(new)
        assert not failed_items(r.json())
        entries = _entries_since(v1, sequence)
    # only the new instances were written
    assert sorted((e["SopInstanceUid"], e["Action"]) for e in entries) == sorted(
        (sop, "create") for sop in new
    )
    assert {sop: _metadata_etag(client, study, series, sop) for sop in old} == etags
    for sop, data in {**old, **new}.items():
        assert client.get(_instance_url(study, series, sop), headers=DICOM).content == data
    assert _count(client, patient) == 5


def test_the_same_new_instance_twice_in_one_request_is_stored_once(client: httpx.Client) -> None:
    study, series, sop, patient = new_uid(), new_uid(), new_uid(), unique_id()
    data = make_instance(study=study, series=series, sop=sop, patient_id=patient)
    r = stow(client, [data, data, data])
    assert r.status_code == 200, r.text
    assert [value(i, REFERENCED_SOP_INSTANCE) for i in referenced_items(r.json())] == [sop] * 3
    assert _count(client, patient) == 1


def test_different_bytes_under_a_stored_uid_are_rejected_beside_identical_and_new(
    client: httpx.Client, server: Server
) -> None:
    study, series, patient = new_uid(), new_uid(), unique_id()
    same, changed, fresh = new_uid(), new_uid(), new_uid()
    stored = {
        s: make_instance(study=study, series=series, sop=s, patient_id=patient) for s in (same, changed)
    }
    assert stow(client, list(stored.values())).status_code == 200
    # same UIDs, other bytes (make_instance draws a new AccessionNumber; InstanceNumber changes too)
    different = make_instance(study=study, series=series, sop=changed, patient_id=patient, InstanceNumber=9)
    with httpx.Client(base_url=server.v1, timeout=30) as v1:
        sequence = _latest_sequence(v1)
        parts = [
            stored[same],
            different,
            make_instance(study=study, series=series, sop=fresh, patient_id=patient),
        ]
        r = stow(client, parts)
        assert r.status_code == 202, r.text
        assert _referenced(r) == {same, fresh}
        [failed] = failed_items(r.json())
        assert value(failed, REFERENCED_SOP_INSTANCE) == changed
        assert value(failed, FAILURE_REASON) == ALREADY_EXISTS
        assert [(e["SopInstanceUid"], e["Action"]) for e in _entries_since(v1, sequence)] == [
            (fresh, "create")
        ]
    assert client.get(_instance_url(study, series, changed), headers=DICOM).content == stored[changed]
    # alone, it is still the 409 of the reject policy
    r = stow(client, [different])
    assert r.status_code == 409, r.text
    assert value(failed_items(r.json())[0], FAILURE_REASON) == ALREADY_EXISTS


@pytest.fixture(params=BACKENDS)
def overwrite_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    with backend_url(request.param, tmp_path) as url:
        srv = start_server(
            tmp_path / "data", "--duplicate-policy", "overwrite", "--index-url", url, workers=1
        )
        yield srv
        stop_server(srv)


def test_overwrite_policy_replaces_different_bytes_and_ignores_identical_ones(
    overwrite_server: Server,
) -> None:
    study, series, sop, patient = new_uid(), new_uid(), new_uid(), unique_id()
    first = make_instance(study=study, series=series, sop=sop, patient_id=patient, InstanceNumber=1)
    second = make_instance(study=study, series=series, sop=sop, patient_id=patient, InstanceNumber=2)
    v1 = httpx.Client(base_url=overwrite_server.v1, timeout=30)
    v2 = httpx.Client(base_url=overwrite_server.v2, timeout=30)
    with v1, v2:
        assert stow(v2, [first]).status_code == 200
        etag = _metadata_etag(v2, study, series, sop)
        # identical: a no-op, as under reject
        r = stow(v2, [first])
        assert r.status_code == 200, r.text
        assert _referenced(r) == {sop}
        assert [e["Action"] for e in _entries_since(v1, 0)] == ["create"]
        assert _metadata_etag(v2, study, series, sop) == etag
        # different: a new version
        assert stow(v2, [second]).status_code == 200
        entries = _entries_since(v1, 0)
        assert [e["Action"] for e in entries] == ["create", "update"]
        assert _metadata_etag(v2, study, series, sop) != etag
        assert v2.get(_instance_url(study, series, sop), headers=DICOM).content == second
        # re-sending the new version changes nothing again
        etag = _metadata_etag(v2, study, series, sop)
        assert stow(v2, [second, second]).status_code == 200
        assert len(_entries_since(v1, 0)) == 2
        assert _metadata_etag(v2, study, series, sop) == etag
        assert _count(v2, patient) == 1


def _import(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "dicomd", "import", "--data-dir", str(data_dir), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("policy", ["reject", "overwrite"])
def test_importing_the_same_files_again_counts_them_as_already_stored(tmp_path: Path, policy: str) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        (src / f"{i}.dcm").write_bytes(make_instance(patient_id="RESEND-IMPORT", InstanceNumber=i))
    data_dir = tmp_path / "data"
    first = _import(data_dir, "--duplicate-policy", policy, str(src))
    assert "stored 4, already stored 0, failed 0" in first.stdout, first.stdout + first.stderr
    # read again (a journal that has not seen them: otherwise they are skipped unread), found identical
    journal = str(tmp_path / "another-journal.sqlite")
    again = _import(data_dir, "--duplicate-policy", policy, "--journal", journal, str(src))
    assert "stored 0, already stored 4, failed 0" in again.stdout, again.stdout + again.stderr
    assert again.returncode == 0
    server = start_server(data_dir, workers=1)
    try:
        with httpx.Client(base_url=server.v2, timeout=30) as c:
            assert [e["Action"] for e in c.get("/changefeed").json()] == ["create"] * 4
    finally:
        stop_server(server)
