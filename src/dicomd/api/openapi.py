"""OpenAPI 3.1 document of the DICOMweb routes, generated from the route table so it cannot drift."""

from __future__ import annotations

import re
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dicomd import __version__

_SUMMARIES = {
    ("POST", "stow"): "Store instances (STOW-RS)",
    ("GET", "search"): "Search (QIDO-RS)",
    ("GET", "retrieve"): "Retrieve instances (WADO-RS)",
    ("GET", "metadata"): "Retrieve metadata (WADO-RS)",
    ("GET", "bulkdata"): "Retrieve bulk data (WADO-RS)",
    ("GET", "frames"): "Retrieve frames (WADO-RS)",
    ("GET", "not_offered"): "Rendered / thumbnail (not offered yet: 406)",
    ("DELETE", "delete"): "Delete a study, series or instance",
    ("GET", "changefeed"): "Change feed",
    ("GET", "latest"): "Latest change feed entry",
    ("GET", "document"): "This OpenAPI document",
}


def _summary(method: str, endpoint: Any) -> str:
    name = getattr(endpoint, "__name__", "")
    if name == "store":
        name = "stow"
    if name == "handler":
        name = "search"
    return _SUMMARIES.get((method, name), name)


def build(version: int) -> dict[str, Any]:
    from dicomd.app import dicomweb_routes  # the route table is the single source of truth

    paths: dict[str, dict[str, Any]] = {}
    for route in dicomweb_routes():
        assert isinstance(route, Route)
        path = f"/v{version}" + re.sub(r"\{(\w+)(:\w+)?\}", r"{\1}", route.path)
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"\{(\w+)", route.path)
        ]
        for method in sorted((route.methods or set()) - {"HEAD"}):
            paths.setdefault(path, {})[method.lower()] = {
                "summary": _summary(method, route.endpoint),
                "parameters": params,
                "responses": {"default": {"description": "see docs/conformance-statement.md"}},
            }
    paths["/health/check"] = {
        "get": {"summary": "Health check", "responses": {"200": {"description": "healthy"}}}
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "dicomd DICOMweb API", "version": f"{__version__} (API v{version})"},
        "paths": paths,
    }


async def document(request: Request) -> Response:
    return Response(orjson.dumps(build(int(request.path_params["version"]))), media_type="application/json")
