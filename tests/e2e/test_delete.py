"""DELETE of studies, series and instances end to end: 204, then gone from WADO and QIDO, objects
removed from disk by the background job, siblings untouched."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.dicom_files import make_instance, new_uid
from support.dicomweb import DICOM_ANY, parse_multipart, stow, unique_id, value, wait_for
from support.server import Server, start_server, stop_server


def store(client: httpx.Client, layout: tuple[int, ...]) -> tuple[str, str, list[str], dict[str, list[str]]]:
    study, patient = new_uid(), unique_id("DEL")
    series = [new_uid() for _ in layout]
    sops: dict[str, list[str]] = {
        se: [new_uid() for _ in range(n)] for se, n in zip(series, layout, strict=True)
    }
    parts = [
        make_instance(study=study, series=se, sop=sop, patient_id=patient)
        for se in series
        for sop in sops[se]
    ]
    r = stow(client, parts)
    assert r.status_code == 200, r.text
    return patient, study, series, sops


def object_files(data_dir: Path) -> list[Path]:
    return [p for p in (data_dir / "objects" / "objects").rglob("*") if p.is_file()]


def test_delete_instance(client: httpx.Client) -> None:
    patient, study, [se], sops = store(client, (2,))
    gone, kept = sops[se]
    url = f"/studies/{study}/series/{se}/instances/{gone}"
    r = client.delete(url)
    assert r.status_code == 204, r.text
    assert r.content == b""
    assert client.get(url, headers={"Accept": DICOM_ANY}).status_code == 404
    assert client.get(url + "/metadata").status_code == 404
    assert client.get(url + "/frames/1").status_code == 404
    found = client.get("/instances", params={"PatientID": patient}).json()
    assert [value(i, "00080018") for i in found] == [kept]
    [series] = client.get("/series", params={"PatientID": patient}).json()
    assert value(series, "00201209") == 1  # NumberOfSeriesRelatedInstances
    [st] = client.get("/studies", params={"PatientID": patient}).json()
    assert value(st, "00201208") == 1
    # the sibling is still retrievable, and the study now holds only it
    parts = parse_multipart(client.get(f"/studies/{study}", headers={"Accept": DICOM_ANY}))
    assert len(parts) == 1
    assert client.delete(url).status_code == 404


def test_delete_series_leaves_other_series(client: httpx.Client) -> None:
    patient, study, [se1, se2], sops = store(client, (2, 3))
    r = client.delete(f"/studies/{study}/series/{se1}")
    assert r.status_code == 204
    assert client.get(f"/studies/{study}/series/{se1}", headers={"Accept": DICOM_ANY}).status_code == 404
    assert client.get(f"/studies/{study}/series/{se1}/metadata").status_code == 404
    for sop in sops[se1]:
        assert client.get(f"/studies/{study}/series/{se1}/instances/{sop}/metadata").status_code == 404
    series = client.get(f"/studies/{study}/series").json()
    assert [value(s, "0020000E") for s in series] == [se2]
    assert value(series[0], "00201209") == 3
    [st] = client.get("/studies", params={"PatientID": patient}).json()
    assert (value(st, "00201206"), value(st, "00201208")) == (1, 3)
    instances = client.get("/instances", params={"PatientID": patient}).json()
    assert sorted(value(i, "00080018") for i in instances) == sorted(sops[se2])
    assert len(client.get(f"/studies/{study}/metadata").json()) == 3
    assert len(parse_multipart(client.get(f"/studies/{study}", headers={"Accept": DICOM_ANY}))) == 3
    assert client.delete(f"/studies/{study}/series/{se1}").status_code == 404


def test_delete_study(client: httpx.Client) -> None:
    patient, study, series, _ = store(client, (1, 2))
    assert client.delete(f"/studies/{study}").status_code == 204
    assert client.get(f"/studies/{study}", headers={"Accept": DICOM_ANY}).status_code == 404
    assert client.get(f"/studies/{study}/metadata").status_code == 404
    assert client.get(f"/studies/{study}/series/{series[0]}/metadata").status_code == 404
    for path in ("/studies", "/series", "/instances"):
        assert client.get(path, params={"PatientID": patient}).json() == []
    assert client.get(f"/studies/{study}/series").json() == []
    assert client.delete(f"/studies/{study}").status_code == 404


def test_deleting_the_last_instance_removes_its_series_and_study(client: httpx.Client) -> None:
    patient, study, [se], sops = store(client, (1,))
    assert client.delete(f"/studies/{study}/series/{se}/instances/{sops[se][0]}").status_code == 204
    assert client.get("/series", params={"PatientID": patient}).json() == []
    assert client.get("/studies", params={"PatientID": patient}).json() == []
    assert client.delete(f"/studies/{study}").status_code == 404


def test_delete_missing_is_404_and_invalid_uid_400(client: httpx.Client) -> None:
    _, study, [se], sops = store(client, (1,))
    for url in (
        f"/studies/{new_uid()}",
        f"/studies/{study}/series/{new_uid()}",
        f"/studies/{study}/series/{se}/instances/{new_uid()}",
        f"/studies/{new_uid()}/series/{se}",  # the series exists, but in another study
        f"/studies/{new_uid()}/series/{se}/instances/{sops[se][0]}",
    ):
        r = client.delete(url)
        assert r.status_code == 404, url
        assert r.json()["message"]
    for url in (
        "/studies/abc",
        f"/studies/{study}/series/1.x",
        f"/studies/{study}/series/{se}/instances/.1.2",
    ):
        assert client.delete(url).status_code == 400, url
    # nothing was deleted by the failed requests
    assert client.get(f"/studies/{study}/series/{se}/instances/{sops[se][0]}/metadata").status_code == 200


def test_store_again_after_delete(client: httpx.Client) -> None:
    study, se, sop = new_uid(), new_uid(), new_uid()
    data = make_instance(study=study, series=se, sop=sop, patient_id=unique_id())
    assert stow(client, [data]).status_code == 200
    assert client.delete(f"/studies/{study}").status_code == 204
    assert stow(client, [data]).status_code == 200
    r = client.get(f"/studies/{study}/series/{se}/instances/{sop}", headers={"Accept": "application/dicom"})
    assert r.status_code == 200
    assert r.content[128:] == data[128:]


@pytest.fixture
def no_grace_server(tmp_path: Path) -> Iterator[Server]:
    srv = start_server(tmp_path / "data", workers=1, env={"DICOMD_DELETE_GRACE_PERIOD": "0"})
    yield srv
    stop_server(srv)


def test_deleted_objects_disappear_from_disk(no_grace_server: Server) -> None:
    fresh_server = no_grace_server
    with httpx.Client(base_url=fresh_server.v1, timeout=30) as client:
        _, study1, [a, b], sops1 = store(client, (2, 1))
        _, study2, _, _ = store(client, (1,))
        assert len(object_files(fresh_server.data_dir)) == 8  # file + metadata per instance
        # delete one instance, then a series, then a whole study (v1 routes)
        assert client.delete(f"/studies/{study1}/series/{a}/instances/{sops1[a][0]}").status_code == 204
        assert wait_for(lambda: len(object_files(fresh_server.data_dir)) == 6, timeout=10)
        assert client.delete(f"/studies/{study1}/series/{b}").status_code == 204
        assert wait_for(lambda: len(object_files(fresh_server.data_dir)) == 4, timeout=10)
        assert client.delete(f"/studies/{study2}").status_code == 204
        assert wait_for(lambda: len(object_files(fresh_server.data_dir)) == 2, timeout=10)
        # the remaining instance is intact
        remaining = sops1[a][1]
        r = client.get(f"/studies/{study1}/series/{a}/instances/{remaining}", headers={"Accept": DICOM_ANY})
        assert r.status_code == 200
        assert client.delete(f"/studies/{study1}").status_code == 204
        assert wait_for(lambda: not object_files(fresh_server.data_dir), timeout=10)
        assert client.get("/studies").json() == []


def test_deleted_objects_are_kept_for_the_grace_period(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", workers=1, env={"DICOMD_DELETE_GRACE_PERIOD": "3"})
    try:
        with httpx.Client(base_url=server.v2, timeout=30) as client:
            _, study, _, _ = store(client, (2,))
            deleted_at = time.monotonic()
            assert client.delete(f"/studies/{study}").status_code == 204
            assert client.get(f"/studies/{study}/metadata").status_code == 404  # gone for clients at once
            time.sleep(1.5)
            assert len(object_files(server.data_dir)) == 4  # kept for readers in flight
            assert wait_for(lambda: not object_files(server.data_dir), timeout=10)
            assert time.monotonic() - deleted_at >= 3
    finally:
        stop_server(server)


def test_a_retrieve_in_flight_finishes_when_its_study_is_deleted(tmp_path: Path) -> None:
    """The cleanup job must not remove objects a reader that started before the delete still needs:
    the retrieve reads the study's files one after another while it streams."""
    server = start_server(tmp_path / "data", workers=1, env={"DICOMD_DELETE_GRACE_PERIOD": "60"})
    study, series, patient = new_uid(), new_uid(), unique_id("DEL")
    parts = [
        make_instance(study=study, series=series, patient_id=patient, rows=256, columns=512)
        for _ in range(120)
    ]  # ~30 MB: more than the socket buffers and the server's read-ahead hold
    try:
        with httpx.Client(base_url=server.v2, timeout=60) as client:
            assert stow(client, parts).status_code == 200
            with client.stream("GET", f"/studies/{study}", headers={"Accept": DICOM_ANY}) as r:
                assert r.status_code == 200
                chunks = r.iter_raw(64 << 10)
                body = next(chunks)
                with httpx.Client(base_url=server.v2, timeout=30) as other:
                    assert other.delete(f"/studies/{study}").status_code == 204
                time.sleep(1.5)  # the cleanup job has been woken by the delete
                body += b"".join(chunks)
                assert len(body) == int(r.headers["content-length"])
                received = parse_multipart(
                    httpx.Response(200, headers={"content-type": r.headers["content-type"]}, content=body)
                )
        assert sorted(p[128:] for _, p in received) == sorted(p[128:] for p in parts)
    finally:
        stop_server(server)
