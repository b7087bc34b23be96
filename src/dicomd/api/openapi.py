"""OpenAPI 3.1 document of the HTTP API, rendered from the route table (api/routes.py) so it cannot drift.

The table is passed in rather than imported: its own entry for this document needs a handler, and taking
the table as an argument keeps this module free of an import cycle with api/routes.py."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Protocol

import orjson
from starlette.responses import Response

from dicomd import __version__


class Operation(Protocol):
    """What the document needs of a route table entry (api.routes.Endpoint)."""

    @property
    def method(self) -> str: ...

    @property
    def path(self) -> str: ...

    @property
    def summary(self) -> str: ...

    @property
    def responses(self) -> tuple[tuple[str, str], ...]: ...

    @property
    def path_params(self) -> tuple[str, ...]: ...


def _operation(op: Operation, partitioned: bool = False) -> dict[str, Any]:
    names = ("partition", *op.path_params) if partitioned else op.path_params
    return {
        "summary": op.summary,
        "parameters": [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in names
        ],
        "responses": {status: {"description": text} for status, text in op.responses},
    }


_PARTITION_LIST = {
    "summary": "List the data partitions the caller may use",
    "parameters": [],
    "responses": {"200": {"description": "[{partitionKey, partitionName, createdDate}]"}},
}


def build(
    version: int,
    versioned: Iterable[Operation],
    unversioned: Iterable[Operation],
    *,
    partitions: bool = False,
) -> dict[str, Any]:
    """The document for API version ``version``: the versioned routes under /v{version} (and, with data
    partitions on, under /v{version}/partitions/{partition} too), then the others."""
    paths: dict[str, dict[str, Any]] = {}
    versioned = list(versioned)
    prefixed = [(f"/v{version}", op, False) for op in versioned]
    if partitions:
        paths[f"/v{version}/partitions"] = {"get": _PARTITION_LIST}
        prefixed += [(f"/v{version}/partitions/{{partition}}", op, True) for op in versioned]
    prefixed += [("", op, False) for op in unversioned]
    for prefix, op, partitioned in prefixed:
        path = prefix + re.sub(r"\{(\w+)(:\w+)?\}", r"{\1}", op.path)  # OpenAPI has no "{name:converter}"
        paths.setdefault(path, {})[op.method.lower()] = _operation(op, partitioned)
    return {
        "openapi": "3.1.0",
        "info": {"title": "dicomd DICOMweb API", "version": f"{__version__} (API v{version})"},
        "paths": paths,
    }


def response(
    version: int,
    versioned: Iterable[Operation],
    unversioned: Iterable[Operation],
    *,
    partitions: bool = False,
) -> Response:
    document = build(version, versioned, unversioned, partitions=partitions)
    return Response(orjson.dumps(document), media_type="application/json")
