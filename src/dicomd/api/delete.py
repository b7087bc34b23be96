"""DELETE studies, series and instances. Index rows go at once (one transaction, with change-feed
entries); stored objects are removed by the background cleanup job (dicomd.jobs.cleanup)."""

from __future__ import annotations

import asyncio

from sqlalchemy.exc import DBAPIError
from starlette.requests import Request
from starlette.responses import Response

from dicomd.api.common import ApiError, not_found, uid_scope
from dicomd.api.partitions import partition
from dicomd.api.services import services
from dicomd.audit.events import annotate
from dicomd.dicom.status import OUT_OF_RESOURCES
from dicomd.ingest.prepare import fault_reason


async def delete(request: Request) -> Response:
    study, series, instance = uid_scope(request)
    svc = services(request)
    try:
        deleted = await asyncio.to_thread(svc.index.delete, partition(request), study, series, instance)
    except DBAPIError as exc:  # nothing was deleted: the transaction rolled back
        if fault_reason(exc) == OUT_OF_RESOURCES:
            raise ApiError(507, "the index's disk is full; nothing was deleted") from None
        raise ApiError(503, "the index could not be updated; nothing was deleted; try again") from None
    annotate(request, deleted_instances=deleted)
    if deleted == 0:
        raise not_found(series, instance)
    svc.cleanup.wake()
    return Response(status_code=204)
