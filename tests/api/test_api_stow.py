"""STOW-RS requests refused for their media type before any part is read (415), in process. The stores
themselves are tested end to end (tests/e2e/test_stow.py)."""

from __future__ import annotations

import httpx

from support.dicom_files import make_instance, multipart
from support.dicomweb import assert_versions_header, unique_id


async def test_wrong_content_type_is_415(app_client: httpx.AsyncClient) -> None:
    data = make_instance(patient_id=unique_id())
    for content_type in ("text/plain", "application/json", "image/jpeg"):
        r = await app_client.post("/v2/studies", content=data, headers={"Content-Type": content_type})
        assert r.status_code == 415, (content_type, r.text)
        assert_versions_header(r)
        assert r.json()["message"]
    r = await app_client.post("/v2/studies", content=data, headers={"Content-Type": ""})
    assert r.status_code == 415


async def test_multipart_of_another_type_is_415(app_client: httpx.AsyncClient) -> None:
    body, _ = multipart([make_instance(patient_id=unique_id())])
    for part_type in ("application/dicom+json", "application/dicom+xml", "application/octet-stream"):
        r = await app_client.post(
            "/v2/studies",
            content=body,
            headers={"Content-Type": f'multipart/related; type="{part_type}"; boundary=dicomd-test-boundary'},
        )
        assert r.status_code == 415, (part_type, r.text)
