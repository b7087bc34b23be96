"""Data partition routes in process: served only with `partitions` on, names checked (400), unknown
partitions 404 except for a store (created when `create_partitions` is on), the list, RetrieveURLs into
the partition, and a caller restricted to some partitions (403 whether or not the partition exists).
Isolation of the data between partitions is tested end to end (tests/e2e/test_partition_isolation.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.types import ASGIApp, Receive, Scope, Send

from dicomd.api.common import ApiError, error_response
from dicomd.api.partitions import partition_routes, resolve_partition
from dicomd.api.routes import dicomweb_routes
from dicomd.app import create_app
from dicomd.auth.principal import ACTIONS, Principal, set_principal

from support.asgi import BASE_URL, in_process, lifespan, settings_for, with_state
from support.backends import BACKENDS, backend_url
from support.dicom_files import make_instance, multipart
from support.dicomweb import RETRIEVE_URL, referenced_items, unique_id, value


@pytest.fixture(params=BACKENDS)
def index_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with backend_url(request.param, tmp_path) as url:
        yield url


def _client(tmp_path: Path, index_url: str, **flags: Any) -> Any:
    return in_process(settings_for(tmp_path / "data", index_url, **flags))


async def _store(client: httpx.AsyncClient, prefix: str, data: bytes) -> httpx.Response:
    body, content_type = multipart([data])
    return await client.post(f"{prefix}/studies", content=body, headers={"Content-Type": content_type})


async def _names(client: httpx.AsyncClient) -> list[str]:
    r = await client.get("/v2/partitions")
    assert r.status_code == 200, r.text
    return [p["partitionName"] for p in r.json()]


async def test_partition_routes_are_404_when_partitions_are_off(tmp_path: Path, index_url: str) -> None:
    async with _client(tmp_path, index_url) as client:
        for version in ("v1", "v2"):
            for method, path in (
                ("GET", f"/{version}/partitions"),
                ("GET", f"/{version}/partitions/a/studies"),
                ("GET", f"/{version}/partitions/default/changefeed"),
            ):
                r = await client.request(method, path)
                assert r.status_code == 404, (path, r.text)
                assert "not enabled" in r.json()["message"]
        r = await _store(client, "/v2/partitions/a", make_instance(patient_id=unique_id()))
        assert r.status_code == 404
        assert "not enabled" in r.json()["message"]
        # the un-prefixed routes are the default partition, as always
        r = await _store(client, "/v2", make_instance(patient_id=unique_id()))
        assert r.status_code == 200, r.text


async def test_list_starts_with_the_default_partition(tmp_path: Path, index_url: str) -> None:
    async with _client(tmp_path, index_url, partitions=True) as client:
        for version in ("v1", "v2"):
            r = await client.get(f"/{version}/partitions")
            assert r.status_code == 200, r.text
            assert r.headers["content-type"].startswith("application/json")
            [default] = r.json()
            assert default["partitionKey"] == 1
            assert default["partitionName"] == "default"
            assert datetime.fromisoformat(default["createdDate"]).tzinfo is not None
        assert (await client.post("/v2/partitions")).status_code == 405
        assert (await client.get("/v3/partitions")).status_code == 404


INVALID_NAMES = ("a%20b", "x" * 65, "%2E%2E", "%2E", "%C3%A4", "semi;colon", "star*", "plus+", "a%00")


async def test_invalid_partition_names_are_400(tmp_path: Path, index_url: str) -> None:
    async with _client(tmp_path, index_url, partitions=True) as client:
        for name in INVALID_NAMES:
            for method, path in (("GET", "/studies"), ("GET", "/changefeed"), ("DELETE", "/studies/1.2.3")):
                r = await client.request(method, f"/v2/partitions/{name}{path}")
                assert r.status_code == 400, (name, path, r.text)
                assert "not a valid partition name" in r.json()["message"]
            r = await _store(client, f"/v2/partitions/{name}", make_instance(patient_id=unique_id()))
            assert r.status_code == 400, (name, r.text)
        assert await _names(client) == ["default"]


async def test_valid_names_at_the_limits_are_accepted(tmp_path: Path, index_url: str) -> None:
    async with _client(tmp_path, index_url, partitions=True) as client:
        for name in ("x" * 64, "A.b_c-9", "-", "..."):
            r = await _store(client, f"/v2/partitions/{name}", make_instance(patient_id=unique_id()))
            assert r.status_code == 200, (name, r.text)
        assert await _names(client) == ["default", "x" * 64, "A.b_c-9", "-", "..."]


async def test_unknown_partition_is_404_except_for_a_store(tmp_path: Path, index_url: str) -> None:
    async with _client(tmp_path, index_url, partitions=True) as client:
        study = "1.2.826.0.1.3680043.10.1234.77"
        for method, path in (
            ("GET", "/studies"),
            ("GET", "/series"),
            ("GET", f"/studies/{study}"),
            ("GET", f"/studies/{study}/metadata"),
            ("DELETE", f"/studies/{study}"),
            ("GET", "/changefeed"),
            ("GET", "/changefeed/latest"),
            ("POST", "/changefeed"),  # a POST no route takes creates nothing
            ("POST", "/nothing-here"),
        ):
            r = await client.request(method, f"/v2/partitions/nowhere{path}")
            assert r.status_code == 404, (method, path, r.text)
            assert r.json()["message"] == "partition not found"
        assert await _names(client) == ["default"]

        data = make_instance(study=study, patient_id=unique_id())
        r = await _store(client, "/v2/partitions/nowhere", data)
        assert r.status_code == 200, r.text
        partitions = (await client.get("/v2/partitions")).json()
        assert [(p["partitionKey"], p["partitionName"]) for p in partitions] == [
            (1, "default"),
            (2, "nowhere"),
        ]
        # now it exists: its routes answer, the default partition does not hold the study
        assert (await client.get(f"/v2/partitions/nowhere/studies/{study}/metadata")).status_code == 200
        assert (await client.get(f"/v1/partitions/nowhere/studies/{study}/metadata")).status_code == 200
        assert (await client.get(f"/v2/studies/{study}/metadata")).status_code == 404
        assert (await client.get(f"/v2/partitions/default/studies/{study}/metadata")).status_code == 404


async def test_store_into_an_unknown_partition_is_404_without_create_partitions(
    tmp_path: Path, index_url: str
) -> None:
    async with _client(tmp_path, index_url, partitions=True, create_partitions=False) as client:
        r = await _store(client, "/v2/partitions/fresh", make_instance(patient_id=unique_id()))
        assert r.status_code == 404, r.text
        assert r.json()["message"] == "partition not found"
        assert await _names(client) == ["default"]
        # the default partition exists, under its name too
        r = await _store(client, "/v2/partitions/default", make_instance(patient_id=unique_id()))
        assert r.status_code == 200, r.text


async def test_urls_in_responses_point_into_the_partition(tmp_path: Path, index_url: str) -> None:
    async with _client(tmp_path, index_url, partitions=True) as client:
        patient = unique_id()
        data = make_instance(patient_id=patient)
        for version in ("v1", "v2"):
            prefix = f"{BASE_URL}/{version}/partitions/t-{version}"
            r = await _store(client, f"/{version}/partitions/t-{version}", data)
            assert r.status_code == 200, r.text
            assert value(r.json(), RETRIEVE_URL).startswith(f"{prefix}/studies/")
            [item] = referenced_items(r.json())
            assert value(item, RETRIEVE_URL).startswith(f"{prefix}/studies/")
            r = await client.get(
                f"/{version}/partitions/t-{version}/instances", params={"PatientID": patient}
            )
            [found] = r.json()
            assert value(found, RETRIEVE_URL).startswith(f"{prefix}/studies/")
        # the un-prefixed routes keep their URLs
        r = await _store(client, "/v2", data)
        assert value(r.json(), RETRIEVE_URL).startswith(f"{BASE_URL}/v2/studies/")


async def test_change_feed_names_the_partition(tmp_path: Path, index_url: str) -> None:
    async with _client(tmp_path, index_url, partitions=True) as client:
        await _store(client, "/v2/partitions/feed-a", make_instance(patient_id=unique_id()))
        await _store(client, "/v2", make_instance(patient_id=unique_id()))
        [entry] = (await client.get("/v2/partitions/feed-a/changefeed")).json()
        assert entry["PartitionName"] == "feed-a"
        [entry] = (await client.get("/v2/changefeed")).json()
        assert entry["PartitionName"] == "default"
        latest = (await client.get("/v1/partitions/feed-a/changefeed/latest")).json()
        assert latest["PartitionName"] == "feed-a"


# ---- a caller restricted to some partitions ------------------------------------------------------------


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message)


@pytest.fixture
async def restricted_client(tmp_path: Path, index_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose every request comes from a caller allowed in partitions "a" and "ghost" only (as a
    token's claim would restrict it), on the real routes and resolver; partitions "a" and "b" exist."""
    settings = settings_for(tmp_path / "data", index_url, partitions=True)
    app = create_app(settings)
    caller = Principal("tenant-a", ACTIONS, partitions=frozenset({"a", "ghost"}), method="test")

    def as_caller(inner: ASGIApp) -> ASGIApp:
        async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
            set_principal(scope, caller)
            await inner(scope, receive, send)

        return wrapped

    router = Starlette(routes=dicomweb_routes()).router
    restricted = Starlette(
        routes=[
            *partition_routes(router, settings, as_caller),
            Mount("/v{version}", app=as_caller(resolve_partition(router))),
        ],
        exception_handlers={ApiError: _api_error},
    )
    async with lifespan(app) as state:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=with_state(app, state)), base_url=BASE_URL
        ) as anonymous:
            for name in ("a", "b"):
                r = await _store(anonymous, f"/v2/partitions/{name}", make_instance(patient_id=unique_id()))
                assert r.status_code == 200, r.text
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=with_state(restricted, state)), base_url=BASE_URL
        ) as client:
            yield client


async def test_restricted_caller_gets_403_outside_its_partitions(
    restricted_client: httpx.AsyncClient,
) -> None:
    client = restricted_client
    # "b" exists, "elsewhere" does not: the same answer, so existence does not leak
    for path in ("/v2/partitions/b/studies", "/v2/partitions/elsewhere/studies", "/v2/studies"):
        r = await client.get(path)
        assert r.status_code == 403, (path, r.text)
        assert r.json()["message"] == "the caller is not allowed in this partition"
    r = await _store(client, "/v2/partitions/elsewhere", make_instance(patient_id=unique_id()))
    assert r.status_code == 403
    r = await client.get("/v2/partitions/a/studies")
    assert r.status_code == 200, r.text
    assert len(r.json()) == 1
    # allowed but missing: 404, and a store creates it
    assert (await client.get("/v2/partitions/ghost/studies")).status_code == 404
    r = await _store(client, "/v2/partitions/ghost", make_instance(patient_id=unique_id()))
    assert r.status_code == 200, r.text


async def test_restricted_caller_lists_only_its_partitions(restricted_client: httpx.AsyncClient) -> None:
    r = await restricted_client.get("/v2/partitions")
    assert r.status_code == 200, r.text
    assert [p["partitionName"] for p in r.json()] == ["a"]
