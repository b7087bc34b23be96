"""Real-world leniency: what the field's archives store although it breaks the standard a little is
stored with a warning and stays findable; what would make data unsafe or unfindable is still refused."""

from __future__ import annotations

import httpx
import pytest

from support.dicom_files import quietly_make, without
from support.dicomweb import (
    DICOM_ANY,
    FAILURE_REASON,
    REFERENCED_SOP_INSTANCE,
    WARNING_REASON,
    failed_items,
    parse_multipart,
    referenced_items,
    stow,
    unique_id,
    value,
    values,
)
from support.server import Server

VALIDATION_FAILURE = 0xA900
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xB007


def _comments(item: dict[str, object]) -> list[str]:
    return [value(c, "00000902") for c in values(item, "00741048")]  # type: ignore[arg-type]


def test_uids_with_leading_zero_components_are_stored_with_a_warning_and_found(client: httpx.Client) -> None:
    patient = unique_id("LZ")
    suffix = unique_id("").replace("-", "")[:8]
    digits = str(int(suffix, 16))
    study, series, sop = (
        f"1.2.840.0012.{digits}",
        f"1.2.840.0012.{digits}.01",
        f"1.2.840.0012.{digits}.01.007",
    )
    data = quietly_make(study=study, series=series, sop=sop, patient_id=patient)
    r = stow(client, [data])
    assert r.status_code == 202, r.text
    [stored] = referenced_items(r.json())
    assert value(stored, REFERENCED_SOP_INSTANCE) == sop
    assert value(stored, WARNING_REASON) == DATASET_DOES_NOT_MATCH_SOP_CLASS
    comments = " ".join(_comments(stored))
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert keyword in comments, comments
    assert "leading zero" in comments

    # searchable by each UID, at each level, and through the URL of every resource
    assert [
        value(s, "0020000D") for s in client.get("/studies", params={"StudyInstanceUID": study}).json()
    ] == [study]
    assert len(client.get("/series", params={"SeriesInstanceUID": series}).json()) == 1
    assert len(client.get("/instances", params={"SOPInstanceUID": sop}).json()) == 1
    assert len(client.get(f"/studies/{study}/series/{series}/instances").json()) == 1
    r = client.get(f"/studies/{study}/series/{series}/instances/{sop}", headers={"Accept": DICOM_ANY})
    assert r.status_code == 200
    [(_, body)] = parse_multipart(r)
    assert body[128:] == data[128:]
    assert client.get(f"/studies/{study}/metadata").status_code == 200
    assert client.delete(f"/studies/{study}/series/{series}/instances/{sop}").status_code == 204
    assert client.get("/instances", params={"SOPInstanceUID": sop}).json() == []


def test_a_missing_patient_id_is_stored_with_a_warning_in_v2_and_refused_in_v1(server: Server) -> None:
    data = without(quietly_make(patient_id="X"), "PatientID")
    with httpx.Client(base_url=server.v1, timeout=30) as v1:
        r = stow(v1, [data])
        assert r.status_code == 409, r.text
        [failed] = failed_items(r.json())
        assert value(failed, FAILURE_REASON) == VALIDATION_FAILURE
        assert "PatientID" in " ".join(_comments(failed))
    with httpx.Client(base_url=server.v2, timeout=30) as v2:
        r = stow(v2, [data])
        assert r.status_code == 202, r.text
        [stored] = referenced_items(r.json())
        assert value(stored, WARNING_REASON) == DATASET_DOES_NOT_MATCH_SOP_CLASS
        assert "PatientID is missing" in " ".join(_comments(stored))


@pytest.mark.parametrize(
    ("uid", "why"),
    [
        ("1.2.3.abc", "letters"),
        ("1.2." + "3" * 70, "over 64 characters"),
        ("1.2.3 4", "a space inside"),
    ],
)
def test_uids_that_would_make_data_unsafe_are_still_refused(client: httpx.Client, uid: str, why: str) -> None:
    patient = unique_id("BAD")
    r = stow(client, [quietly_make(sop=uid, patient_id=patient)])
    assert r.status_code == 409, (why, r.text)
    [failed] = failed_items(r.json())
    assert value(failed, FAILURE_REASON) == VALIDATION_FAILURE, why
    assert client.get("/studies", params={"PatientID": patient}).json() == []
