"""STOW-RS (PS3.18 10.5): POST /studies[/{study}] with multipart/related or a single application/dicom body.

Parts are streamed to staged files as they arrive (bounded memory), then parsed and committed concurrently
while the next parts are still being received.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
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
    study_url,
    ui,
    uid_param,
    ur,
    us,
)
from dicomd.api.health import RETRY_AFTER
from dicomd.api.partitions import partition
from dicomd.api.services import services
from dicomd.audit.events import annotate, instance_reference
from dicomd.dicom.status import OUT_OF_RESOURCES, PROCESSING_FAILURE
from dicomd.dicom.tags import RETRIEVE_URL
from dicomd.http.multipart import MultipartError, iter_parts, parse_content_type
from dicomd.ingest.prepare import fault_outcome
from dicomd.ingest.service import UNAVAILABLE, StagedPart, StoreOutcome

log = logging.getLogger(__name__)

# Parts received and being prepared at once per request: enough to overlap receiving and parsing.
_PARALLEL_PARTS = 16
# Parts prepared and waiting for their group commit, per request. A part leaves the first limit once
# prepared, so the worker goes on receiving and parsing while a commit flushes the disk; this one bounds
# the index rows a request holds meanwhile.
_PENDING_PARTS = 256

# the other tags of the STOW-RS response (PS3.18 10.5.3), which only this module writes
ERROR_COMMENT = "00000902"
REFERENCED_SOP_CLASS_UID = "00081150"
REFERENCED_SOP_INSTANCE_UID = "00081155"
WARNING_REASON = "00081196"
FAILURE_REASON = "00081197"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_ATTRIBUTES_SEQUENCE = "00741048"


class _TooLarge(Exception):
    pass


async def store(request: Request) -> Response:
    version = api_version(request)
    url_study = uid_param(request, "study")
    require_json_accept(request, "the STOW-RS response")
    content_type = request.headers.get("content-type")
    if not content_type:
        raise ApiError(415, 'Content-Type is required: multipart/related; type="application/dicom"')
    media_type, params = parse_content_type(content_type)
    limit = services(request).settings.max_request_bytes
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ApiError(413, f"the request is larger than the limit of {limit} bytes")

    ingest = services(request).ingest
    partition_key = partition(request)
    outcomes: list[asyncio.Task[StoreOutcome]] = []
    failed_parts: list[StoreOutcome] = []
    gate = asyncio.Semaphore(_PARALLEL_PARTS)
    pending = asyncio.Semaphore(_PENDING_PARTS)
    preparing = 0  # parts admitted and not yet prepared (or refused)
    receiving = True  # more parts of the body may come

    async def admit() -> None:
        nonlocal preparing
        await pending.acquire()
        await gate.acquire()
        preparing += 1

    def refuse() -> None:
        nonlocal preparing
        preparing -= 1
        gate.release()
        pending.release()

    def unstaged(exc: OSError) -> StoreOutcome:
        # the part's file could not be written (its bytes were read and dropped): it fails alone
        refuse()
        log.warning("a received part could not be staged: %s", exc)
        return fault_outcome(StoreOutcome(), "the part could not be staged", exc)

    async def finish(part: StagedPart) -> StoreOutcome:
        nonlocal preparing
        try:
            try:
                outcome, prepared = await ingest.prepare(
                    part, url_study=url_study, version=version, partition_key=partition_key
                )
            finally:
                preparing -= 1
                gate.release()
            if prepared is None:
                return outcome
            return await ingest.commit(outcome, prepared, last_part=preparing == 0 and not receiving)
        finally:
            pending.release()

    chunks = _limited(request.stream(), limit)
    try:
        if media_type == "application/dicom":
            await admit()
            try:
                outcomes.append(asyncio.create_task(finish(await ingest.stage(chunks))))
            except OSError as exc:
                failed_parts.append(unstaged(exc))
        elif media_type == "multipart/related":
            part_type = params.get("type", "application/dicom").lower()
            if part_type != "application/dicom":
                raise ApiError(
                    415,
                    f"multipart/related type '{part_type}' is not supported; use type=\"application/dicom\"",
                )
            boundary = params.get("boundary")
            if not boundary:
                raise ApiError(400, "multipart/related Content-Type has no boundary parameter")
            try:
                async for part in iter_parts(chunks, boundary):
                    part_media = parse_content_type(part.headers.get("content-type", "application/dicom"))[0]
                    if part_media != "application/dicom":
                        failed_parts.append(
                            StoreOutcome(
                                failure_reason=PROCESSING_FAILURE,
                                messages=[f"part of type '{part_media}' is not application/dicom"],
                            )
                        )
                        continue
                    await admit()
                    try:
                        staged = await ingest.stage(part.stream())
                    except MultipartError as exc:
                        refuse()
                        failed_parts.append(
                            StoreOutcome(
                                failure_reason=PROCESSING_FAILURE, messages=[f"malformed part: {exc}"]
                            )
                        )
                        continue
                    except OSError as exc:
                        failed_parts.append(unstaged(exc))
                        continue
                    outcomes.append(asyncio.create_task(finish(staged)))
            except MultipartError as exc:
                if not outcomes and not failed_parts:
                    raise ApiError(400, f"malformed multipart body: {exc}") from None
                failed_parts.append(
                    StoreOutcome(
                        failure_reason=PROCESSING_FAILURE, messages=[f"malformed multipart body: {exc}"]
                    )
                )
        else:
            raise ApiError(
                415,
                f"Content-Type '{media_type}' is not supported; "
                'use multipart/related; type="application/dicom"',
            )
    except _TooLarge:
        receiving = False
        await _settle(outcomes)
        _audit(request, _settled(outcomes) + failed_parts)
        raise ApiError(413, f"the request is larger than the limit of {limit} bytes") from None
    except BaseException:
        receiving = False
        await _settle(outcomes)
        _audit(request, _settled(outcomes) + failed_parts)
        raise

    receiving = False
    results = list(await asyncio.gather(*outcomes)) + failed_parts
    _audit(request, results)
    if not results:
        return Response(status_code=204)
    return _response(request, results, url_study)


async def _settle(tasks: list[asyncio.Task[StoreOutcome]]) -> None:
    """Let already-received parts finish so their staged files are committed or removed."""
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


def _settled(tasks: list[asyncio.Task[StoreOutcome]]) -> list[StoreOutcome]:
    return [t.result() for t in tasks if t.done() and not t.cancelled() and t.exception() is None]


def _audit(request: Request, results: list[StoreOutcome]) -> None:
    """The audit event names every instance stored, and every one that failed with its reason."""
    stored, failed = [], []
    for r in results:
        uids = (r.study_instance_uid, r.series_instance_uid, r.sop_instance_uid, r.sop_class_uid)
        if r.stored:
            stored.append(instance_reference(*uids))
        else:
            failed.append(instance_reference(*uids, failure_reason=r.failure_reason))
    annotate(request, stored=stored, failed=failed)


async def _limited(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > limit:
            raise _TooLarge
        if chunk:
            yield chunk


def _response(request: Request, results: list[StoreOutcome], url_study: str | None) -> Response:
    base = base_url(request)
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for r in results:
        item: dict[str, Any] = {}
        if r.sop_class_uid:
            item[REFERENCED_SOP_CLASS_UID] = ui(r.sop_class_uid)
        if r.sop_instance_uid:
            item[REFERENCED_SOP_INSTANCE_UID] = ui(r.sop_instance_uid)
        if r.stored:
            item[RETRIEVE_URL] = ur(
                instance_url(base, r.study_instance_uid, r.series_instance_uid, r.sop_instance_uid)
            )
            if r.warning_reason is not None:
                item[WARNING_REASON] = us(r.warning_reason)
                item[FAILED_ATTRIBUTES_SEQUENCE] = _comments(r.messages)
            referenced.append(item)
        else:
            assert r.failure_reason is not None
            item[FAILURE_REASON] = us(r.failure_reason)
            item[FAILED_ATTRIBUTES_SEQUENCE] = _comments(r.messages)
            failed.append(item)
    body: dict[str, Any] = {}
    studies = {r.study_instance_uid for r in results if r.stored}
    retrieve_study = url_study or (next(iter(studies)) if len(studies) == 1 else None)
    if retrieve_study and referenced:
        body[RETRIEVE_URL] = ur(study_url(base, retrieve_study))
    if referenced:
        body[REFERENCED_SOP_SEQUENCE] = {"vr": "SQ", "Value": referenced}
    if failed:
        body[FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": failed}
    headers: dict[str, str] = {}
    if not referenced:
        # 507 (storage full) and 503 (index or object store unavailable) tell a sender to retry later
        # rather than to give up on these instances
        out_of_resources = all(r.failure_reason == OUT_OF_RESOURCES for r in results)
        unavailable = bool(results) and all(set(r.messages) <= UNAVAILABLE and r.messages for r in results)
        if unavailable:
            status, headers = 503, {"Retry-After": RETRY_AFTER}
        else:
            status = 507 if out_of_resources else 409
    elif failed or any(r.warning_reason is not None for r in results):
        status = 202
    else:
        status = 200
    return json_response(body, status=status, headers=headers)


def _comments(messages: list[str]) -> dict[str, Any]:
    # FailedAttributesSequence items carrying ErrorComment (0000,0902) texts, as the cloud service does
    return {"vr": "SQ", "Value": [{ERROR_COMMENT: {"vr": "LO", "Value": [m]}} for m in messages]}
