"""The ASGI application: versioned DICOMweb routes over one index, one object store, one committer."""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from dicomd.api import changefeed, delete, health, openapi, qido, stow, wado
from dicomd.api.common import SUPPORTED_VERSIONS, SUPPORTED_VERSIONS_HEADER, ApiError, error_response
from dicomd.config import Settings
from dicomd.index.store import Index
from dicomd.ingest.committer import GroupCommitter
from dicomd.ingest.service import IngestService
from dicomd.jobs.cleanup import CleanupJob
from dicomd.storage.local import LocalObjectStore

SETTINGS_ENV = "DICOMD_SETTINGS_JSON"
METADATA_CACHE_BYTES = 64 * 1024 * 1024  # per worker

_STUDY = "/studies/{study}"
_SERIES = _STUDY + "/series/{series}"
_INSTANCE = _SERIES + "/instances/{instance}"


def dicomweb_routes() -> list[BaseRoute]:
    """Routes of one API version (mounted under /v1 and /v2)."""
    return [
        # STOW-RS
        Route("/studies", stow.store, methods=["POST"]),
        Route(_STUDY, stow.store, methods=["POST"]),
        # QIDO-RS
        Route("/studies", qido.search_studies, methods=["GET"]),
        Route("/series", qido.search_series, methods=["GET"]),
        Route("/instances", qido.search_instances, methods=["GET"]),
        Route(_STUDY + "/series", qido.search_series, methods=["GET"]),
        Route(_STUDY + "/instances", qido.search_instances, methods=["GET"]),
        Route(_SERIES + "/instances", qido.search_instances, methods=["GET"]),
        # WADO-RS
        Route(_STUDY, wado.retrieve, methods=["GET"]),
        Route(_SERIES, wado.retrieve, methods=["GET"]),
        Route(_INSTANCE, wado.retrieve, methods=["GET"]),
        Route(_STUDY + "/metadata", wado.metadata, methods=["GET"]),
        Route(_SERIES + "/metadata", wado.metadata, methods=["GET"]),
        Route(_INSTANCE + "/metadata", wado.metadata, methods=["GET"]),
        Route(_INSTANCE + "/bulkdata/{path:path}", wado.bulkdata, methods=["GET"]),
        Route(_INSTANCE + "/frames/{frames}", wado.frames, methods=["GET"]),
        Route(_STUDY + "/rendered", wado.not_offered, methods=["GET"]),
        Route(_SERIES + "/rendered", wado.not_offered, methods=["GET"]),
        Route(_INSTANCE + "/rendered", wado.not_offered, methods=["GET"]),
        Route(_INSTANCE + "/frames/{frames}/rendered", wado.not_offered, methods=["GET"]),
        Route(_STUDY + "/thumbnail", wado.not_offered, methods=["GET"]),
        Route(_SERIES + "/thumbnail", wado.not_offered, methods=["GET"]),
        Route(_INSTANCE + "/thumbnail", wado.not_offered, methods=["GET"]),
        Route(_INSTANCE + "/frames/{frames}/thumbnail", wado.not_offered, methods=["GET"]),
        # Delete
        Route(_STUDY, delete.delete, methods=["DELETE"]),
        Route(_SERIES, delete.delete, methods=["DELETE"]),
        Route(_INSTANCE, delete.delete, methods=["DELETE"]),
        # Change feed
        Route("/changefeed", changefeed.changefeed, methods=["GET"]),
        Route("/changefeed/latest", changefeed.latest, methods=["GET"]),
        # OpenAPI
        Route("/api.json", openapi.document, methods=["GET"]),
    ]


_VERSIONS_HEADER = (b"api-supported-versions", SUPPORTED_VERSIONS_HEADER.encode())


class VersionHeaders:
    """Adds api-supported-versions to every response (unknown versions are refused by _check_version)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: dict) -> None:  # type: ignore[type-arg]
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    _VERSIONS_HEADER,
                ]
            await send(message)

        await self.app(scope, receive, send_with_header)  # type: ignore[arg-type]


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = exc.detail or "error"
    if exc.status_code == 404:
        message = "no such resource; DICOMweb routes live under /v1/ and /v2/"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on this resource"
    return error_response(exc.status_code, message, dict(exc.headers or {}))


def _check_version(app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> ASGIApp:
    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        version = scope.get("path_params", {}).get("version")
        if version not in SUPPORTED_VERSIONS:
            response = error_response(404, f"API version v{version} is not supported; use /v1/ or /v2/")
            await response(scope, receive, send)
            return
        await app(scope, receive, send)

    return wrapped


def create_app(settings: Settings, *, migrate: bool = True) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # ingest allocates many short-lived dicts (DICOM JSON); the default gen-0 threshold (700) runs
        # the cycle collector thousands of times a second for garbage that reference counting frees anyway
        gc.freeze()
        gc.set_threshold(50_000, 20, 20)
        index = Index(settings.effective_index_url)
        if migrate:
            prepare(settings, index)
        store = LocalObjectStore(settings.effective_storage_path)
        committer = GroupCommitter(
            index, store, overwrite=settings.duplicate_policy == "overwrite", max_batch=settings.commit_batch
        )
        cleanup = CleanupJob(index, store)
        app.state.settings = settings
        app.state.index = index
        app.state.store = store
        app.state.ingest = IngestService(store, committer, bulk_threshold=settings.bulk_threshold)
        app.state.cleanup = cleanup
        app.state.metadata_cache = wado.MetadataCache(METADATA_CACHE_BYTES)
        committer.start()
        cleanup.start()
        try:
            yield
        finally:
            await cleanup.stop()
            await committer.stop()
            index.close()

    versioned = Mount("/v{version:int}", app=_check_version(Starlette(routes=dicomweb_routes()).router))
    app = Starlette(
        routes=[Route("/health/check", health.check, methods=["GET"]), versioned],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.add_middleware(VersionHeaders)  # type: ignore[arg-type]
    app.state.settings = settings
    return app


def prepare(settings: Settings, index: Index | None = None) -> None:
    """Start-up work done once, before workers start: data dirs, migration, recovery of staged objects."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    own = index is None
    index = index or Index(settings.effective_index_url)
    try:
        index.migrate()
        store = LocalObjectStore(settings.effective_storage_path)
        store.recover(index.has_object)
    finally:
        if own:
            index.close()


def app_from_environment() -> Starlette:
    """uvicorn worker entry point: the parent process passes settings in the environment."""
    return create_app(Settings.from_json(os.environ[SETTINGS_ENV]), migrate=False)
