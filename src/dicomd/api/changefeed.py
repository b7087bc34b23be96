"""Change feed: every create, update and delete, in commit order (v1) or in a time window (v2).

Wire format follows the cloud service: Sequence, PartitionName, StudyInstanceUid, SeriesInstanceUid,
SopInstanceUid, Action (create|update|delete), Timestamp, State (current|replaced|deleted), Metadata.
A feed lists the entries of the request's partition only (the un-prefixed routes: the default partition's).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from functools import partial
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from dicomd.api.common import ApiError, api_version
from dicomd.api.partitions import partition, partition_name
from dicomd.api.services import services
from dicomd.index.normalize import parse_int
from dicomd.index.store import ChangeEntry, Index
from dicomd.ingest.metadata import read_metadata
from dicomd.storage import METADATA, ObjectStore

_V1_LIMIT = (10, 100)  # (default, maximum)
_V2_LIMIT = (100, 200)


def _params(request: Request, allowed: set[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        name = key.lower()
        if name not in allowed:
            raise ApiError(400, f"unknown query parameter '{key}'; allowed: {', '.join(sorted(allowed))}")
        if name in params:
            raise ApiError(400, f"query parameter '{key}' is given more than once")
        params[name] = value
    return params


def _shown(raw: str) -> str:
    return raw if len(raw) <= 64 else raw[:64] + "..."


def _int(params: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    # parse_int: ASCII digits only (isdigit() also takes "²", which int() then refuses), and no int()
    # of thousands of digits
    value = parse_int(raw)
    if value is None or not low <= value <= high:
        raise ApiError(
            400, f"query parameter '{name}' must be an integer between {low} and {high}, got '{_shown(raw)}'"
        )
    return value


def _bool(params: dict[str, str], name: str, default: bool) -> bool:
    raw = params.get(name)
    if raw is None:
        return default
    if raw.lower() not in ("true", "false"):
        raise ApiError(400, f"query parameter '{name}' must be true or false, got '{_shown(raw)}'")
    return raw.lower() == "true"


def _time(params: dict[str, str], name: str) -> datetime | None:
    raw = params.get(name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw.replace(" ", "+"))
    except ValueError:
        raise ApiError(
            400, f"query parameter '{name}' must be an ISO 8601 date-time, got '{_shown(raw)}'"
        ) from None
    if value.tzinfo is None:
        raise ApiError(
            400, f"query parameter '{name}' must include a time zone offset (e.g. Z), got '{_shown(raw)}'"
        )
    return value


async def changefeed(request: Request) -> Response:
    v2 = api_version(request) >= 2
    if v2:
        params = _params(request, {"offset", "limit", "includemetadata", "starttime", "endtime"})
        limit = _int(params, "limit", _V2_LIMIT[0], 1, _V2_LIMIT[1])
        start, end = _time(params, "starttime"), _time(params, "endtime")
        if start and end and start >= end:
            raise ApiError(400, "startTime must be before endTime")
    else:
        params = _params(request, {"offset", "limit", "includemetadata"})
        limit = _int(params, "limit", _V1_LIMIT[0], 1, _V1_LIMIT[1])
        start = end = None
    offset = _int(params, "offset", 0, 0, 2**62)
    include = _bool(params, "includemetadata", True)
    svc = services(request)
    entries = await asyncio.to_thread(
        svc.index.changefeed,
        partition_key=partition(request),
        offset=offset,
        limit=limit,
        start=start,
        end=end,
        v2=v2,
    )
    body = await asyncio.to_thread(_render, entries, svc.store, svc.index, include)
    return Response(body, media_type="application/json")


async def latest(request: Request) -> Response:
    params = _params(request, {"includemetadata"})
    include = _bool(params, "includemetadata", True)
    svc = services(request)
    entry = await asyncio.to_thread(svc.index.latest_change, partition(request))
    if entry is None:
        return Response(b"{}", media_type="application/json")
    body = await asyncio.to_thread(_render, [entry], svc.store, svc.index, include)
    return Response(body[1:-1], media_type="application/json")


def _render(entries: list[ChangeEntry], store: ObjectStore, index: Index, include_metadata: bool) -> bytes:
    out: list[dict[str, Any]] = []
    # the page's metadata objects in one batch (concurrent GETs on a cloud store); "" for a missing one
    wanted = [e for e in entries if include_metadata and e.state == "Current" and e.object_key]
    blobs = dict(
        zip(
            (e.sequence for e in wanted),
            store.read_many([e.object_key for e in wanted], METADATA),
            strict=True,
        )
    )
    for e in entries:
        item: dict[str, Any] = {
            "Sequence": e.sequence,
            "PartitionName": partition_name(index, e.partition_key),
            "StudyInstanceUid": e.study_instance_uid,
            "SeriesInstanceUid": e.series_instance_uid,
            "SopInstanceUid": e.sop_instance_uid,
            "Action": e.action.lower(),
            "Timestamp": e.timestamp.isoformat().replace("+00:00", "Z"),
            "State": e.state.lower(),
        }
        if include_metadata and e.state == "Current" and e.object_key:
            try:
                blob = blobs[e.sequence]
                metadata = read_metadata(
                    store, e.object_key, partial(_bulk_ranges, index, e), b"" if blob is None else blob
                )
                item["Metadata"] = orjson.Fragment(metadata)
            except FileNotFoundError:  # deleted between the query and this read
                item["State"] = "deleted"
        out.append(item)
    return orjson.dumps(out)


def _bulk_ranges(index: Index, e: ChangeEntry) -> dict[str, tuple[int, int]]:
    """The bulk data ranges recorded for the entry's instance (only asked to rebuild its metadata)."""
    for inst in index.find_instances(e.partition_key, e.study_instance_uid, instance=e.sop_instance_uid):
        if inst.object_key == e.object_key:
            return inst.bulk
    raise FileNotFoundError(e.object_key)  # replaced or deleted meanwhile
