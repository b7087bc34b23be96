"""A real `dicomd serve` (two workers, debug logging, API keys on) stores, searches, retrieves and deletes
instances with known patient names and IDs, and some requests fail (401, 403, 400, 404, 409, a client that
goes away mid-upload). Afterwards the operational log must hold none of the names, IDs or UIDs, while the
audit trail holds them all, one whole JSON line per versioned request, written by both workers."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pydicom

from dicomd.auth.api_keys import add_key

from support.dicom_files import TEST_FILES, make_instance, new_uid
from support.dicomweb import stow, unique_id, wait_for
from support.server import start_server, stop_server

_BUNDLED = ("CT_small.dcm", "MR_small.dcm")


def _patient(path: Path) -> tuple[str, str, str, str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    uids = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    return str(ds.PatientName), str(ds.PatientID), *uids


def _abandoned_upload(url: str, key: str, body_start: bytes) -> None:
    """A STOW whose client sends part of the body and goes away."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        head = (
            "POST /v2/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            'Content-Type: multipart/related; type="application/dicom"; boundary=b\r\n'
            f"X-API-Key: {key}\r\nContent-Length: {len(body_start) * 4}\r\n\r\n"
        )
        conn.sendall(head.encode() + b"--b\r\nContent-Type: application/dicom\r\n\r\n" + body_start)


def test_operational_log_carries_no_phi_while_the_audit_trail_has_it(tmp_path: Path) -> None:
    keys = tmp_path / "keys.jsonl"
    owner = add_key(keys, "pacs-bridge", ("Data Owner",), None)
    reader = add_key(keys, "viewer", ("Data Reader",), None)
    made_name, made_id = f"Phi^Audit{unique_id('N')[2:10]}", unique_id("PHI")
    study, series, sop, other_sop = new_uid(), new_uid(), new_uid(), new_uid()
    made = make_instance(study=study, series=series, sop=sop, patient_name=made_name, patient_id=made_id)
    bundled = [_patient(TEST_FILES / name) for name in _BUNDLED]
    secrets = [made_name, made_id, study, series, sop, other_sop]
    secrets += [value for patient in bundled for value in patient]

    server = start_server(tmp_path / "data", "--log-level", "debug", "--api-keys-file", str(keys), workers=2)
    requests = 0
    refused_id = "refused-request-1"
    try:
        owner_h, reader_h = {"X-API-Key": owner}, {"X-API-Key": reader}
        with httpx.Client(base_url=server.v2, timeout=30) as client:

            def call(method: str, url: str, expected: int, **kwargs: Any) -> httpx.Response:
                nonlocal requests
                requests += 1
                response = client.request(method, url, **kwargs)
                assert response.status_code == expected, response.text
                return response

            requests += 2
            assert stow(client, [made], **owner_h).status_code == 200
            files = [(TEST_FILES / name).read_bytes() for name in _BUNDLED]
            assert stow(client, files, **owner_h).status_code == 200
            name_query = {"PatientName": made_name.split("^")[0] + "*"}
            found = call("GET", "/studies", 200, params=name_query, headers=owner_h)
            assert len(found.json()) == 1
            call("GET", "/studies", 200, params={"PatientID": bundled[0][1]}, headers=reader_h)
            call("GET", f"/studies/{study}", 200, headers=reader_h)
            call("GET", f"/studies/{bundled[1][2]}/metadata", 200, headers=reader_h)
            frames = "/studies/{}/series/{}/instances/{}/frames/1".format(*bundled[0][2:])
            octets = {**reader_h, "Accept": "multipart/related; type=application/octet-stream"}
            call("GET", frames, 200, headers=octets)
            # failures, each with PHI in its URL or body
            call("GET", f"/studies/{study}", 401, params=name_query, headers={"X-Request-ID": refused_id})
            call("DELETE", f"/studies/{study}", 403, headers=reader_h)
            bad_query = {"PatientName": made_name, "StudyDate": made_id}
            call("GET", "/studies", 400, params=bad_query, headers=owner_h)
            call("GET", f"/studies/{study}/series/{series}/instances/{other_sop}", 404, headers=owner_h)
            garbage = made_id.encode() + b" is not a DICOM file"
            requests += 1
            assert stow(client, [garbage], **owner_h).status_code == 409
            requests += 1
            _abandoned_upload(server.url, owner, made[: len(made) // 2])
            call("DELETE", f"/studies/{study}/series/{series}", 204, headers=owner_h)
            call("DELETE", f"/studies/{bundled[1][2]}", 204, headers=owner_h)
            call("DELETE", f"/studies/{study}", 404, headers=owner_h)

        # concurrent searches, spread over both workers by the supervisor
        def search(_: int) -> int:
            with httpx.Client(base_url=server.v2, timeout=30, headers=reader_h) as c:
                return c.get("/studies", params={"PatientID": made_id}).status_code

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(search, range(200))) == {200}
        requests += 200
        audit_path = tmp_path / "data" / "audit.jsonl"
        assert wait_for(lambda: len(audit_path.read_bytes().splitlines()) >= requests, timeout=10)
    finally:
        stop_server(server)

    operational = server.log()
    assert '"level":"debug"' in operational  # debug lines were written, and scanned
    leaked = [value for value in secrets if value in operational]
    assert leaked == [], f"PHI in the operational log: {leaked}"
    # a client's X-Request-ID never reaches the operational log (a client could put PHI in it)
    assert refused_id not in operational

    audit = audit_path.read_text()
    # every UID, and the names and IDs the requests carried (a STOW event names instances by UID only)
    carried = [made_name, made_id, bundled[0][1]]
    uids = [study, series, sop, other_sop] + [uid for patient in bundled for uid in patient[2:]]
    missing = [value for value in carried + uids if value not in audit]
    assert missing == [], f"not in the audit trail: {missing}"
    events = [orjson.loads(line) for line in audit.splitlines()]  # every line whole
    assert len(events) == requests
    assert len({e["source"] + str(e["worker"]) for e in events}) == 2  # both workers wrote
    abandoned = [e for e in events if e["route"] == "stow.store" and not e["completed"]]
    assert len(abandoned) == 1 and abandoned[0]["outcome"] == 8 and abandoned[0]["status"] is None
    refused = next(e for e in events if e["request_id"] == refused_id)
    assert (refused["status"], refused["who"], refused["study"]) == (401, None, study)
    # the log line of the refused request names the server's id, which joins it to its audit event
    assert f'"request_id":"{refused["log_request_id"]}"' in operational
