"""The route table: every HTTP endpoint as data (name, method, path, handler, documentation).

``app.py`` builds the Starlette routes from it and ``openapi.py`` renders the OpenAPI document from it,
so the two cannot drift. The table is in the order Starlette matches it (and the document lists it)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from dicomd.api import changefeed, delete, health, openapi, qido, rendered, stow, wado, wado_uri
from dicomd.api.services import services
from dicomd.auth.authorize import require

Handler = Callable[[Request], Awaitable[Response]]

_SEE_CONFORMANCE = (("default", "see docs/conformance-statement.md"),)


@dataclass(frozen=True)
class Endpoint:
    """One method on one path. ``name`` is unique (Starlette's route name too); ``action`` is the data
    action a caller's roles must grant (auth/authorize.py; None: any caller); ``summary`` and
    ``responses`` ((status or "default", description) pairs) are what the OpenAPI document says of it."""

    name: str
    method: str
    path: str
    handler: Handler
    action: str | None
    summary: str
    responses: tuple[tuple[str, str], ...] = _SEE_CONFORMANCE

    @property
    def path_params(self) -> tuple[str, ...]:
        """Names of the path's placeholders, in order ("{path:path}" gives "path")."""
        return tuple(re.findall(r"\{(\w+)", self.path))

    def route(self) -> Route:
        return Route(self.path, require(self.action, self.handler), methods=[self.method], name=self.name)


async def _api_document(request: Request) -> Response:
    # defined here, not in openapi.py, so that openapi.py renders a table it is given and imports neither
    # this module nor app.py (no import cycle)
    partitions = services(request).settings.partitions
    return openapi.response(
        int(request.path_params["version"]), VERSIONED, UNVERSIONED, partitions=partitions
    )


_STUDY = "/studies/{study}"
_SERIES = _STUDY + "/series/{series}"
_INSTANCE = _SERIES + "/instances/{instance}"
_FRAMES_PATH = _INSTANCE + "/frames/{frames}"

_STOW = "Store instances (STOW-RS)"
_SEARCH = "Search (QIDO-RS)"
_RETRIEVE = "Retrieve instances (WADO-RS)"
_METADATA = "Retrieve metadata (WADO-RS)"
_BULKDATA = "Retrieve bulk data (WADO-RS)"
_FRAMES = "Retrieve frames (WADO-RS)"
_RENDERED = "Retrieve rendered images (WADO-RS)"
_THUMBNAIL = "Retrieve a thumbnail (WADO-RS)"
_WADO_URI = "Retrieve an instance or a rendered image (WADO-URI: ?requestType=WADO&...)"
_DELETE = "Delete a study, series or instance"

# Routes of one API version, mounted under /v{n} (n in SUPPORTED_VERSIONS).
VERSIONED: tuple[Endpoint, ...] = (
    # STOW-RS
    Endpoint("stow.store", "POST", "/studies", stow.store, "write", _STOW),
    Endpoint("stow.store_study", "POST", _STUDY, stow.store, "write", _STOW),
    # QIDO-RS
    Endpoint("qido.search_studies", "GET", "/studies", qido.search_studies, "read", _SEARCH),
    Endpoint("qido.search_series", "GET", "/series", qido.search_series, "read", _SEARCH),
    Endpoint("qido.search_instances", "GET", "/instances", qido.search_instances, "read", _SEARCH),
    Endpoint("qido.search_study_series", "GET", _STUDY + "/series", qido.search_series, "read", _SEARCH),
    Endpoint(
        "qido.search_study_instances", "GET", _STUDY + "/instances", qido.search_instances, "read", _SEARCH
    ),
    Endpoint(
        "qido.search_series_instances", "GET", _SERIES + "/instances", qido.search_instances, "read", _SEARCH
    ),
    # WADO-RS
    Endpoint("wado.retrieve_study", "GET", _STUDY, wado.retrieve, "read", _RETRIEVE),
    Endpoint("wado.retrieve_series", "GET", _SERIES, wado.retrieve, "read", _RETRIEVE),
    Endpoint("wado.retrieve_instance", "GET", _INSTANCE, wado.retrieve, "read", _RETRIEVE),
    Endpoint("wado.retrieve_study_metadata", "GET", _STUDY + "/metadata", wado.metadata, "read", _METADATA),
    Endpoint("wado.retrieve_series_metadata", "GET", _SERIES + "/metadata", wado.metadata, "read", _METADATA),
    Endpoint(
        "wado.retrieve_instance_metadata", "GET", _INSTANCE + "/metadata", wado.metadata, "read", _METADATA
    ),
    Endpoint(
        "wado.retrieve_bulkdata", "GET", _INSTANCE + "/bulkdata/{path:path}", wado.bulkdata, "read", _BULKDATA
    ),
    Endpoint("wado.retrieve_frames", "GET", _FRAMES_PATH, wado.frames, "read", _FRAMES),
    # Rendered and thumbnail (PS3.18 8.3.5)
    Endpoint("rendered.study", "GET", _STUDY + "/rendered", rendered.rendered, "read", _RENDERED),
    Endpoint("rendered.series", "GET", _SERIES + "/rendered", rendered.rendered, "read", _RENDERED),
    Endpoint("rendered.instance", "GET", _INSTANCE + "/rendered", rendered.rendered, "read", _RENDERED),
    Endpoint("rendered.frames", "GET", _FRAMES_PATH + "/rendered", rendered.rendered, "read", _RENDERED),
    Endpoint(
        "rendered.thumbnail_study", "GET", _STUDY + "/thumbnail", rendered.thumbnail, "read", _THUMBNAIL
    ),
    Endpoint(
        "rendered.thumbnail_series", "GET", _SERIES + "/thumbnail", rendered.thumbnail, "read", _THUMBNAIL
    ),
    Endpoint(
        "rendered.thumbnail_instance", "GET", _INSTANCE + "/thumbnail", rendered.thumbnail, "read", _THUMBNAIL
    ),
    Endpoint(
        "rendered.thumbnail_frames",
        "GET",
        _FRAMES_PATH + "/thumbnail",
        rendered.thumbnail,
        "read",
        _THUMBNAIL,
    ),
    # WADO-URI (PS3.18 chapter 9): at the version root (OHIF's wadouri) and at /wado
    Endpoint("wado_uri.root", "GET", "/", wado_uri.retrieve, "read", _WADO_URI),
    Endpoint("wado_uri.wado", "GET", "/wado", wado_uri.retrieve, "read", _WADO_URI),
    # Delete
    Endpoint("delete.study", "DELETE", _STUDY, delete.delete, "delete", _DELETE),
    Endpoint("delete.series", "DELETE", _SERIES, delete.delete, "delete", _DELETE),
    Endpoint("delete.instance", "DELETE", _INSTANCE, delete.delete, "delete", _DELETE),
    # Change feed
    Endpoint("changefeed.changes", "GET", "/changefeed", changefeed.changefeed, "read", "Change feed"),
    Endpoint(
        "changefeed.latest",
        "GET",
        "/changefeed/latest",
        changefeed.latest,
        "read",
        "Latest change feed entry",
    ),
    # OpenAPI
    Endpoint("openapi.document", "GET", "/api.json", _api_document, None, "This OpenAPI document"),
)

# Routes outside the versioned API.
UNVERSIONED: tuple[Endpoint, ...] = (
    Endpoint(
        "health.check", "GET", "/health/check", health.check, None, "Health check", (("200", "healthy"),)
    ),
    Endpoint(
        "health.ready",
        "GET",
        "/health/ready",
        health.ready,
        None,
        "Readiness",
        (("200", "ready"), ("503", "not ready")),
    ),
    Endpoint("health.live", "GET", "/health/live", health.live, None, "Liveness", (("200", "alive"),)),
)


def dicomweb_routes() -> list[BaseRoute]:
    """Routes of one API version (mounted under /v1 and /v2)."""
    return [endpoint.route() for endpoint in VERSIONED]


def unversioned_routes() -> list[BaseRoute]:
    return [endpoint.route() for endpoint in UNVERSIONED]
