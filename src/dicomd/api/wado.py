"""WADO-RS (PS3.18 10.4): instances, metadata, bulkdata and frames, streamed from object storage.

Metadata and frame/bulk byte ranges were computed once at ingest, so a retrieve does not re-parse the file
(unless its metadata object was lost: ingest/metadata.py rebuilds it).
Transcoding, rendered and thumbnail representations are not offered yet: those requests get 406.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from functools import partial

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomd.api.common import (
    ApiError,
    base_url,
    instance_url,
    not_found,
    raw_json_response,
    require_json_accept,
    uid_scope,
)
from dicomd.dicom.uids import EXPLICIT_VR_BIG_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, NATIVE_SYNTAXES
from dicomd.http.multipart import closing, new_boundary, part_header
from dicomd.http.negotiation import Offer, negotiate, parse_accept
from dicomd.index.store import Index, StoredInstance
from dicomd.ingest.metadata import read_metadata
from dicomd.storage.local import LocalObjectStore

_SMALL = 1 << 20  # files below this are read on the event loop (page-cache reads are microseconds)
_CHUNK = 4 << 20  # multipart retrieve bodies are written in pieces of about this size

# PS3.18 Table 8.7.3-2: media types of compressed frames / bulk pixel data by transfer syntax
_FRAME_MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}


def _index(request: Request) -> Index:
    return request.app.state.index  # type: ignore[no-any-return]


def _store(request: Request) -> LocalObjectStore:
    return request.app.state.store  # type: ignore[no-any-return]


async def _find(request: Request) -> list[StoredInstance]:
    study, series, instance = uid_scope(request)
    found = await asyncio.to_thread(_index(request).find_instances, 1, study, series, instance)
    if not found:
        raise not_found(series, instance)
    return found


def _etag(instances: list[StoredInstance], kind: str) -> str:
    # object keys are unique per stored version, so they identify the content exactly
    digest = hashlib.blake2b(kind.encode(), digest_size=16)
    for inst in instances:
        digest.update(inst.object_key.encode())
    return f'"{digest.hexdigest()}"'


def _not_modified(request: Request, etag: str) -> bool:
    header = request.headers.get("if-none-match")
    if not header:
        return False
    return header.strip() == "*" or etag in [t.strip() for t in header.split(",")]


# ---- instances ----------------------------------------------------------------------------------


async def retrieve(request: Request) -> Response:
    instances = await _find(request)
    single = "instance" in request.path_params
    accept = parse_accept(request.headers.get("accept"))
    stored_syntaxes = {inst.transfer_syntax_uid for inst in instances}
    offers = [Offer("multipart/related", "application/dicom", frozenset(stored_syntaxes | {"*"}), "*")]
    if single:
        offers.append(Offer("application/dicom", None, frozenset(stored_syntaxes | {"*"}), "*"))
    choice = negotiate(accept, offers)
    if choice is None:
        raise ApiError(
            406,
            'instances are available as multipart/related; type="application/dicom"'
            + (" or application/dicom" if single else "")
            + " in their stored transfer syntax (transfer-syntax=*); transcoding is not supported yet",
        )
    wanted = choice.transfer_syntax
    if wanted not in ("*", None) and stored_syntaxes != {wanted}:
        raise ApiError(
            406,
            f"transfer syntax {wanted} is not available for every requested instance; "
            "use transfer-syntax=* for the stored syntax",
        )
    store = _store(request)
    if choice.media_type == "application/dicom":
        inst = instances[0]
        return StreamingResponse(
            _file_chunks(store, inst),
            media_type=f"application/dicom; transfer-syntax={inst.transfer_syntax_uid}",
            headers={"content-length": str(inst.file_size)},  # known from the index: no stat
        )
    boundary = new_boundary()
    headers = [
        part_header(boundary, f"application/dicom; transfer-syntax={inst.transfer_syntax_uid}", first=i == 0)
        for i, inst in enumerate(instances)
    ]
    tail = closing(boundary)
    # the length is known up front (sizes are in the index): no chunked encoding for clients to undo
    length = sum(map(len, headers)) + sum(inst.file_size for inst in instances) + len(tail)
    return StreamingResponse(
        _multipart_instances(store, instances, headers, tail),
        media_type=f'multipart/related; type="application/dicom"; boundary={boundary}',
        headers={"content-length": str(length)},
    )


async def _multipart_instances(
    store: LocalObjectStore, instances: list[StoredInstance], headers: list[bytes], tail: bytes
) -> AsyncIterator[bytes]:
    """The multipart body, in chunks of about _CHUNK bytes assembled off the event loop.

    Small instances are packed together so that a study of thousands of small files costs a few
    large writes instead of two per instance; large files are streamed in pieces (bounded memory).
    """
    pending: list[int] = []
    pending_bytes = 0

    def pack(batch: list[int]) -> bytes:
        out = bytearray()
        for i in batch:
            out += headers[i]
            out += store.read(instances[i].object_key)
        return bytes(out)

    for i, inst in enumerate(instances):
        if inst.file_size >= _CHUNK:
            if pending:
                yield await asyncio.to_thread(pack, pending)
                pending, pending_bytes = [], 0
            yield headers[i]
            async for chunk in _file_chunks(store, inst):
                yield chunk
            continue
        pending.append(i)
        pending_bytes += inst.file_size
        if pending_bytes >= _CHUNK:
            yield await asyncio.to_thread(pack, pending)
            pending, pending_bytes = [], 0
    if pending:
        yield await asyncio.to_thread(pack, pending)
    yield tail


async def _file_chunks(store: LocalObjectStore, inst: StoredInstance) -> AsyncIterator[bytes]:
    if inst.file_size < _SMALL:
        yield store.read(inst.object_key)
        return
    chunks: Iterator[bytes] = store.iter_chunks(inst.object_key)
    while chunk := await asyncio.to_thread(next, chunks, b""):
        yield chunk


# ---- metadata -----------------------------------------------------------------------------------


async def metadata(request: Request) -> Response:
    require_json_accept(request, "metadata")
    instances = await _find(request)
    etag = _etag(instances, "metadata")
    if _not_modified(request, etag):
        return Response(status_code=304, headers={"etag": etag})
    base = base_url(request)
    cache: MetadataCache = request.app.state.metadata_cache
    body = cache.get((etag, base))
    if body is None:
        body = await asyncio.to_thread(_metadata_body, _store(request), instances, base)
        cache.put((etag, base), body)
    return raw_json_response(body, headers={"etag": etag})


class MetadataCache:
    """Assembled metadata responses of one worker, least recently used first out, bounded in bytes.

    Keyed by ETag (which names every stored version in the response, so a changed study never hits a
    stale entry) and base URL (BulkDataURIs are absolute). Viewers fetch the same study's metadata again
    and again; this turns those requests into one index query."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._size = 0

    def get(self, key: tuple[str, str]) -> bytes | None:
        body = self._entries.get(key)
        if body is not None:
            self._entries.move_to_end(key)
        return body

    def put(self, key: tuple[str, str], body: bytes) -> None:
        if len(body) > self.max_bytes // 4 or key in self._entries:
            return
        self._entries[key] = body
        self._size += len(body)
        while self._size > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self._size -= len(old)


def _recorded_bulk(inst: StoredInstance) -> dict[str, tuple[int, int]]:
    return inst.bulk


def _metadata_body(store: LocalObjectStore, instances: list[StoredInstance], base: str) -> bytes:
    parts = []
    for inst in instances:
        blob = read_metadata(store, inst.object_key, partial(_recorded_bulk, inst))
        if inst.has_bulk:
            # stored BulkDataURIs are relative to the instance URL; make them absolute for this request
            prefix = instance_url(
                base, inst.study_instance_uid, inst.series_instance_uid, inst.sop_instance_uid
            )
            blob = blob.replace(b'"BulkDataURI":"', b'"BulkDataURI":"' + prefix.encode() + b"/")
        parts.append(blob)
    return b"[" + b",".join(parts) + b"]"


# ---- bulkdata and frames ------------------------------------------------------------------------


def _octet_offer(ts: str) -> list[Offer]:
    offers = [Offer("multipart/related", "application/octet-stream", frozenset({ts, "*"}), "*")]
    media = _FRAME_MEDIA_TYPES.get(ts)
    if media:
        offers.append(Offer("multipart/related", media, frozenset({ts, "*"}), "*"))
    return offers


def _range_parts(
    store: LocalObjectStore, key: str, pieces: list[list[tuple[int, int]]], content_type: str
) -> StreamingResponse:
    boundary = new_boundary()

    async def body() -> AsyncIterator[bytes]:
        for i, ranges in enumerate(pieces):
            yield part_header(boundary, content_type, first=i == 0)
            for offset, length in ranges:
                yield await asyncio.to_thread(store.read_range, key, offset, length)
        yield closing(boundary)

    part_type = content_type.split(";", 1)[0]
    return StreamingResponse(body(), media_type=f'multipart/related; type="{part_type}"; boundary={boundary}')


async def bulkdata(request: Request) -> Response:
    inst = (await _find(request))[0]
    path = request.path_params["path"].upper()
    byte_range = inst.bulk.get(path)
    if byte_range is None:
        raise ApiError(404, f"the instance has no bulk data at '{path}'")
    ts = inst.transfer_syntax_uid
    is_pixel_data = path in ("7FE00010", "7FE00008", "7FE00009")
    encapsulated = is_pixel_data and ts not in NATIVE_SYNTAXES and ts != EXPLICIT_VR_BIG_ENDIAN
    choice = negotiate(parse_accept(request.headers.get("accept")), _octet_offer(ts))
    if choice is None:
        raise ApiError(406, f"this bulk data is available as multipart/related in transfer syntax {ts}")
    if encapsulated and inst.frames:
        # encapsulated pixel data: one part per frame, each the frame's compressed bitstream
        media = choice.part_type or "application/octet-stream"
        return _range_parts(_store(request), inst.object_key, inst.frames, f"{media}; transfer-syntax={ts}")
    syntax = EXPLICIT_VR_LITTLE_ENDIAN if ts in NATIVE_SYNTAXES else ts
    return _range_parts(
        _store(request),
        inst.object_key,
        [[byte_range]],
        f"application/octet-stream; transfer-syntax={syntax}",
    )


def _frame_numbers(text: str, count: int) -> list[int]:
    numbers: list[int] = []
    for item in text.replace("%2C", ",").split(","):
        item = item.strip()
        if not item.isdigit() or int(item) < 1:
            raise ApiError(400, f"frame list '{text}' must be positive integers separated by commas")
        if int(item) > count:
            raise ApiError(404, f"frame {item} does not exist: the instance has {count} frame(s)")
        numbers.append(int(item))
    return numbers


async def frames(request: Request) -> Response:
    inst = (await _find(request))[0]
    if not inst.frames:
        raise ApiError(404, "the instance has no retrievable pixel data frames")
    numbers = _frame_numbers(request.path_params["frames"], len(inst.frames))
    ts = inst.transfer_syntax_uid
    if ts == EXPLICIT_VR_BIG_ENDIAN:
        raise ApiError(
            406, "frames of Explicit VR Big Endian instances need transcoding, which is not supported yet"
        )
    choice = negotiate(parse_accept(request.headers.get("accept")), _octet_offer(ts))
    if choice is None:
        media = _FRAME_MEDIA_TYPES.get(ts, "application/octet-stream")
        raise ApiError(
            406,
            f'frames are available as multipart/related; type="{media}" in their stored transfer syntax {ts} '
            "(transfer-syntax=*); transcoding is not supported yet",
        )
    syntax = EXPLICIT_VR_LITTLE_ENDIAN if ts in NATIVE_SYNTAXES else ts
    media = choice.part_type or "application/octet-stream"
    pieces = [inst.frames[n - 1] for n in numbers]
    return _range_parts(_store(request), inst.object_key, pieces, f"{media}; transfer-syntax={syntax}")


async def not_offered(request: Request) -> Response:
    """Rendered and thumbnail resources: honest 406 until rendering lands."""
    await _find(request)
    raise ApiError(406, "rendered and thumbnail representations are not supported yet")
