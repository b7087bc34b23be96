"""Behaviour that depends on the API version or on settings: PatientID rules, size limit, base_url,
duplicate policy (from a TOML file, a flag and the environment)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.dicom_files import make_instance, new_uid
from support.dicomweb import FAILED_SOP_SEQUENCE, FAILURE_REASON, stow, value
from support.server import Server, staged_files, start_server, stop_server


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # one setting from each source, so the workers are shown to get all three
    root = tmp_path_factory.mktemp("limited")
    (root / "dicomd.toml").write_text("[dicomd]\nmax_request_bytes = 200000\n", encoding="utf-8")
    srv = start_server(
        root / "data",
        *("--config", str(root / "dicomd.toml"), "--base-url", "https://pacs.example.org/dicomweb/"),
        workers=1,
        env={"DICOMD_DUPLICATE_POLICY": "overwrite"},
    )
    yield srv
    stop_server(srv)


def test_empty_patient_id_is_accepted_by_v2_and_rejected_by_v1(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        body, headers = _body(make_instance(patient_id=""))
        r2 = c.post("/v2/studies", content=body, headers=headers)
        assert r2.status_code == 200, r2.text
        r1 = c.post("/v1/studies", content=_body(make_instance(patient_id=""))[0], headers=headers)
        assert r1.status_code == 409
        failed = r1.json()[FAILED_SOP_SEQUENCE]["Value"][0]
        assert value(failed, FAILURE_REASON) == 0xA900
        assert "PatientID" in str(failed["00741048"])


def _body(instance: bytes) -> tuple[bytes, dict[str, str]]:
    from support.dicom_files import multipart

    body, content_type = multipart([instance])
    return body, {"Content-Type": content_type}


def test_request_larger_than_the_limit_is_413_and_leaves_nothing(limited: Server) -> None:
    big = make_instance(rows=256, columns=256)  # ~131 KB of pixels
    with httpx.Client(base_url=limited.v2, timeout=30) as c:
        r = stow(c, [big, big])
        assert r.status_code == 413 and "limit" in r.json()["message"]
        assert not staged_files(Path(limited.data_dir))
        assert c.get("/instances", params={"PatientID": "PAT-1"}).json() == []


def test_base_url_setting_is_used_for_retrieve_urls(limited: Server) -> None:
    with httpx.Client(base_url=limited.v2, timeout=30) as c:
        r = stow(c, [make_instance()])
        assert r.status_code == 200
        assert value(r.json(), "00081190").startswith("https://pacs.example.org/dicomweb/v2/studies/")


def test_duplicate_policy_from_the_environment_reaches_the_workers(limited: Server) -> None:
    study, series, sop = new_uid(), new_uid(), new_uid()
    with httpx.Client(base_url=limited.v2, timeout=30) as c:
        assert stow(c, [make_instance(study=study, series=series, sop=sop)]).status_code == 200
        # other bytes under the stored SOP Instance UID: "reject", the default, answers 409
        changed = make_instance(study=study, series=series, sop=sop, InstanceNumber=7)
        r = stow(c, [changed])
        assert r.status_code == 200, r.text
        [stored] = c.get(f"/studies/{study}/instances").json()
        assert value(stored, "00200013") == 7
