"""Unversioned liveness/readiness check."""

from __future__ import annotations

import asyncio

import orjson
from starlette.requests import Request
from starlette.responses import Response

from dicomd import __version__
from dicomd.api.services import services


async def check(request: Request) -> Response:
    index = services(request).index
    try:
        await asyncio.to_thread(index.latest_change)
    except Exception:
        body = {"status": "unhealthy", "index": "unreachable", "version": __version__}
        return Response(orjson.dumps(body), status_code=503, media_type="application/json")
    body = {"status": "healthy", "index": "ok", "version": __version__}
    return Response(orjson.dumps(body), media_type="application/json")
