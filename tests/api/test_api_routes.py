"""The route table (api/routes.py): unique names, the OpenAPI document rendered from it, the served
application routing every documented operation, and no import cycle between app, routes and openapi."""

from __future__ import annotations

import re
import subprocess
import sys

import httpx
import orjson
import pytest
from starlette.routing import Route

from dicomd.api import openapi
from dicomd.api.common import SUPPORTED_VERSIONS
from dicomd.api.routes import UNVERSIONED, VERSIONED, dicomweb_routes, unversioned_routes

from support.dicom_files import new_uid

ALL = (*VERSIONED, *UNVERSIONED)


def test_route_names_are_unique_and_name_their_module() -> None:
    names = [e.name for e in ALL]
    assert len(names) == len(set(names))
    for e in ALL:
        module, _, action = e.name.partition(".")
        # the document's handler lives with the table it renders
        home = "dicomd.api.routes" if module == "openapi" else f"dicomd.api.{module}"
        assert action and e.handler.__module__ == home, e.name


def test_each_method_and_path_is_in_the_table_once() -> None:
    keys = [(e.method, e.path) for e in ALL]
    assert len(keys) == len(set(keys))


def test_starlette_routes_carry_the_table() -> None:
    routes = [*dicomweb_routes(), *unversioned_routes()]
    assert len(routes) == len(ALL)
    for route, e in zip(routes, ALL, strict=True):
        assert isinstance(route, Route)
        assert (route.name, route.path) == (e.name, e.path)
        # the handler itself, or wrapped by the authorisation of the entry's action
        assert getattr(route.endpoint, "__wrapped__", route.endpoint) is e.handler
        assert route.methods == ({e.method, "HEAD"} if e.method == "GET" else {e.method})


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_document_describes_every_entry(version: int) -> None:
    doc = openapi.build(version, VERSIONED, UNVERSIONED)
    assert doc["info"]["version"].endswith(f"(API v{version})")
    described = [(m, p) for p, ops in doc["paths"].items() for m in ops]
    assert len(described) == len(ALL)
    for e in ALL:
        prefix = f"/v{version}" if e in VERSIONED else ""
        path = prefix + e.path.replace("{path:path}", "{path}")
        op = doc["paths"][path][e.method.lower()]
        assert op["summary"] == e.summary
        assert [p["name"] for p in op["parameters"]] == re.findall(r"\{(\w+)\}", path)
        assert op["responses"] == {status: {"description": text} for status, text in e.responses}


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_document_describes_the_partition_routes_when_partitions_are_on(version: int) -> None:
    doc = openapi.build(version, VERSIONED, UNVERSIONED, partitions=True)
    assert "get" in doc["paths"][f"/v{version}/partitions"]
    for e in VERSIONED:
        path = f"/v{version}/partitions/{{partition}}" + e.path.replace("{path:path}", "{path}")
        op = doc["paths"][path][e.method.lower()]
        assert [p["name"] for p in op["parameters"]] == re.findall(r"\{(\w+)\}", path)
    assert not any("/partitions" in p for p in openapi.build(version, VERSIONED, UNVERSIONED)["paths"])


@pytest.mark.parametrize(
    "module, not_loaded",
    [
        ("dicomd.api.openapi", ["dicomd.app", "dicomd.api.routes"]),
        ("dicomd.api.routes", ["dicomd.app"]),
        ("dicomd.startup", ["dicomd.app", "dicomd.api.routes", "starlette"]),
        ("dicomd.app", []),
    ],
)
def test_modules_import_alone_without_a_cycle(module: str, not_loaded: list[str]) -> None:
    code = f"import sys, {module}; print([m for m in {not_loaded!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


async def test_served_document_is_the_table_and_every_operation_is_routed(
    app_client: httpx.AsyncClient,
) -> None:
    r = await app_client.get("/v2/api.json")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.content == orjson.dumps(openapi.build(2, VERSIONED, UNVERSIONED))
    values = {"study": new_uid(), "series": new_uid(), "instance": new_uid(), "frames": "1", "path": "x"}
    for path, ops in r.json()["paths"].items():
        url = re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)
        for method in ops:
            answer = await app_client.request(method.upper(), url)
            # the router's own 404 and 405 name the resource or the method; a handler's do not
            assert answer.status_code != 405, (method, path)
            if answer.status_code == 404:
                assert not answer.json()["message"].startswith("no such resource"), (method, path)
