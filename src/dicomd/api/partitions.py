"""Data partitions: which one a request addresses, resolved once per request before routing, and the
partition routes (``/v{n}/partitions`` and ``/v{n}/partitions/{name}/...``).

The un-prefixed data routes address the default partition; ``/v{n}/partitions/{name}/...`` (served when
the ``partitions`` setting is on) address the named one, created by its first store when
``create_partitions`` is on. ``resolve_partition`` alone decides: it checks the name (400), the caller's
right to the partition (403, asked before existence so that existence never leaks), and that it exists
(404); the handlers read the key through ``partition(request)``."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Mount, Route, Router, request_response
from starlette.types import ASGIApp, Receive, Scope, Send

from dicomd.api.common import PARTITION_PATH_KEY, ApiError, error_response
from dicomd.api.services import services
from dicomd.auth.authorize import require
from dicomd.auth.principal import principal_of
from dicomd.config import Settings
from dicomd.index.partitions import (
    Partition,
    create_partition,
    find_partition,
    is_valid_partition_name,
    list_partitions,
    partition_by_key,
)
from dicomd.index.schema import DEFAULT_PARTITION_KEY, DEFAULT_PARTITION_NAME
from dicomd.index.store import Index

_SCOPE_KEY = "dicomd.partition_key"
_NAME_SCOPE_KEY = "dicomd.partition_name"


class _KnownPartitions:
    """The partitions this process has seen in one index, both ways: names and keys never change and
    partitions are never removed, so a hit needs no query (a miss asks the index: another process may
    have created it)."""

    def __init__(self) -> None:
        self.keys: dict[str, int] = {DEFAULT_PARTITION_NAME: DEFAULT_PARTITION_KEY}
        self.names: dict[int, str] = {DEFAULT_PARTITION_KEY: DEFAULT_PARTITION_NAME}

    def add(self, found: Partition) -> None:
        self.keys[found.name] = found.key
        self.names[found.key] = found.name


# per Index: the tests run several applications, each on its own database, in one process
_known: weakref.WeakKeyDictionary[Index, _KnownPartitions] = weakref.WeakKeyDictionary()


def _known_in(index: Index) -> _KnownPartitions:
    known = _known.get(index)
    if known is None:
        known = _known[index] = _KnownPartitions()
    return known


def _is_store(router: ASGIApp, scope: Scope) -> bool:
    """Whether the request is a store: a POST that one of the data routes takes (a POST to a path
    without a route must not create a partition on its way to a 404 or 405)."""
    if scope["method"] != "POST" or not isinstance(router, Router):
        return False
    return any(route.matches(scope)[0] == Match.FULL for route in router.routes)


def _check_name(name: str) -> None:
    # "." and ".." fit Azure's rule, but clients resolve them as path segments in the URLs we return
    if not is_valid_partition_name(name) or name in (".", ".."):
        shown = name if len(name) <= 64 else name[:64] + "..."
        raise ApiError(
            400,
            f"'{shown}' is not a valid partition name: 1 to 64 characters of letters, digits, '.', '_' "
            "and '-', and not '.' or '..'",
        )


async def _partition_key(request: Request, name: str, *, may_create: Callable[[], bool]) -> int:
    index = services(request).index
    known = _known_in(index)
    key = known.keys.get(name)
    if key is not None:
        return key
    found = await asyncio.to_thread(find_partition, index.engine, name)
    if found is None and may_create():
        found = await asyncio.to_thread(create_partition, index.engine, name)
    if found is None:
        raise ApiError(404, "partition not found")
    known.add(found)
    return found.key


def resolve_partition(app: ASGIApp) -> ASGIApp:
    """Wraps the versioned routes (``app``: their router): sets the request's partition key on its scope,
    from the URL's ``{partition}`` (the default partition without one), after checking the name and the
    caller's right to it; a store creates a missing partition when ``create_partitions`` is on."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        named: str | None = scope.get("path_params", {}).get("partition")
        name = DEFAULT_PARTITION_NAME if named is None else named
        if named is not None:
            _check_name(name)
        caller = principal_of(scope)
        if caller is not None and not caller.may_use_partition(name):
            raise ApiError(403, "the caller is not allowed in this partition")
        if named is None:  # the default partition: its key is fixed, nothing to look up
            scope[_SCOPE_KEY] = DEFAULT_PARTITION_KEY
        else:
            request = Request(scope)

            def may_create() -> bool:  # asked only for a partition that does not exist
                return (
                    services(request).settings.create_partitions
                    and (caller is None or caller.may("write"))
                    and _is_store(app, scope)
                )

            scope[_SCOPE_KEY] = await _partition_key(request, name, may_create=may_create)
        scope[_NAME_SCOPE_KEY] = name
        if named is not None:
            scope[PARTITION_PATH_KEY] = f"/partitions/{name}"  # RetrieveURLs and BulkDataURIs point here
        await app(scope, receive, send)

    return wrapped


def resolved_partition_name(scope: Scope) -> str | None:
    """The name of the partition the request was resolved to; None before (or without) resolution."""
    name: str | None = scope.get(_NAME_SCOPE_KEY)
    return name


def partition(request: Request) -> int:
    """The key of the data partition the request addresses."""
    key: int = request.scope[_SCOPE_KEY]
    return key


def partition_name(index: Index, key: int) -> str:
    """The PartitionName shown for a partition key (change feed entries). Blocking on a miss: call it
    from a thread."""
    known = _known_in(index)
    name = known.names.get(key)
    if name is not None:
        return name
    found = partition_by_key(index.engine, key)
    if found is None:  # an entry's partition is never removed
        return str(key)
    known.add(found)
    return found.name


def _created_date(found: Partition) -> str:
    return found.created.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def _list(request: Request) -> Response:
    """GET /v{n}/partitions: the partitions the caller may use, as Azure lists them."""
    if request.method not in ("GET", "HEAD"):
        # the route takes every method: a partial match would lose to the un-prefixed mount's 404
        raise ApiError(
            405, f"method {request.method} is not allowed on this resource", headers={"Allow": "GET"}
        )
    caller = principal_of(request.scope)
    found = await asyncio.to_thread(list_partitions, services(request).index.engine)
    body = [
        {"partitionKey": p.key, "partitionName": p.name, "createdDate": _created_date(p)}
        for p in found
        if caller is None or caller.may_use_partition(p.name)
    ]
    return Response(orjson.dumps(body), media_type="application/json")


async def _not_enabled(scope: Scope, receive: Receive, send: Send) -> None:
    response = error_response(404, "data partitions are not enabled on this server (setting 'partitions')")
    await response(scope, receive, send)


class _Asgi:
    """An ASGI callable as a Route endpoint: Starlette takes a plain function for a request handler."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Any]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def partition_routes(
    router: ASGIApp, settings: Settings, guarded: Callable[[ASGIApp], ASGIApp]
) -> list[BaseRoute]:
    """The routes under /v{n}/partitions (listed before the un-prefixed versioned mount); ``guarded``
    wraps an ASGI app in the version check and authentication, as app.py does for the other routes.
    With partitions off they answer 404 saying so."""
    if not settings.partitions:
        return [
            Route("/v{version}/partitions", _Asgi(_not_enabled)),
            Mount("/v{version}/partitions", app=_not_enabled),
        ]
    listing = _Asgi(guarded(request_response(require("read", _list))))
    return [
        Route("/v{version}/partitions", listing, name="partitions.list"),
        Mount("/v{version}/partitions/{partition}", app=guarded(resolve_partition(router))),
    ]
