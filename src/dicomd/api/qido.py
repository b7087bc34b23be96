"""QIDO-RS (PS3.18 10.6): search studies, series and instances through the SQL index."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from dicomd.api.common import (
    ApiError,
    api_version,
    base_url,
    instance_url,
    json_response,
    require_json_accept,
    series_url,
    study_url,
    uid_param,
    ur,
)
from dicomd.api.partitions import partition
from dicomd.api.services import services
from dicomd.audit.events import annotate
from dicomd.dicom.tags import RETRIEVE_URL, SERIES_INSTANCE_UID, SOP_INSTANCE_UID, STUDY_INSTANCE_UID
from dicomd.index.levels import Level
from dicomd.index.qido import QueryError, parse_qido


def _search(level: Level) -> Callable[[Request], Awaitable[Response]]:
    async def handler(request: Request) -> Response:
        params = list(request.query_params.multi_items())
        annotate(request, query=params)  # parsed once, for the search and its audit event
        require_json_accept(request)
        study, series = uid_param(request, "study"), uid_param(request, "series")
        try:
            query = parse_qido(
                level,
                params,
                partition_key=partition(request),
                study_uid=study,
                series_uid=series,
                version=api_version(request),
            )
        except QueryError as exc:
            raise ApiError(400, str(exc)) from None
        results = await asyncio.to_thread(services(request).index.search, query)
        annotate(request, results=len(results))
        base = base_url(request)
        for result in results:
            _add_retrieve_url(result, level, base)
        return json_response(results)

    return handler


def _uid(result: dict[str, Any], tag: str) -> str:
    values = result.get(tag, {}).get("Value") or [""]
    return str(values[0])


def _add_retrieve_url(result: dict[str, Any], level: Level, base: str) -> None:
    study = _uid(result, STUDY_INSTANCE_UID)
    if level == "study":
        url = study_url(base, study)
    elif level == "series":
        url = series_url(base, study, _uid(result, SERIES_INSTANCE_UID))
    else:
        url = instance_url(base, study, _uid(result, SERIES_INSTANCE_UID), _uid(result, SOP_INSTANCE_UID))
    result[RETRIEVE_URL] = ur(url)


search_studies = _search("study")
search_series = _search("series")
search_instances = _search("instance")
