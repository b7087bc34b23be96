"""DELETE studies, series and instances. Index rows go at once (one transaction, with change-feed
entries); stored objects are removed by the background cleanup job (dicomd.jobs.cleanup)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from dicomd.api.common import ApiError, uid_param
from dicomd.index.store import Index


async def delete(request: Request) -> Response:
    study = uid_param(request, "study")
    series = uid_param(request, "series") if "series" in request.path_params else None
    instance = uid_param(request, "instance") if "instance" in request.path_params else None
    index: Index = request.app.state.index
    deleted = await asyncio.to_thread(index.delete, 1, study, series, instance)
    if deleted == 0:
        what = "instance" if instance else "series" if series else "study"
        raise ApiError(404, f"the requested {what} does not exist")
    request.app.state.cleanup.wake()
    return Response(status_code=204)
