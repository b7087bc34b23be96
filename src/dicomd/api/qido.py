"""QIDO-RS (PS3.18 10.6): search studies, series and instances through the SQL index."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from dicomd.api.common import (
    ApiError,
    base_url,
    instance_url,
    json_response,
    require_json_accept,
    series_url,
    study_url,
    uid_param,
    ur,
)
from dicomd.index.qido import QueryError, parse_qido
from dicomd.index.store import Index

_STUDY, _SERIES, _SOP = "0020000D", "0020000E", "00080018"


def _search(level: str):  # type: ignore[no-untyped-def]
    async def handler(request: Request) -> Response:
        require_json_accept(request)
        study, series = uid_param(request, "study"), uid_param(request, "series")
        try:
            query = parse_qido(
                level,  # type: ignore[arg-type]
                list(request.query_params.multi_items()),
                study_uid=study,
                series_uid=series,
                version=int(request.path_params.get("version", 2)),
            )
        except QueryError as exc:
            raise ApiError(400, str(exc)) from None
        index: Index = request.app.state.index
        results = await asyncio.to_thread(index.search, query)
        base = base_url(request)
        for result in results:
            _add_retrieve_url(result, level, base)
        return json_response(results)

    return handler


def _uid(result: dict[str, Any], tag: str) -> str:
    values = result.get(tag, {}).get("Value") or [""]
    return str(values[0])


def _add_retrieve_url(result: dict[str, Any], level: str, base: str) -> None:
    study = _uid(result, _STUDY)
    if level == "study":
        url = study_url(base, study)
    elif level == "series":
        url = series_url(base, study, _uid(result, _SERIES))
    else:
        url = instance_url(base, study, _uid(result, _SERIES), _uid(result, _SOP))
    result["00081190"] = ur(url)


search_studies = _search("study")
search_series = _search("series")
search_instances = _search("instance")
