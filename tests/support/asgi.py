"""The application in the test's own process: `create_app(settings)` with its lifespan run as an ASGI server
runs it (startup before the first request, shutdown after the last), and an `httpx.AsyncClient` that calls
it through `httpx.ASGITransport`. For API tests of one request's HTTP behaviour (status, error bodies,
headers, negotiation); what needs worker processes, real sockets, durability or timeouts stays end to end
against a real `dicomd serve` (support/server.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomd.app import create_app
from dicomd.config import Settings, load_settings

BASE_URL = "http://dicomd.test"


def settings_for(data_dir: Path, index_url: str, **flags: Any) -> Settings:
    """Settings as `dicomd serve --data-dir ... --index-url ... --<flag> ...` gets them (the environment's
    DICOMD_* variables and DICOMD_CONFIG apply too, as they do to a real server). BASE_URL's host is
    trusted (dicomd.http.security), unless the test names its own trusted hosts."""
    trusted = {"trusted_hosts": httpx.URL(BASE_URL).host}
    return load_settings(flags={"data_dir": str(data_dir), "index_url": index_url, **trusted, **flags})


@contextlib.asynccontextmanager
async def lifespan(app: ASGIApp) -> AsyncIterator[dict[str, Any]]:
    """Run the ASGI lifespan protocol against `app` (through its middleware, as uvicorn does) and yield
    the state the lifespan filled in."""
    state: dict[str, Any] = {}
    to_app: asyncio.Queue[Message] = asyncio.Queue()
    from_app: asyncio.Queue[Message] = asyncio.Queue()
    scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": state}

    async def receive() -> Message:
        return await to_app.get()

    async def send(message: Message) -> None:
        await from_app.put(message)

    task: asyncio.Future[None] = asyncio.ensure_future(app(scope, receive, send))

    async def answer(expected: str) -> None:
        waiting = asyncio.ensure_future(from_app.get())
        either: set[asyncio.Future[Any]] = {waiting, task}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if not waiting.done():  # the application returned (or raised) without answering
            waiting.cancel()
            task.result()
            raise RuntimeError(f"the application ended its lifespan without {expected}")
        message = waiting.result()
        if message["type"] != expected:
            with contextlib.suppress(Exception):
                await task  # Starlette re-raises what failed after saying so
            raise RuntimeError(f"lifespan: {message['type']}: {message.get('message', '')}")

    await to_app.put({"type": "lifespan.startup"})
    await answer("lifespan.startup.complete")
    try:
        yield state
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        await answer("lifespan.shutdown.complete")
        await task


def with_state(app: ASGIApp, state: dict[str, Any]) -> ASGIApp:
    """What an ASGI server does for each request and httpx.ASGITransport does not: a copy of the lifespan
    state in the request's scope."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, "state": dict(state)}
        await app(scope, receive, send)

    return wrapped


@contextlib.asynccontextmanager
async def in_process(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client of `create_app(settings)` running in this process, at BASE_URL (paths carry /v1 or /v2)."""
    app = create_app(settings)
    async with (
        lifespan(app) as state,
        httpx.AsyncClient(
            # an exception in a handler is a 500 answer, as from a server (Starlette sends it, re-raises)
            transport=httpx.ASGITransport(app=with_state(app, state), raise_app_exceptions=False),
            base_url=BASE_URL,
            timeout=30,
        ) as client,
    ):
        yield client
