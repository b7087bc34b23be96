"""Shared pieces of the HTTP API: version context, errors, URLs and JSON responses."""

from __future__ import annotations

import functools
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from dicomd.api.services import services
from dicomd.dicom.uids import is_valid_uid
from dicomd.http.negotiation import accept_header_allows, parse_accept

SUPPORTED_VERSIONS = (1, 2)
SUPPORTED_VERSIONS_HEADER = "1, 2"
DICOM_JSON = "application/dicom+json"
# "/partitions/{name}" on the scope of a request that named its partition in the URL (api/partitions.py)
PARTITION_PATH_KEY = "dicomd.partition_path"


class ApiError(Exception):
    """An error answered as JSON by ``error_response``: {"status": <HTTP status>, "message": ..}."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps({"status": status, "message": message})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def api_version(request: Request) -> int:
    return int(request.path_params.get("version", 2))


def base_url(request: Request) -> str:
    """Versioned base URL, e.g. http://host:8080/v2 or http://host:8080/v2/partitions/a for a request to
    a named partition - what RetrieveURL and BulkDataURI start with."""
    versioned = f"/v{api_version(request)}{request.scope.get(PARTITION_PATH_KEY, '')}"
    configured = services(request).settings.base_url
    if configured:
        return f"{configured}{versioned}"
    netloc = request.url.netloc
    server = request.scope.get("server")
    port = server[1] if server else None
    if ":" not in netloc.rsplit("]", 1)[-1] and isinstance(port, int) and port not in (80, 443):
        # some clients (dicomweb-client) send "Host: name" without the port they connected to;
        # behind a reverse proxy, set base_url instead
        netloc = f"{netloc}:{port}"
    return f"{request.url.scheme}://{netloc}{versioned}"


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type=DICOM_JSON, headers=headers)


def raw_json_response(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(body, status_code=status, media_type=DICOM_JSON, headers=headers)


def require_json_accept(request: Request, what: str = "this resource") -> None:
    accept = request.headers.get("accept")
    allowed = _json_accepted(accept) if accept is None or len(accept) <= 1024 else _json_allowed(accept)
    if not allowed:
        raise ApiError(406, f"{what} is only available as application/dicom+json")


def _json_allowed(accept: str | None) -> bool:
    return accept_header_allows(parse_accept(accept), DICOM_JSON)


# clients send the same Accept header request after request: negotiated once per value (bounded)
_json_accepted = functools.lru_cache(maxsize=128)(_json_allowed)


def uid_param(request: Request, name: str) -> str | None:
    """The validated UID path parameter `name`, or None when the route has none."""
    value: str | None = request.path_params.get(name)
    if value is not None and not is_valid_uid(value):
        raise ApiError(400, f"'{value}' is not a valid UID for {name}")
    return value


def uid_scope(request: Request) -> tuple[str, str | None, str | None]:
    """(study, series, instance) of a study-rooted route."""
    study = uid_param(request, "study")
    assert study is not None, "route without {study}"
    return study, uid_param(request, "series"), uid_param(request, "instance")


def not_found(series: str | None, instance: str | None) -> ApiError:
    what = "instance" if instance else "series" if series else "study"
    return ApiError(404, f"the requested {what} does not exist")


def study_url(base: str, study: str) -> str:
    return f"{base}/studies/{study}"


def series_url(base: str, study: str, series: str) -> str:
    return f"{base}/studies/{study}/series/{series}"


def instance_url(base: str, study: str, series: str, instance: str) -> str:
    return f"{base}/studies/{study}/series/{series}/instances/{instance}"


def ur(value: str) -> dict[str, Any]:
    return {"vr": "UR", "Value": [value]}


def ui(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]}


def us(value: int) -> dict[str, Any]:
    return {"vr": "US", "Value": [value]}
