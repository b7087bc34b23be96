"""The ASGI application: the route table (api/routes.py) mounted per API version, middleware, error
handlers and the lifespan that builds each worker's services (api/services.py: one index, one object
store, one committer) and hands them to the handlers."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from types import FrameType
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomd.api.common import SUPPORTED_VERSIONS, SUPPORTED_VERSIONS_HEADER, ApiError, error_response
from dicomd.api.health import RETRY_AFTER
from dicomd.api.partitions import partition_routes, resolve_partition
from dicomd.api.response_cache import ResponseCache
from dicomd.api.routes import dicomweb_routes, unversioned_routes
from dicomd.api.services import Lifecycle, Services
from dicomd.audit.middleware import audited
from dicomd.auth.middleware import authentication
from dicomd.config import Settings
from dicomd.http import connections
from dicomd.http.cors import cors
from dicomd.http.security import protected
from dicomd.index.store import unavailable_errors
from dicomd.jobs.cleanup import CleanupJob
from dicomd.jobs.sweep import OrphanSweep
from dicomd.pixels.service import PixelService
from dicomd.process_tuning import tune_for_throughput
from dicomd.startup import close_ingest, open_ingest
from dicomd.storage import StorageUnavailable

log = logging.getLogger(__name__)

SETTINGS_ENV = "DICOMD_SETTINGS_JSON"
METADATA_CACHE_BYTES = 64 * 1024 * 1024  # per worker

_VERSIONS_HEADER = (b"api-supported-versions", SUPPORTED_VERSIONS_HEADER.encode())


class VersionHeaders:
    """Adds api-supported-versions to every response (unknown versions are refused by _check_version)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    _VERSIONS_HEADER,
                ]
            await send(message)

        await self.app(scope, receive, send_with_header)


# /v{n} or /v{n}/partitions/{name} with a WADO-URI query: OHIF's wadoUriRoot + "?requestType=WADO&..."
_WADO_URI_ROOT = re.compile(r"/v[^/]+(/partitions/[^/]+)?")


class WadoUriRoot:
    """A WADO-URI request to /v{n} or /v{n}/partitions/{name} without the closing slash is served as
    .../ (the WADO-URI route, api/wado_uri.py) rather than redirected: some viewers do not follow a
    redirect of an image request, and the partition prefix would not match at all."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and _WADO_URI_ROOT.fullmatch(scope["path"])
            and b"requesttype=" in scope.get("query_string", b"").lower()
        ):
            scope = {**scope, "path": scope["path"] + "/"}
            if scope.get("raw_path"):
                scope["raw_path"] = scope["raw_path"] + b"/"
        await self.app(scope, receive, send)


class ClientDisconnects:
    """A client that goes away mid-request (an aborted upload or download) is normal: one info line
    without the URL (it carries UIDs and names), not an error with a traceback."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        except (ClientDisconnect, ConnectionError) as exc:
            log.info("client disconnected during a %s request (%s)", scope.get("method"), type(exc).__name__)


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


async def _index_unavailable(request: Request, exc: Exception) -> Response:
    """The index is down, slow or busy (no connection in time, a statement or lock timeout, a lost
    connection): the client should try again, here or at another replica."""
    # the type only: a database error's text may quote a statement's values
    log.warning("index unavailable during a %s request (%s)", request.method, type(exc).__name__)
    return error_response(
        503, "the index database is unavailable or busy; try again later", {"Retry-After": RETRY_AFTER}
    )


async def _storage_unavailable(request: Request, exc: Exception) -> Response:
    """The object store is down or slow (StorageUnavailable: its message names no PHI)."""
    log.warning("object store unavailable during a %s request: %s", request.method, exc)
    return error_response(
        503, "the object store is unavailable; try again later", {"Retry-After": RETRY_AFTER}
    )


@contextlib.contextmanager
def _draining_on_sigterm(lifecycle: Lifecycle) -> Iterator[None]:
    """Mark the worker draining as soon as it is told to stop (SIGTERM), before uvicorn's own handler
    starts closing connections, so that /health/ready turns load balancers away meanwhile. Only in the
    main thread (a worker process; an application tested in-process keeps the handlers it has)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)

    def draining(signum: int, frame: FrameType | None) -> None:
        lifecycle.draining = True
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, draining)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is draining:
            signal.signal(signal.SIGTERM, previous)


def _check_version(app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> ASGIApp:
    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        # the segment is matched as text: an int converter would parse thousands of digits (a 500)
        segment = str(scope.get("path_params", {}).get("version", ""))
        version = int(segment) if segment.isascii() and segment.isdigit() and len(segment) <= 3 else None
        if version not in SUPPORTED_VERSIONS:
            shown = segment if len(segment) <= 16 else segment[:16] + "..."
            response = error_response(404, f"API version v{shown} is not supported; use /v1/ or /v2/")
            await response(scope, receive, send)
            return
        scope["path_params"]["version"] = version
        await app(scope, receive, send)

    return wrapped


def _wrapping(wrap: Callable[[ASGIApp, Settings], ASGIApp], settings: Settings) -> Any:
    """A middleware class for ``add_middleware`` from a function that wraps an ASGI app."""

    class Wrapped:
        def __init__(self, app: ASGIApp) -> None:
            self.app = wrap(app, settings)

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await self.app(scope, receive, send)

    return Wrapped


def create_app(settings: Settings, *, migrate: bool = True) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[Mapping[str, Any]]:
        ingest = await open_ingest(settings, migrate=migrate, lone_request=connections.lone_request)
        index, store = ingest.committer.index, ingest.store
        cleanup = CleanupJob(index, store)
        sweep = OrphanSweep(index, store, grace_period=settings.orphan_grace_period)
        lifecycle = Lifecycle()
        services = Services(
            settings=settings,
            index=index,
            store=store,
            ingest=ingest,
            cleanup=cleanup,
            metadata_cache=ResponseCache(METADATA_CACHE_BYTES),
            pixels=PixelService(workers=settings.pixel_workers, memory_limit=settings.pixel_memory_limit),
            render_cache=ResponseCache(settings.render_cache_bytes),
            sweep=sweep,
            lifecycle=lifecycle,
        )
        cleanup.start()
        sweep.start()
        try:
            with _draining_on_sigterm(lifecycle):
                yield services.lifespan_state()
        finally:
            lifecycle.draining = True
            await sweep.stop()
            await cleanup.stop()
            services.pixels.close()
            await close_ingest(ingest)

    router = Starlette(routes=dicomweb_routes()).router

    # the version is checked, then the caller authenticated, then the partition resolved (and the
    # caller's right to it checked), then the route's own action (api/routes.py)
    authenticated = authentication(settings)  # one token cache and key set for every mount

    def guarded(inner: ASGIApp) -> ASGIApp:
        return _check_version(authenticated(inner))

    versioned = Mount("/v{version}", app=guarded(resolve_partition(router)))
    partitioned = partition_routes(router, settings, guarded)
    app = Starlette(
        routes=[*unversioned_routes(), *partitioned, versioned],
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            **dict.fromkeys(unavailable_errors(), _index_unavailable),
            StorageUnavailable: _storage_unavailable,
        },
        lifespan=lifespan,
    )
    app.add_middleware(VersionHeaders)
    app.add_middleware(ClientDisconnects)
    app.add_middleware(_wrapping(protected, settings))  # Host check, security headers, rate limit
    # outside them: audit sees every request's final outcome (a 401 from authentication, a 429 included)
    app.add_middleware(_wrapping(audited, settings))
    if settings.cors_origins:  # error responses carry the CORS headers too
        app.add_middleware(_wrapping(cors, settings))
    app.add_middleware(WadoUriRoot)  # outermost: every layer sees the path that is served
    return app


def app_from_environment() -> Starlette:
    """uvicorn worker entry point: the parent process passes settings in the environment."""
    tune_for_throughput()  # process-wide: here in the worker, not in create_app
    return create_app(Settings.from_json(os.environ[SETTINGS_ENV]), migrate=False)
