"""Data partitions: which one a request addresses, resolved once per request before routing, and how
an entry's partition is named.

Every request addresses the default partition for now. Partitions named in the URL
(``/v2/partitions/{name}/...``) or granted by the caller's token will be resolved in ``resolve_partition``
alone; the handlers read the key through ``partition(request)`` and need not change."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from dicomd.config import Settings
from dicomd.index.schema import DEFAULT_PARTITION_KEY, DEFAULT_PARTITION_NAME

_SCOPE_KEY = "dicomd.partition_key"


def resolve_partition(app: ASGIApp) -> ASGIApp:
    """Wraps the versioned routes: sets the request's partition key on its scope."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        scope[_SCOPE_KEY] = DEFAULT_PARTITION_KEY
        await app(scope, receive, send)

    return wrapped


def partition(request: Request) -> int:
    """The key of the data partition the request addresses."""
    key: int = request.scope[_SCOPE_KEY]
    return key


def partition_name(key: int) -> str:
    """The PartitionName shown for a partition key (change feed entries)."""
    return DEFAULT_PARTITION_NAME if key == DEFAULT_PARTITION_KEY else str(key)


def partition_routes(router: ASGIApp, settings: Settings) -> list[BaseRoute]:
    """The routes under /v{n}/partitions (listed before the un-prefixed versioned mount)."""
    return []
