"""QIDO-RS requests refused before any search (repeated parameters, invalid UIDs in the path, an Accept
that cannot be met), in process. Matching is tested end to end (tests/e2e/test_qido.py) and on the index
(tests/index)."""

from __future__ import annotations

import httpx


async def test_repeated_parameter_is_400(app_client: httpx.AsyncClient) -> None:
    r = await app_client.get("/v2/studies", params=[("PatientID", "a"), ("PatientID", "b")])
    assert r.status_code == 400
    assert "PatientID" in r.json()["message"]
    r = await app_client.get("/v2/studies", params=[("limit", "1"), ("limit", "2")])
    assert r.status_code == 400
    assert "limit" in r.json()["message"]


async def test_invalid_uid_in_path_is_400(app_client: httpx.AsyncClient) -> None:
    for path in ("/studies/abc/series", "/studies/1.2.3/series/x.y/instances", "/studies/.1.2/instances"):
        assert (await app_client.get("/v2" + path)).status_code == 400, path


async def test_xml_accept_is_406(app_client: httpx.AsyncClient) -> None:
    r = await app_client.get("/v2/studies", headers={"Accept": "application/dicom+xml"})
    assert r.status_code == 406
    assert (await app_client.get("/v2/studies", headers={"Accept": "application/json"})).status_code == 200
