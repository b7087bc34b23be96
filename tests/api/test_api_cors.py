"""Browser viewers on another origin (CORS, dicomd.http.cors), in process: named origins get every method,
credentials and the headers of an authenticated viewer (Authorization, audit headers); any origin ("*") may
only read, without credentials; other origins get no CORS headers, their preflights 400 and their writes
403; without the setting no CORS headers are sent. On SQLite."""

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


async def test_an_authenticated_viewer_may_send_its_token_and_audit_headers(
    cors_client: httpx.AsyncClient,
) -> None:
    for method in ("GET", "POST", "DELETE"):
        r = await cors_client.options(
            "/v2/studies",
            headers={
                "Origin": VIEWER,
                "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": "Authorization, Content-Type, X-Request-ID, "
                "X-DICOMD-AUDIT-Purpose, x-ms-azuredicom-audit-userid",
            },
        )
        assert r.status_code == 200, (method, r.text)
        assert r.headers["access-control-allow-origin"] == VIEWER
        assert r.headers["access-control-allow-credentials"] == "true"
        assert method in r.headers["access-control-allow-methods"]
        allowed = {h.strip() for h in r.headers["access-control-allow-headers"].split(",")}
        assert {"authorization", "x-dicomd-audit-purpose", "x-ms-azuredicom-audit-userid"} <= allowed
        assert "Origin" in r.headers["vary"]
    r = await cors_client.get("/v2/studies", headers={"Origin": VIEWER, "Authorization": "Bearer x"})
    assert r.headers["access-control-allow-origin"] == VIEWER
    assert r.headers["access-control-allow-credentials"] == "true"


async def test_a_preflight_for_an_unknown_header_is_refused(cors_client: httpx.AsyncClient) -> None:
    r = await cors_client.options(
        "/v2/studies",
        headers={
            "Origin": VIEWER,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization, x-something-else",
        },
    )
    assert r.status_code == 400 and r.json()["status"] == 400
    assert "access-control-allow-headers" not in r.headers


async def test_a_refused_origin_gets_no_credentials_and_cannot_change_data(
    cors_client: httpx.AsyncClient,
) -> None:
    evil = "http://evil.example"
    r = await cors_client.options(
        "/v2/studies",
        headers={
            "Origin": evil,
            "Access-Control-Request-Method": "DELETE",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert r.status_code == 400
    assert "access-control-allow-credentials" not in r.headers
    study = new_uid()
    stored = await stow_async(cors_client, [make_instance(study=study, patient_id=unique_id("CORS"))])
    assert stored.status_code == 200
    # sent without a preflight, as a browser may: refused before it runs
    r = await cors_client.delete(f"/v2/studies/{study}", headers={"Origin": evil})
    assert r.status_code == 403, r.text
    assert "access-control-allow-origin" not in r.headers
    assert (await cors_client.get(f"/v2/studies/{study}/metadata")).status_code == 200  # still there
    r = await cors_client.post(
        "/v2/studies", content=b"x", headers={"Origin": evil, "Content-Type": "text/plain"}
    )
    assert r.status_code == 403


async def test_any_origin_gets_no_credentials_and_no_authorization_header(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "data", f"sqlite:///{tmp_path / 'index.db'}", cors_origins="*")
    async with in_process(settings) as client:
        preflight = {"Origin": "http://any.example", "Access-Control-Request-Method": "GET"}
        r = await client.options("/v2/studies", headers=preflight)
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in r.headers
        r = await client.options(
            "/v2/studies", headers={**preflight, "Access-Control-Request-Headers": "authorization"}
        )
        assert r.status_code == 400
        r = await client.get("/v2/studies", headers={"Origin": "http://any.example"})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in r.headers


async def test_named_origins_beside_any_origin_keep_their_rights(tmp_path: Path) -> None:
    origins = f"*,{VIEWER}"
    settings = settings_for(tmp_path / "data", f"sqlite:///{tmp_path / 'index.db'}", cors_origins=origins)
    async with in_process(settings) as client:
        for origin, allowed in ((VIEWER, True), ("http://any.example", False)):
            r = await client.options(
                "/v2/studies", headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
            )
            assert (r.status_code == 200) is allowed, (origin, r.text)
        r = await client.get("/v2/studies", headers={"Origin": VIEWER})
        assert r.headers["access-control-allow-origin"] == VIEWER
        assert r.headers["access-control-allow-credentials"] == "true"
