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


def _operation(op: Operation) -> dict[str, Any]:
    return {
        "summary": op.summary,
        "parameters": [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in op.path_params
        ],
        "responses": {status: {"description": text} for status, text in op.responses},
    }


def build(version: int, versioned: Iterable[Operation], unversioned: Iterable[Operation]) -> dict[str, Any]:
    """The document for API version ``version``: the versioned routes under /v{version}, then the others."""
    paths: dict[str, dict[str, Any]] = {}
    prefixed = [(f"/v{version}", op) for op in versioned] + [("", op) for op in unversioned]
    for prefix, op in prefixed:
        path = prefix + re.sub(r"\{(\w+)(:\w+)?\}", r"{\1}", op.path)  # OpenAPI has no "{name:converter}"
        paths.setdefault(path, {})[op.method.lower()] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {"title": "dicomd DICOMweb API", "version": f"{__version__} (API v{version})"},
        "paths": paths,
    }


def response(version: int, versioned: Iterable[Operation], unversioned: Iterable[Operation]) -> Response:
    return Response(orjson.dumps(build(version, versioned, unversioned)), media_type="application/json")
