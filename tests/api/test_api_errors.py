"""What every resource shares, in process: unknown API versions and routes are 404 with a JSON body, and
every response, errors included, carries api-supported-versions. (Moved from the end-to-end STOW tests.)"""

from __future__ import annotations

import httpx

from support.dicom_files import new_uid
from support.dicomweb import assert_versions_header


async def test_unknown_version_and_routes_are_404_json(app_client: httpx.AsyncClient) -> None:
    for path in (
        "/v3/studies",
        "/v0/studies",
        "/v2/nothing-here",
        "/nothing",
        "/v2/studies/1.2.3/frobnicate",
    ):
        r = await app_client.get(path)
        assert r.status_code == 404, path
        assert r.headers["content-type"].startswith("application/json"), path
        assert r.json()["message"], path
        assert_versions_header(r)
    r = await app_client.post("/v3/studies", content=b"x", headers={"Content-Type": "application/dicom"})
    assert r.status_code == 404


async def test_every_response_has_api_supported_versions(app_client: httpx.AsyncClient) -> None:
    responses = [
        await app_client.get("/health/check"),
        await app_client.get("/v2/studies"),
        await app_client.get("/v1/series?limit=1"),
        await app_client.get("/v2/studies?bogus=1"),
        await app_client.get(f"/v2/studies/{new_uid()}/metadata"),
        await app_client.get("/v2/changefeed/latest"),
        await app_client.get("/v2/api.json"),
        await app_client.delete(f"/v2/studies/{new_uid()}"),
        await app_client.put("/v2/studies"),
    ]
    for r in responses:
        assert_versions_header(r)
    assert [r.status_code for r in responses] == [200, 200, 200, 400, 404, 200, 200, 404, 405]
