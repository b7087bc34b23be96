"""Unversioned health endpoints: ``/health/check`` (each dependency with its latency, for people and
monitoring), ``/health/ready`` (for load balancers: send this replica traffic?) and ``/health/live``
(for orchestrators: is the process alive? Never looks at dependencies, so an outage of the database does
not get every replica restarted)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from dicomd import __version__
from dicomd.api.services import Services, services
from dicomd.storage import ObjectStore

PROBE_TIMEOUT = 5.0  # seconds at most per dependency: a load balancer's check must never hang
RETRY_AFTER = "5"
# a key new_key never makes (random hex of 32): probing reads "no such object", or fails when the store
# is unreachable
_PROBE_KEY = "0" * 32


async def _probe(call: Callable[[], Any], timeout: float) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.to_thread(call), timeout)
        status = "up"
    except TimeoutError:
        status = "timeout"
    except Exception:
        status = "down"
    return {"status": status, "latency_ms": round((time.perf_counter() - started) * 1000, 1)}


def _probe_store(store: ObjectStore) -> None:
    with contextlib.suppress(FileNotFoundError):  # "no such object": the store answered
        store.size(_PROBE_KEY)


# Health answers are public and exempt from rate limits: a flood of them must not become a flood of
# database and object-store round trips (each a thread and a pooled connection). A worker probes at most
# once per PROBE_REUSE seconds; callers meanwhile share the last answer or the probe in flight.
PROBE_REUSE = 1.0


class _LastProbe:
    """The worker's latest probe (one application per worker; tests build others, which start anew)."""

    services: Services | None = None
    started = 0.0
    task: asyncio.Task[dict[str, dict[str, Any]]] | None = None


async def dependencies(found: Services) -> dict[str, dict[str, Any]]:
    """Each dependency's status and latency, probed at most once a second per worker (a probe still
    running is shared, however long it takes)."""
    now = time.monotonic()
    last = _LastProbe
    stale = last.task is None or (last.task.done() and now - last.started >= PROBE_REUSE)
    if last.services is not found or stale:
        last.services, last.started = found, now
        last.task = asyncio.ensure_future(_probe_dependencies(found))
    assert last.task is not None
    return dict(await asyncio.shield(last.task))


async def _probe_dependencies(found: Services) -> dict[str, dict[str, Any]]:
    index_timeout = min(PROBE_TIMEOUT, float(found.settings.db_timeout))
    store_timeout = min(PROBE_TIMEOUT, float(found.settings.storage_timeout))
    index, storage = await asyncio.gather(
        _probe(found.index.ping, index_timeout), _probe(lambda: _probe_store(found.store), store_timeout)
    )
    return {"index": index, "storage": storage}


def _json(body: dict[str, Any], status: int) -> Response:
    headers = {"retry-after": RETRY_AFTER, "cache-control": "no-store"} if status == 503 else None
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


async def check(request: Request) -> Response:
    """200 when every dependency is up, else 503; each with its status and latency."""
    found = await dependencies(services(request))
    healthy = all(d["status"] == "up" for d in found.values())
    body = {"status": "healthy" if healthy else "unhealthy", "version": __version__, "dependencies": found}
    return _json(body, 200 if healthy else 503)


async def ready(request: Request) -> Response:
    """200 while this replica should get traffic; 503 while it drains or a dependency is down (a
    replica that cannot reach the database or the store would only answer 503s)."""
    found_services = services(request)
    if found_services.lifecycle.draining:
        return _json({"status": "draining", "version": __version__}, 503)
    found = await dependencies(found_services)
    healthy = all(d["status"] == "up" for d in found.values())
    body = {"status": "ready" if healthy else "unavailable", "version": __version__, "dependencies": found}
    return _json(body, 200 if healthy else 503)


async def live(request: Request) -> Response:
    """200 while the process serves requests at all."""
    return _json({"status": "alive", "version": __version__}, 200)
