"""DELETE studies, series and instances. Index rows go at once (one transaction, with change-feed
entries); stored objects are removed by the background cleanup job (dicomd.jobs.cleanup)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from dicomd.api.common import not_found, uid_scope
from dicomd.api.partitions import partition
from dicomd.api.services import services


async def delete(request: Request) -> Response:
    study, series, instance = uid_scope(request)
    svc = services(request)
    deleted = await asyncio.to_thread(svc.index.delete, partition(request), study, series, instance)
    if deleted == 0:
        raise not_found(series, instance)
    svc.cleanup.wake()
    return Response(status_code=204)
