"""Browser viewers on another origin (CORS), in process: an application with `cors_origins` set answers
preflights and exposes headers to the allowed origins only; without the setting it sends no CORS headers.
(Moved from the end-to-end HTTP edge tests; like them, on SQLite.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from support.asgi import in_process, settings_for
from support.dicom_files import make_instance, new_uid
from support.dicomweb import stow_async, unique_id

VIEWER = "http://viewer.example:3000"


@pytest.fixture
async def cors_client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    origins = f"{VIEWER}, https://other.example"
    settings = settings_for(tmp_path / "data", f"sqlite:///{tmp_path / 'index.db'}", cors_origins=origins)
    async with in_process(settings) as client:
        yield client


@pytest.fixture
async def plain_client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(settings_for(tmp_path / "data", f"sqlite:///{tmp_path / 'index.db'}")) as client:
        yield client


async def test_cors_preflight_from_an_allowed_origin(cors_client: httpx.AsyncClient) -> None:
    r = await cors_client.options(
        "/v2/studies",
        headers={
            "Origin": VIEWER,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "accept, authorization",
        },
    )
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == VIEWER
    assert "GET" in r.headers["access-control-allow-methods"]
    assert "authorization" in r.headers["access-control-allow-headers"].lower()


async def test_cors_headers_on_responses_to_an_allowed_origin(cors_client: httpx.AsyncClient) -> None:
    patient = unique_id("CORS")
    cors_client.headers["Origin"] = VIEWER
    r = await stow_async(cors_client, [make_instance(patient_id=patient)])
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == VIEWER
    r = await cors_client.get("/v2/studies", params={"PatientID": patient})
    assert r.status_code == 200 and len(r.json()) == 1
    assert r.headers["access-control-allow-origin"] == VIEWER
    exposed = r.headers["access-control-expose-headers"].lower()
    for header in ("content-type", "content-length", "etag"):
        assert header in exposed, exposed
    missing = await cors_client.get(f"/v2/studies/{new_uid()}/metadata")  # errors carry the headers too
    assert missing.status_code == 404 and missing.headers["access-control-allow-origin"] == VIEWER


async def test_cors_refuses_other_origins(cors_client: httpx.AsyncClient) -> None:
    r = await cors_client.options(
        "/v2/studies",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert r.status_code == 400
    assert "access-control-allow-origin" not in r.headers
    r = await cors_client.get("/v2/studies", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers  # the browser withholds the answer


async def test_without_cors_origins_no_cors_headers_are_sent(plain_client: httpx.AsyncClient) -> None:
    r = await plain_client.options(
        "/v2/studies", headers={"Origin": VIEWER, "Access-Control-Request-Method": "GET"}
    )
    assert r.status_code == 405
    assert "access-control-allow-origin" not in r.headers


async def test_any_origin_may_read_but_not_store_or_delete(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "data", f"sqlite:///{tmp_path / 'index.db'}", cors_origins="*")
    async with in_process(settings) as client:
        for method, allowed in (("GET", True), ("POST", False), ("DELETE", False)):
            r = await client.options(
                "/v2/studies",
                headers={"Origin": "http://any.example", "Access-Control-Request-Method": method},
            )
            assert (r.status_code == 200) is allowed, (method, r.status_code, r.text)
