"""STOW-RS end to end over real HTTP (PS3.18 10.5, the cloud service's failure reasons). Requests refused
for their media type, and the version/route/header behaviour every resource shares, are tested in process
(tests/api/test_api_stow.py, tests/api/test_api_errors.py)."""

from __future__ import annotations

import io
import os

import httpx
import pydicom
import pytest

from support.dicom_files import TEST_FILES, make_instance, new_uid, quietly_make, without
from support.dicomweb import (
    DICOM_ANY,
    FAILURE_REASON,
    REFERENCED_SOP_CLASS,
    REFERENCED_SOP_INSTANCE,
    RETRIEVE_URL,
    WARNING_REASON,
    assert_versions_header,
    failed_items,
    parse_multipart,
    referenced_items,
    stow,
    unique_id,
    value,
    wait_for,
)
from support.server import Server, staged_files

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
PROCESSING_FAILURE = 272  # 0x0110
VALIDATION_FAILURE = 43264  # 0xA900
STUDY_MISMATCH = 43265  # 0xA901
ALREADY_EXISTS = 45070  # 0xB00E


# ---- success ------------------------------------------------------------------------------------


def test_multipart_with_many_parts_returns_referenced_sop_sequence(
    client: httpx.Client, server: Server
) -> None:
    study, series_a, series_b = new_uid(), new_uid(), new_uid()
    patient = unique_id()
    sops = [new_uid() for _ in range(12)]
    parts = [
        make_instance(study=study, series=series_a if i % 2 else series_b, sop=sop, patient_id=patient)
        for i, sop in enumerate(sops)
    ]
    r = stow(client, parts)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/dicom+json")
    assert_versions_header(r)
    body = r.json()
    assert value(body, RETRIEVE_URL) == f"{server.v2}/studies/{study}"
    assert not failed_items(body)
    items = referenced_items(body)
    assert len(items) == len(sops)
    by_sop = {value(item, REFERENCED_SOP_INSTANCE): item for item in items}
    assert set(by_sop) == set(sops)
    for i, sop in enumerate(sops):
        item = by_sop[sop]
        assert value(item, REFERENCED_SOP_CLASS) == CT_IMAGE_STORAGE
        series = series_a if i % 2 else series_b
        assert value(item, RETRIEVE_URL) == f"{server.v2}/studies/{study}/series/{series}/instances/{sop}"
        assert WARNING_REASON not in item
    # every stored instance is retrievable at its RetrieveURL, byte-exact
    for i, sop in enumerate(sops):
        got = httpx.get(value(by_sop[sop], RETRIEVE_URL), headers={"Accept": DICOM_ANY}, timeout=30)
        assert got.status_code == 200
        [(_, data)] = parse_multipart(got)
        assert data[128:] == parts[i][128:]


def test_small_and_large_parts_in_one_request_store_the_same_way(client: httpx.Client) -> None:
    """Small parts are prepared on the event loop from the bytes received, bigger ones in a thread from
    the staged file (tests/ingest/test_ingest_routes.py pins which goes where): both give the same stored
    file, metadata and pixel data."""
    study, series = new_uid(), new_uid()
    small = make_instance(study=study, series=series, rows=16, columns=16)
    medium = make_instance(study=study, series=series, rows=512, columns=512)  # 512 KiB
    large = make_instance(study=study, series=series, rows=1024, columns=1024, frames=3)  # 6 MiB
    assert len(small) < 64 << 10 < len(medium) < len(large)
    r = stow(client, [small, medium, large])
    assert r.status_code == 200, r.text
    urls = [value(item, RETRIEVE_URL) for item in referenced_items(r.json())]
    assert len(urls) == 3
    for url, sent, frames in zip(urls, [small, medium, large], [1, 1, 3], strict=True):
        got = httpx.get(url, headers={"Accept": DICOM_ANY}, timeout=30)
        [(_, data)] = parse_multipart(got)
        assert data == sent
        meta = httpx.get(f"{url}/metadata", headers={"Accept": "application/dicom+json"}, timeout=30)
        assert meta.status_code == 200
        [dataset] = meta.json()
        assert value(dataset, "0020000D") == study
        assert "BulkDataURI" in dataset["7FE00010"]
        frame = httpx.get(
            f"{url}/frames/{frames}",
            headers={"Accept": "multipart/related; type=application/octet-stream"},
            timeout=30,
        )
        assert frame.status_code == 200
        [(_, pixels)] = parse_multipart(frame)
        size = value(dataset, "00280010") * value(dataset, "00280011") * 2
        assert pixels == pydicom.dcmread(io.BytesIO(sent)).PixelData[(frames - 1) * size : frames * size]


def test_single_application_dicom_body(client: httpx.Client, server: Server) -> None:
    study, sop = new_uid(), new_uid()
    data = make_instance(study=study, sop=sop, patient_id=unique_id())
    r = client.post("/studies", content=data, headers={"Content-Type": "application/dicom"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert value(body, RETRIEVE_URL) == f"{server.v2}/studies/{study}"
    [item] = referenced_items(body)
    assert value(item, REFERENCED_SOP_INSTANCE) == sop
    # and to the study URL, as a single body too
    sop2 = new_uid()
    r = client.post(
        f"/studies/{study}",
        content=make_instance(study=study, sop=sop2),
        headers={"Content-Type": "application/dicom"},
    )
    assert r.status_code == 200, r.text
    assert value(referenced_items(r.json())[0], REFERENCED_SOP_INSTANCE) == sop2


def test_store_to_study_url_rejects_instances_of_other_studies(client: httpx.Client) -> None:
    study, other_study = new_uid(), new_uid()
    patient = unique_id()
    good = [new_uid(), new_uid()]
    bad = new_uid()
    parts = [
        make_instance(study=study, sop=good[0], patient_id=patient),
        make_instance(study=other_study, sop=bad, patient_id=patient),
        make_instance(study=study, sop=good[1], patient_id=patient),
    ]
    r = stow(client, parts, study=study)
    assert r.status_code == 202, r.text
    body = r.json()
    assert value(body, RETRIEVE_URL).endswith(f"/studies/{study}")
    assert {value(i, REFERENCED_SOP_INSTANCE) for i in referenced_items(body)} == set(good)
    [failed] = failed_items(body)
    assert value(failed, REFERENCED_SOP_INSTANCE) == bad
    assert value(failed, FAILURE_REASON) == STUDY_MISMATCH
    # the matching parts are stored, the mismatching one is not (under neither study)
    found = client.get("/instances", params={"PatientID": patient}).json()
    assert {value(i, "00080018") for i in found} == set(good)
    assert client.get(f"/studies/{other_study}", headers={"Accept": DICOM_ANY}).status_code == 404


def test_duplicate_instance_is_rejected_with_45070(client: httpx.Client) -> None:
    study, series, sop, patient = new_uid(), new_uid(), new_uid(), unique_id()
    data = make_instance(study=study, series=series, sop=sop, patient_id=patient)
    assert stow(client, [data]).status_code == 200
    # other bytes under the stored SOP Instance UID (an identical re-send is a success: test_resend.py)
    other = make_instance(study=study, series=series, sop=sop, patient_id=patient, InstanceNumber=2)
    r = stow(client, [other])
    assert r.status_code == 409, r.text
    body = r.json()
    assert not referenced_items(body)
    [failed] = failed_items(body)
    assert value(failed, REFERENCED_SOP_INSTANCE) == sop
    assert value(failed, FAILURE_REASON) == ALREADY_EXISTS


@pytest.mark.parametrize(
    "case",
    ["no-sop-class", "no-study-uid", "invalid-sop-uid", "too-long-series-uid"],
)
def test_missing_or_invalid_required_attribute_fails_with_43264(client: httpx.Client, case: str) -> None:
    patient = unique_id()
    base = make_instance(patient_id=patient)
    if case == "no-sop-class":
        data = without(base, "SOPClassUID")
    elif case == "no-study-uid":
        data = without(base, "StudyInstanceUID")
    elif case == "invalid-sop-uid":
        data = quietly_make(sop="1.2.3.abc", patient_id=patient)
    else:
        data = quietly_make(series="1.2." + "3" * 70, patient_id=patient)
    r = stow(client, [data])
    assert r.status_code == 409, r.text
    [failed] = failed_items(r.json())
    assert value(failed, FAILURE_REASON) == VALIDATION_FAILURE
    assert not referenced_items(r.json())
    assert client.get("/studies", params={"PatientID": patient}).json() == []


def test_bad_parts_fail_with_272_and_leave_no_trace(fresh_server: Server) -> None:
    patient = unique_id()
    study, series = new_uid(), new_uid()
    good = [new_uid(), new_uid()]
    truncated_source = make_instance(study=study, series=series, patient_id=patient, rows=64, columns=64)
    parts = [
        make_instance(study=study, series=series, sop=good[0], patient_id=patient),
        os.urandom(3000),  # not DICOM at all
        truncated_source[: len(truncated_source) - 2000],  # pixel data cut short
        b"DICM" * 10,
        make_instance(study=study, series=series, sop=good[1], patient_id=patient),
    ]
    with httpx.Client(base_url=fresh_server.v2, timeout=30) as client:
        r = stow(client, parts)
        assert r.status_code == 202, r.text
        body = r.json()
        assert {value(i, REFERENCED_SOP_INSTANCE) for i in referenced_items(body)} == set(good)
        failed = failed_items(body)
        assert len(failed) == 3
        assert all(value(f, FAILURE_REASON) == PROCESSING_FAILURE for f in failed)
        # good parts are retrievable
        for i, sop in enumerate(good):
            inst = client.get(
                f"/studies/{study}/series/{series}/instances/{sop}", headers={"Accept": "application/dicom"}
            )
            assert inst.status_code == 200
            assert inst.content[128:] == parts[4 * i][128:]
        # failed ones are not searchable
        found = client.get("/instances", params={"PatientID": patient}).json()
        assert sorted(value(i, "00080018") for i in found) == sorted(good)
        assert len(client.get("/instances").json()) == 2
    # and leave no files: nothing staged, only the two stored objects (file + metadata each)
    objects = fresh_server.data_dir / "objects" / "objects"
    assert wait_for(lambda: not staged_files(fresh_server.data_dir), timeout=5), staged_files(
        fresh_server.data_dir
    )
    stored = sorted(p.suffix for p in objects.rglob("*") if p.is_file())
    assert stored == [".dcm", ".dcm", ".json", ".json"], stored


def test_truncated_real_file_fails_with_272(client: httpx.Client) -> None:
    data = (TEST_FILES / "MR_truncated.dcm").read_bytes()  # pixel data runs past the end of the file
    r = client.post("/studies", content=data, headers={"Content-Type": "application/dicom"})
    assert r.status_code == 409, r.text
    [failed] = failed_items(r.json())
    assert value(failed, FAILURE_REASON) == PROCESSING_FAILURE


def test_part_of_another_media_type_fails_others_stored(client: httpx.Client) -> None:
    sop = new_uid()
    boundary = "mixed-boundary-123"
    good = make_instance(sop=sop, patient_id=unique_id())
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + good
        + f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
        + b"hello"
        + f"\r\n--{boundary}--\r\n".encode()
    )
    r = client.post(
        "/studies",
        content=body,
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
    )
    assert r.status_code == 202, r.text
    assert [value(i, REFERENCED_SOP_INSTANCE) for i in referenced_items(r.json())] == [sop]
    [failed] = failed_items(r.json())
    assert value(failed, FAILURE_REASON) == PROCESSING_FAILURE


# ---- request errors -----------------------------------------------------------------------------


def test_xml_accept_is_406(client: httpx.Client) -> None:
    patient = unique_id()
    r = stow(client, [make_instance(patient_id=patient)], Accept="application/dicom+xml")
    assert r.status_code == 406, r.text
    assert_versions_header(r)
    r = stow(client, [make_instance(patient_id=patient)], Accept="application/xml")
    assert r.status_code == 406, r.text
    # nothing was stored by the refused requests
    assert client.get("/studies", params={"PatientID": patient}).json() == []


def test_json_accept_variants_are_fine(client: httpx.Client) -> None:
    for accept in ("application/dicom+json", "application/json", "*/*", "application/*"):
        r = stow(client, [make_instance(patient_id=unique_id())], Accept=accept)
        assert r.status_code == 200, (accept, r.text)


def test_empty_multipart_is_204(client: httpx.Client) -> None:
    boundary = "empty-boundary"
    r = client.post(
        "/studies",
        content=f"--{boundary}--\r\n".encode(),
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
    )
    assert r.status_code == 204, r.text
    assert r.content == b""
    assert_versions_header(r)


def test_invalid_study_uid_in_url_is_400(client: httpx.Client) -> None:
    r = stow(client, [make_instance(patient_id=unique_id())], study="1.2.abc")
    assert r.status_code == 400, r.text


# ---- versions, routes, headers ------------------------------------------------------------------


def test_v1_and_v2_both_store_and_find(server: Server) -> None:
    patient = unique_id()
    for version_url in (server.v1, server.v2):
        with httpx.Client(base_url=version_url, timeout=30) as c:
            study = new_uid()
            r = stow(c, [make_instance(study=study, patient_id=patient)])
            assert r.status_code == 200, r.text
            assert value(r.json(), RETRIEVE_URL) == f"{version_url}/studies/{study}"
            assert_versions_header(r)
    for version_url in (server.v1, server.v2):
        found = httpx.get(f"{version_url}/studies", params={"PatientID": patient}).json()
        assert len(found) == 2
