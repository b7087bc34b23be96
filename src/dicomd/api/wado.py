"""WADO-RS (PS3.18 10.4): instances, metadata, bulkdata and frames, streamed from object storage.

Metadata and frame/bulk byte ranges were computed once at ingest, so a retrieve does not re-parse the file
(unless its metadata object was lost: ingest/metadata.py rebuilds it). Frames and bulk data are read in
pieces off the event loop (a deflated instance's are inflated again as they stream), so a worker's memory
does not grow with their size.
Transcoding, rendered and thumbnail representations are not offered yet: those requests get 406 (so do
compressed frames asked for as application/octet-stream without transfer-syntax, i.e. uncompressed).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from functools import partial
from itertools import pairwise
from operator import attrgetter

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
from dicomd.api.partitions import partition
from dicomd.api.services import services
from dicomd.audit.events import annotate
from dicomd.dicom.ranges import RANGE_READ, Ranges, open_ranges
from dicomd.dicom.tags import PIXEL_DATA_KEYS
from dicomd.dicom.uids import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    NATIVE_SYNTAXES,
)
from dicomd.http.multipart import closing, new_boundary, part_header
from dicomd.http.negotiation import ANY_TRANSFER_SYNTAX, Offer, negotiate, parse_accept
from dicomd.index.store import FrameTable, StoredInstance
from dicomd.ingest.metadata import read_metadata
from dicomd.storage import METADATA, ObjectStore

_SMALL = 1 << 20  # files below this are read on the event loop (page-cache reads are microseconds)
_CHUNK = 4 << 20  # multipart retrieve bodies are written in pieces of about this size
# metadata objects read at once (concurrently on a cloud store); the body is assembled in memory anyway
_METADATA_BATCH = 256
_FRAME_TABLE_ON_LOOP = 64 << 10  # a listed frame table longer than this (JSON) is decoded in a thread
_MAX_FRAME_DIGITS = 18  # more than any frame count (NumberOfFrames is an IS: at most 12 characters)
MAX_FRAME_LIST = 1024  # frame numbers in one request; more: 400

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


def _store(request: Request) -> ObjectStore:
    return services(request).store


async def _find(request: Request) -> list[StoredInstance]:
    study, series, instance = uid_scope(request)
    index = services(request).index
    found = await asyncio.to_thread(index.find_instances, partition(request), study, series, instance)
    if not found:
        raise not_found(series, instance)
    annotate(request, instances=len(found))
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
            await _first_read_now(_file_chunks(store, inst)),
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
        await _first_read_now(_multipart_instances(store, instances, headers, tail)),
        media_type=f'multipart/related; type="application/dicom"; boundary={boundary}',
        headers={"content-length": str(length)},
    )


async def _multipart_instances(
    store: ObjectStore, instances: list[StoredInstance], headers: list[bytes], tail: bytes
) -> AsyncIterator[bytes]:
    """The multipart body, in chunks of about _CHUNK bytes assembled off the event loop.

    Small instances are packed together so that a study of thousands of small files costs a few
    large writes instead of two per instance, and a few rounds of concurrent GETs on a cloud store
    instead of one GET after another; large files are streamed in pieces (bounded memory).
    """
    pending: list[int] = []
    pending_bytes = 0

    def pack(batch: list[int]) -> bytes:
        found = store.read_many([instances[i].object_key for i in batch])
        parts: list[bytes] = []
        for i, data in zip(batch, found, strict=True):
            if data is None:  # deleted under the request: fail as store.read does
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), instances[i].object_key)
            parts += (headers[i], data)
        return b"".join(parts)

    for i, inst in enumerate(instances):
        if inst.file_size >= _CHUNK:
            if pending:
                yield await asyncio.to_thread(pack, pending)
                pending, pending_bytes = [], 0
            chunks = _file_chunks(store, inst)
            yield headers[i] + await anext(chunks, b"")  # the header with data read from the store
            async for chunk in chunks:
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


async def _first_read_now(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``body`` with its first chunk (which reads the store) already read: an unavailable store raises
    here, before the response starts, and is answered 503 + Retry-After instead of a cut 200 (an object
    deleted under the request: 404)."""
    try:
        first = await anext(body, None)
    except FileNotFoundError:
        raise ApiError(404, "the instance was deleted") from None

    async def chained() -> AsyncIterator[bytes]:
        if first is not None:
            yield first
        async for chunk in body:
            yield chunk

    return chained()


async def _file_chunks(store: ObjectStore, inst: StoredInstance) -> AsyncIterator[bytes]:
    if inst.file_size < _SMALL:
        if store.reads_are_local:
            yield store.read(inst.object_key)
        else:
            yield await asyncio.to_thread(store.read, inst.object_key)
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
    cache = services(request).metadata_cache
    body = cache.get((etag, base))
    if body is None:
        try:
            body = await asyncio.to_thread(_metadata_body, _store(request), instances, base)
        except FileNotFoundError:  # an instance deleted (and its grace period over) under the request
            raise ApiError(404, "an instance was deleted while its metadata was read") from None
        cache.put((etag, base), body)
    return raw_json_response(body, headers={"etag": etag})


def _recorded_bulk(inst: StoredInstance) -> dict[str, tuple[int, int]]:
    return inst.bulk


def _metadata_body(store: ObjectStore, instances: list[StoredInstance], base: str) -> bytes:
    parts = []
    for start in range(0, len(instances), _METADATA_BATCH):
        batch = instances[start : start + _METADATA_BATCH]
        stored = store.read_many([inst.object_key for inst in batch], METADATA)
        for inst, data in zip(batch, stored, strict=True):
            recorded_bulk = partial(_recorded_bulk, inst)
            blob = read_metadata(store, inst.object_key, recorded_bulk, b"" if data is None else data)
            if inst.has_bulk:
                # stored BulkDataURIs are relative to the instance URL; make them absolute for this request
                prefix = instance_url(
                    base, inst.study_instance_uid, inst.series_instance_uid, inst.sop_instance_uid
                )
                blob = blob.replace(b'"BulkDataURI":"', b'"BulkDataURI":"' + prefix.encode() + b"/")
            parts.append(blob)
    return b"[" + b",".join(parts) + b"]"


# ---- bulkdata and frames ------------------------------------------------------------------------


def _compressed(ts: str) -> bool:
    """Whether pixel data in this transfer syntax is encapsulated (compressed) rather than native."""
    return ts not in NATIVE_SYNTAXES and ts != EXPLICIT_VR_BIG_ENDIAN


def _octet_offers(ts: str, compressed_pixels: bool) -> list[Offer]:
    """What frames or bulk data can be sent as, without transcoding."""
    stored = frozenset({ts, ANY_TRANSFER_SYNTAX})
    if not compressed_pixels:
        # native frames and other bulk data: the stored bytes, which for the little endian syntaxes
        # are Explicit VR Little Endian, the default (PS3.18 8.7.3.5.2), asked for or not
        syntaxes = stored | {EXPLICIT_VR_LITTLE_ENDIAN} if ts in NATIVE_SYNTAXES else stored
        return [Offer("multipart/related", "application/octet-stream", syntaxes, ANY_TRANSFER_SYNTAX)]
    # compressed: application/octet-stream without a transfer syntax means uncompressed Explicit VR Little
    # Endian (the default), which needs transcoding: not offered, so only transfer-syntax=* (or the
    # stored UID) gets these bytes as octet-stream; a wildcard (*/*, no Accept) still gets the stored bytes
    offers = [Offer("multipart/related", "application/octet-stream", stored, EXPLICIT_VR_LITTLE_ENDIAN)]
    media = _FRAME_MEDIA_TYPES.get(ts)
    if media:
        offers.append(Offer("multipart/related", media, stored, ANY_TRANSFER_SYNTAX))
    return offers


def _not_acceptable(what_is: str, ts: str, compressed_pixels: bool) -> ApiError:
    """406 for frames or bulk data, saying what can be asked for (`what_is`: "these frames are")."""
    if not compressed_pixels:
        return ApiError(
            406,
            f'{what_is} available as multipart/related; type="application/octet-stream" in transfer syntax '
            f"{EXPLICIT_VR_LITTLE_ENDIAN if ts in NATIVE_SYNTAXES else ts}; transcoding is not supported yet",
        )
    media = _FRAME_MEDIA_TYPES.get(ts, "application/octet-stream")
    return ApiError(
        406,
        f"{what_is} compressed ({ts}) and available in that transfer syntax only: ask for "
        f'multipart/related; type="application/octet-stream"; transfer-syntax=* (or type="{media}"); '
        "transcoding to uncompressed data is not supported yet",
    )


def _open_ranges(store: ObjectStore, inst: StoredInstance) -> Ranges:
    return open_ranges(store, inst.object_key, inst.transfer_syntax_uid == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)


def _range_body(
    ranges: Ranges, pieces: Sequence[Sequence[tuple[int, int]]], first: bytes, rest: bytes, tail: bytes
) -> Iterator[bytes]:
    """The multipart body in chunks of at most about RANGE_READ bytes (small parts packed together,
    large ones in pieces): memory stays bounded whatever the size of a frame or value."""
    try:
        out = bytearray()
        for i, frame in enumerate(pieces):
            out += rest if i else first
            for offset, length in frame:
                for piece in ranges.read(offset, length):
                    if out and len(out) + len(piece) > RANGE_READ:
                        yield bytes(out)
                        out.clear()
                    if len(piece) >= RANGE_READ:
                        yield piece
                    else:
                        out += piece
        out += tail
        yield bytes(out)
    finally:
        ranges.close()


async def _in_thread(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
        yield chunk


def _small_range_body(
    store: ObjectStore,
    inst: StoredInstance,
    pieces: Sequence[Sequence[tuple[int, int]]],
    first: bytes,
    rest: bytes,
    tail: bytes,
) -> bytes:
    return b"".join(_range_body(_open_ranges(store, inst), pieces, first, rest, tail))


async def _range_parts(
    store: ObjectStore,
    inst: StoredInstance,
    pieces: Sequence[Sequence[tuple[int, int]]],
    content_type: str,
) -> Response:
    boundary = new_boundary()
    first = part_header(boundary, content_type, first=True)
    rest = part_header(boundary, content_type)
    tail = closing(boundary)
    data = sum(length for frame in pieces for _, length in frame)
    length = len(first) + (len(pieces) - 1) * len(rest) + data + len(tail)
    part_type = content_type.split(";", 1)[0]
    media_type = f'multipart/related; type="{part_type}"; boundary={boundary}'
    small = data < _SMALL and inst.transfer_syntax_uid != DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
    try:
        if small and not store.reads_are_local:
            body = await asyncio.to_thread(_small_range_body, store, inst, pieces, first, rest, tail)
            return Response(body, media_type=media_type)
        if small:  # read on the event loop, as small instances are: thread hand-offs cost more
            return Response(_small_range_body(store, inst, pieces, first, rest, tail), media_type=media_type)
        ranges = await asyncio.to_thread(_open_ranges, store, inst)
    except FileNotFoundError:
        raise ApiError(404, "the instance was deleted") from None
    return StreamingResponse(
        _in_thread(_range_body(ranges, pieces, first, rest, tail)),
        media_type=media_type,
        headers={"content-length": str(length)},  # known from the recorded ranges
    )


async def _frames_of(inst: StoredInstance) -> FrameTable:
    """The instance's frames; a long listed table is decoded off the event loop (once per worker)."""
    if len(inst.frames_json) > _FRAME_TABLE_ON_LOOP:
        return await asyncio.to_thread(attrgetter("frames"), inst)
    return inst.frames


async def bulkdata(request: Request) -> Response:
    inst = (await _find(request))[0]
    path = request.path_params["path"].upper()
    byte_range = inst.bulk.get(path)
    if byte_range is None:
        raise ApiError(404, f"the instance has no bulk data at '{path}'")
    ts = inst.transfer_syntax_uid
    compressed_pixels = path in PIXEL_DATA_KEYS and _compressed(ts)
    choice = negotiate(parse_accept(request.headers.get("accept")), _octet_offers(ts, compressed_pixels))
    if choice is None:
        raise _not_acceptable("this bulk data is", ts, compressed_pixels)
    if compressed_pixels:
        table = await _frames_of(inst)
        if table:
            # encapsulated pixel data: one part per frame, each the frame's compressed bitstream
            media = choice.part_type or "application/octet-stream"
            return await _range_parts(_store(request), inst, table, f"{media}; transfer-syntax={ts}")
    syntax = EXPLICIT_VR_LITTLE_ENDIAN if ts in NATIVE_SYNTAXES else ts
    return await _range_parts(
        _store(request), inst, [[byte_range]], f"application/octet-stream; transfer-syntax={syntax}"
    )


def _shown(text: str) -> str:
    return text if len(text) <= 64 else text[:64] + "..."


def _frame_numbers(text: str, count: int) -> list[int]:
    """The frame numbers of a frame list (1-based, in the order given, repeats kept), at most
    MAX_FRAME_LIST of them."""
    items = text.replace("%2C", ",").split(",", MAX_FRAME_LIST)
    if len(items) > MAX_FRAME_LIST:
        raise ApiError(400, f"frame list '{_shown(text)}' has more than {MAX_FRAME_LIST} frame numbers")
    numbers: list[int] = []
    for item in items:
        item = item.strip()
        # ASCII digits only (str.isdigit takes superscript and fullwidth digits), and few enough for
        # int() (which refuses thousands of digits) yet more than any frame count
        if not (item.isascii() and item.isdigit()) or len(item) > _MAX_FRAME_DIGITS or int(item) < 1:
            raise ApiError(400, f"frame list '{_shown(text)}' must be positive integers separated by commas")
        if int(item) > count:
            raise ApiError(404, f"frame {item} does not exist: the instance has {count} frame(s)")
        numbers.append(int(item))
    return numbers


async def frames(request: Request) -> Response:
    inst = (await _find(request))[0]
    table = await _frames_of(inst)
    if not table:
        raise ApiError(404, "the instance has no retrievable pixel data frames")
    numbers = _frame_numbers(request.path_params["frames"], len(table))
    ts = inst.transfer_syntax_uid
    if ts == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN and any(b <= a for a, b in pairwise(numbers)):
        # a deflate stream is read forwards only: a frame before the one read last (or the same again)
        # would cost inflating the data set again from its start
        raise ApiError(
            400,
            f"frame list '{_shown(request.path_params['frames'])}': frames of a deflated instance must be "
            "asked for in strictly ascending order (each at most once)",
        )
    if ts == EXPLICIT_VR_BIG_ENDIAN:
        raise ApiError(
            406, "frames of Explicit VR Big Endian instances need transcoding, which is not supported yet"
        )
    compressed = _compressed(ts)
    choice = negotiate(parse_accept(request.headers.get("accept")), _octet_offers(ts, compressed))
    if choice is None:
        raise _not_acceptable("these frames are", ts, compressed)
    syntax = EXPLICIT_VR_LITTLE_ENDIAN if ts in NATIVE_SYNTAXES else ts
    media = choice.part_type or "application/octet-stream"
    pieces = [table[n - 1] for n in numbers]
    return await _range_parts(_store(request), inst, pieces, f"{media}; transfer-syntax={syntax}")


async def not_offered(request: Request) -> Response:
    """Rendered and thumbnail resources: honest 406 until rendering lands."""
    await _find(request)
    raise ApiError(406, "rendered and thumbnail representations are not supported yet")
