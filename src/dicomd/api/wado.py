"""WADO-RS (PS3.18 10.4): instances, metadata, bulkdata and frames, streamed from object storage.

Metadata and frame/bulk byte ranges were computed once at ingest, so a retrieve does not re-parse the file
(unless its metadata object was lost: ingest/metadata.py rebuilds it). Frames and bulk data are read in
pieces off the event loop (a deflated instance's are inflated again as they stream), so a worker's memory
does not grow with their size.

Transcoding (PS3.18 8.7.3) follows the Accept header: q-values, the stored syntax winning ties,
``transfer-syntax=*`` = as stored, a media type named without transfer-syntax = its default (Explicit VR
Little Endian for application/dicom and application/octet-stream), a wildcard (``*/*``, no Accept,
multipart/related without type) = the stored bytes, so the byte-exact paths with known lengths stay as
they were. Transcoded bodies are produced frame by frame in the pixel pool (pixels/transcode.py) and sent
chunked; what cannot be produced is a 406 before the response starts, naming what was asked and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
from collections.abc import AsyncIterator, Generator, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
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
from dicomd.dicom.ranges import RANGE_READ, Ranges
from dicomd.dicom.tags import PIXEL_DATA
from dicomd.dicom.uids import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    NATIVE_SYNTAXES,
)
from dicomd.http.multipart import closing, new_boundary, part_header
from dicomd.http.negotiation import ANY_TRANSFER_SYNTAX, Candidate, Offer, candidates, negotiate, parse_accept
from dicomd.index.store import FrameTable, StoredInstance
from dicomd.ingest.metadata import read_metadata
from dicomd.pixels import transcode
from dicomd.pixels.frames import PixelDataError, open_instance_ranges
from dicomd.pixels.service import PixelLimitError
from dicomd.pixels.syntaxes import (
    ENCODABLE,
    MEDIA_TYPE_SYNTAXES,
    OCTET_STREAM,
    frame_media_type,
    syntax_name,
)
from dicomd.storage import METADATA, ObjectStore

_SMALL = 1 << 20  # files below this are read on the event loop (page-cache reads are microseconds)
_CHUNK = 4 << 20  # multipart retrieve bodies are written in pieces of about this size
# metadata objects read at once (concurrently on a cloud store); the body is assembled in memory anyway
_METADATA_BATCH = 256
_FRAME_TABLE_ON_LOOP = 64 << 10  # a listed frame table longer than this (JSON) is decoded in a thread
_MAX_FRAME_DIGITS = 18  # more than any frame count (NumberOfFrames is an IS: at most 12 characters)
MAX_FRAME_LIST = 1024  # frame numbers in one request; more: 400

_PLAN_BATCH = 256  # instances whose headers one pixel-pool call checks before a transcoded retrieve
_ENCODABLE_NAMES = ", ".join(syntax_name(ts) for ts in ENCODABLE)


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


def not_modified(request: Request, etag: str) -> bool:
    """Whether If-None-Match names ``etag`` (or is ``*``): answer 304."""
    header = request.headers.get("if-none-match")
    if not header:
        return False
    return header.strip() == "*" or etag in [t.strip() for t in header.split(",")]


# ---- instances ----------------------------------------------------------------------------------


def _instance_syntaxes(stored: set[str]) -> frozenset[str]:
    """What instances can be sent as: stored (``*`` or their own syntax) or transcoded to any target."""
    return frozenset(stored | {ANY_TRANSFER_SYNTAX} | ENCODABLE.keys())


async def retrieve(request: Request) -> Response:
    instances = await _find(request)
    single = "instance" in request.path_params
    accept = parse_accept(request.headers.get("accept"))
    stored_syntaxes = {inst.transfer_syntax_uid for inst in instances}
    syntaxes = _instance_syntaxes(stored_syntaxes)
    offers = [Offer("multipart/related", "application/dicom", syntaxes, EXPLICIT_VR_LITTLE_ENDIAN)]
    if single:
        offers.append(Offer("application/dicom", None, syntaxes, EXPLICIT_VR_LITTLE_ENDIAN))
    found = candidates(accept, offers, stored_syntaxes)
    if not found:
        raise ApiError(
            406,
            'instances are available as multipart/related; type="application/dicom"'
            + (" or application/dicom" if single else "")
            + " in their stored transfer syntax (transfer-syntax=*) or transcoded to "
            + _ENCODABLE_NAMES,
        )
    chosen = found[0].offer_index
    wanted = [c for c in found if c.offer_index == chosen]
    targets = await _instance_targets(request, instances, wanted)
    store = _store(request)
    if offers[chosen].media_type == "application/dicom":
        return await instance_response(request, instances[0], targets[0])
    if any(targets):
        return await _transcoded_multipart(request, instances, targets)
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


async def instance_response(request: Request, inst: StoredInstance, transfer_syntax: str | None) -> Response:
    """One instance as application/dicom: its stored bytes (``transfer_syntax`` None, ``*`` or the stored
    syntax: byte-exact, with Content-Length) or transcoded to ``transfer_syntax`` (streamed, chunked).
    Raises ApiError 406 (naming the syntax and why) when it cannot be produced."""
    if transfer_syntax in (None, ANY_TRANSFER_SYNTAX, inst.transfer_syntax_uid):
        return StreamingResponse(
            await _first_read_now(_file_chunks(_store(request), inst)),
            media_type=f"application/dicom; transfer-syntax={inst.transfer_syntax_uid}",
            headers={"content-length": str(inst.file_size)},  # known from the index: no stat
        )
    assert transfer_syntax is not None
    body = await _first_read_now(_transcoded_file(request, inst, transfer_syntax), transfer_syntax)
    return StreamingResponse(body, media_type=f"application/dicom; transfer-syntax={transfer_syntax}")


async def _instance_targets(
    request: Request, instances: list[StoredInstance], wanted: list[Candidate]
) -> list[str | None]:
    """Per instance, the transfer syntax to transcode it to (None: send it as stored): the best acceptable
    syntax, its stored one winning ties, that it can be produced in. An instance whose acceptable
    syntaxes all need transcoding is checked from its header (cached), so a request is refused with 406
    before its response starts; a request that needs no transcoding reads no header."""
    ranked: dict[str, list[str]] = {}
    for stored in {inst.transfer_syntax_uid for inst in instances}:
        order = sorted(
            wanted,
            key=lambda c: (
                -c.q,
                0 if c.transfer_syntax in (ANY_TRANSFER_SYNTAX, stored) else 1,
                c.range_index,
            ),
        )
        ranked[stored] = [c.transfer_syntax or EXPLICIT_VR_LITTLE_ENDIAN for c in order]
    if all(ranked[s][0] in (ANY_TRANSFER_SYNTAX, s) for s in ranked):
        return [None] * len(instances)
    pixels = services(request).pixels
    store = _store(request)
    targets: list[str | None] = []
    for start in range(0, len(instances), _PLAN_BATCH):
        batch = instances[start : start + _PLAN_BATCH]
        targets += await pixels.run(_choose_targets, store, batch, ranked, pixels.memory_limit)
    return targets


def _choose_targets(
    store: ObjectStore, instances: list[StoredInstance], ranked: dict[str, list[str]], memory_limit: int
) -> list[str | None]:
    targets: list[str | None] = []
    for inst in instances:
        reasons: list[str] = []
        for ts in ranked[inst.transfer_syntax_uid]:
            if ts in (ANY_TRANSFER_SYNTAX, inst.transfer_syntax_uid):
                targets.append(None)
                break
            try:
                transcode.plan(store, inst, ts, memory_limit)
            except (PixelDataError, PixelLimitError) as exc:
                reasons.append(f"{syntax_name(ts)}: {exc}")
                continue
            except FileNotFoundError:
                raise ApiError(404, "an instance was deleted while it was read") from None
            targets.append(ts)
            break
        else:
            raise ApiError(
                406,
                f"instance {inst.sop_instance_uid} cannot be produced in any transfer syntax asked for "
                f"(it is stored as {syntax_name(inst.transfer_syntax_uid)}; transfer-syntax=* sends it as "
                f"stored): {'; '.join(reasons)}"[:1000],
            )
    return targets


async def _transcoded_file(request: Request, inst: StoredInstance, target: str) -> AsyncIterator[bytes]:
    """``inst`` as a Part 10 file in ``target``, each chunk produced in the pixel pool."""
    pixels = services(request).pixels
    store = _store(request)
    plan = await pixels.run(transcode.plan, store, inst, target, pixels.memory_limit)
    chunks = transcode.part10_chunks(store, plan)
    async for chunk in _pulled(request, chunks):
        yield chunk


async def _pulled(request: Request, chunks: Generator[bytes]) -> AsyncIterator[bytes]:
    """The chunks of a blocking generator, each pulled in the pixel pool (never on the event loop)."""
    pixels = services(request).pixels
    try:
        while (chunk := await pixels.run(next, chunks, None)) is not None:
            yield chunk
    finally:
        # a client gone mid-frame: the pool thread finishes that frame, and the generator's files
        # close when it is collected ("already executing" now)
        with contextlib.suppress(ValueError):
            chunks.close()


async def _transcoded_multipart(
    request: Request, instances: list[StoredInstance], targets: list[str | None]
) -> Response:
    """A multipart retrieve where some instances are transcoded: chunked (lengths unknown), one instance
    at a time (memory: one frame and its encoding, or a read's worth of a stored file)."""
    boundary = new_boundary()
    store = _store(request)

    async def body() -> AsyncIterator[bytes]:
        for i, (inst, target) in enumerate(zip(instances, targets, strict=True)):
            syntax = target or inst.transfer_syntax_uid
            header = part_header(boundary, f"application/dicom; transfer-syntax={syntax}", first=i == 0)
            parts = _file_chunks(store, inst) if target is None else _transcoded_file(request, inst, target)
            yield header + await anext(parts, b"")
            async for chunk in parts:
                yield chunk
        yield closing(boundary)

    return StreamingResponse(
        await _first_read_now(body(), "the requested transfer syntax"),
        media_type=f'multipart/related; type="application/dicom"; boundary={boundary}',
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


async def _first_read_now(body: AsyncIterator[bytes], producing: str | None = None) -> AsyncIterator[bytes]:
    """``body`` with its first chunk (which reads the store) already read: an unavailable store raises
    here, before the response starts, and is answered 503 + Retry-After instead of a cut 200 (an object
    deleted under the request: 404). When the body is transcoded (``producing`` names the transfer
    syntax), a first frame that cannot be produced is a 406; a later one ends the response early (the
    client sees a cut body, never a wrong image)."""
    try:
        first = await anext(body, None)
    except FileNotFoundError:
        raise ApiError(404, "the instance was deleted") from None
    except (PixelDataError, PixelLimitError) as exc:
        if producing is None:
            raise
        raise ApiError(406, f"{_shown_syntax(producing)} cannot be produced: {exc}"[:1000]) from None

    async def chained() -> AsyncIterator[bytes]:
        if first is not None:
            yield first
        async for chunk in body:
            yield chunk

    return chained()


def _shown_syntax(ts: str) -> str:
    return syntax_name(ts) if ts.replace(".", "").isdigit() else ts


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
    if not_modified(request, etag):
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


def _octet_offers(ts: str) -> list[Offer]:
    """What bulk data other than pixel data can be sent as: the stored bytes (for the little endian
    syntaxes these are Explicit VR Little Endian, the default, PS3.18 8.7.3.5.2)."""
    stored = frozenset({ts, ANY_TRANSFER_SYNTAX})
    syntaxes = stored | {EXPLICIT_VR_LITTLE_ENDIAN} if ts in NATIVE_SYNTAXES else stored
    return [Offer("multipart/related", OCTET_STREAM, syntaxes, ANY_TRANSFER_SYNTAX)]


@lru_cache(maxsize=128)  # by stored syntax: computed once per worker, not per frame request
def _pixel_offers(ts: str, *, single_part: bool) -> tuple[Offer, ...]:
    """What frames (or pixel data as bulk data) can be sent as: the stored bytes (``*``, the stored
    syntax, or Explicit VR Little Endian for native little endian data) or transcoded; per media type
    (PS3.18 Table 8.7.3-5), a media type named without transfer-syntax means its default syntax. Offers
    are listed stored-first, so a wildcard gets the stored bytes as today."""
    octet = {EXPLICIT_VR_LITTLE_ENDIAN, ts, ANY_TRANSFER_SYNTAX}
    kinds: list[tuple[str, frozenset[str], str]] = [
        (OCTET_STREAM, frozenset(octet), EXPLICIT_VR_LITTLE_ENDIAN)
    ]
    for media, syntaxes in MEDIA_TYPE_SYNTAXES.items():
        if media == OCTET_STREAM:
            continue
        available = {s for s in syntaxes if s == ts or s in ENCODABLE}
        if ts in syntaxes:
            available.add(ANY_TRANSFER_SYNTAX)
        if available:
            kinds.insert(1 if ts in syntaxes else len(kinds), (media, frozenset(available), syntaxes[0]))
    offers = [Offer("multipart/related", media, available, default) for media, available, default in kinds]
    if single_part:
        offers += [Offer(media, None, available, default) for media, available, default in kinds]
    return tuple(offers)


def _pixel_not_acceptable(what_is: str, ts: str, single_part: bool, reasons: list[str]) -> ApiError:
    """406 for frames or pixel data, saying what can be asked for and why what was asked cannot be made."""
    media = frame_media_type(ts)
    message = (
        f"{what_is} stored as {syntax_name(ts)} and available as multipart/related"
        + (" or single-part (one frame)" if single_part else "")
        + f' with type="application/octet-stream" (uncompressed, or transfer-syntax=* as stored), '
        f'type="{media}" as stored, or transcoded to {_ENCODABLE_NAMES} (type="image/jpeg", "image/jls", '
        '"image/jp2", "image/dicom-rle" with their transfer-syntax)'
    )
    if reasons:
        message += ": " + "; ".join(reasons)
    return ApiError(406, message[:1500])


@dataclass(frozen=True)
class _PixelChoice:
    """How frames / pixel data will be sent: ``target`` None means the stored bytes."""

    media_type: str  # of each part, or of the single-part body
    single_part: bool
    syntax: str  # the transfer syntax the bytes are in
    target: str | None
    plan: transcode.Plan | None


async def _choose_pixels(
    request: Request, inst: StoredInstance, what_is: str, *, single_part: bool, frames: bool
) -> _PixelChoice:
    """The best acceptable representation of ``inst``'s pixels that can be produced (406 when none).
    ``frames``: for frames rather than bulk data (big endian frames are never sent as stored)."""
    ts = inst.transfer_syntax_uid
    offers = _pixel_offers(ts, single_part=single_part)
    accept = parse_accept(request.headers.get("accept"))
    native_le = ts in NATIVE_SYNTAXES
    reasons: list[str] = []
    pixels = services(request).pixels
    for candidate in candidates(accept, offers, {ts}):
        offer = offers[candidate.offer_index]
        media = offer.part_type or offer.media_type
        single = offer.part_type is None
        wanted = candidate.transfer_syntax or EXPLICIT_VR_LITTLE_ENDIAN
        if frames and ts == EXPLICIT_VR_BIG_ENDIAN and wanted in (ANY_TRANSFER_SYNTAX, ts):
            wanted = EXPLICIT_VR_LITTLE_ENDIAN  # big endian (retired) frames go out as little endian
        if wanted in (ANY_TRANSFER_SYNTAX, ts) or (wanted == EXPLICIT_VR_LITTLE_ENDIAN and native_le):
            syntax = EXPLICIT_VR_LITTLE_ENDIAN if native_le else ts
            return _PixelChoice(media, single, syntax, None, None)
        try:
            plan = await pixels.run(transcode.plan, _store(request), inst, wanted, pixels.memory_limit)
        except (PixelDataError, PixelLimitError) as exc:
            reasons.append(f"{media} in {syntax_name(wanted)}: {exc}")
            continue
        except FileNotFoundError:
            raise ApiError(404, "the instance was deleted") from None
        return _PixelChoice(media, single, wanted, wanted, plan)
    raise _pixel_not_acceptable(what_is, ts, single_part, reasons)


async def _transcoded_parts(
    request: Request, choice: _PixelChoice, chunks: Generator[bytes], *, one_part: bool = False
) -> Response:
    """Frames produced in the pixel pool: one part per item of ``chunks`` (or all of them one part, or
    a single-part body), chunked; a first frame that cannot be produced is a 406."""
    content_type = f"{choice.media_type}; transfer-syntax={choice.syntax}"
    if choice.single_part:
        pixels = services(request).pixels
        try:
            data = await pixels.run(b"".join, chunks)
        except (PixelDataError, PixelLimitError) as exc:
            raise ApiError(406, f"{_shown_syntax(choice.syntax)} cannot be produced: {exc}"[:1000]) from None
        except FileNotFoundError:
            raise ApiError(404, "the instance was deleted") from None
        return Response(data, media_type=content_type)
    boundary = new_boundary()
    first = part_header(boundary, content_type, first=True)
    rest = part_header(boundary, content_type)

    async def body() -> AsyncIterator[bytes]:
        index = 0
        async for chunk in _pulled(request, chunks):
            yield (first if index == 0 else b"" if one_part else rest) + chunk
            index += 1
        yield closing(boundary)

    return StreamingResponse(
        await _first_read_now(body(), choice.syntax),
        media_type=f'multipart/related; type="{choice.media_type}"; boundary={boundary}',
    )


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
    return b"".join(_range_body(open_instance_ranges(store, inst), pieces, first, rest, tail))


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
        ranges = await asyncio.to_thread(open_instance_ranges, store, inst)
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
    store = _store(request)
    if path != PIXEL_DATA:
        if negotiate(parse_accept(request.headers.get("accept")), _octet_offers(ts)) is None:
            raise ApiError(
                406,
                'this bulk data is available as multipart/related; type="application/octet-stream" in '
                f"transfer syntax {EXPLICIT_VR_LITTLE_ENDIAN if ts in NATIVE_SYNTAXES else ts}",
            )
        syntax = EXPLICIT_VR_LITTLE_ENDIAN if ts in NATIVE_SYNTAXES else ts
        return await _range_parts(store, inst, [[byte_range]], f"{OCTET_STREAM}; transfer-syntax={syntax}")
    choice = await _choose_pixels(request, inst, "this pixel data is", single_part=False, frames=False)
    if choice.plan is not None:
        if choice.syntax == EXPLICIT_VR_LITTLE_ENDIAN:  # all frames as one uncompressed value
            _length, chunks = transcode.native_pixel_data(store, choice.plan, as_rgb=True)
            return await _transcoded_parts(request, choice, chunks, one_part=True)
        numbers = list(range(1, len(await _frames_of(inst)) + 1))
        return await _transcoded_parts(request, choice, transcode.frame_chunks(store, choice.plan, numbers))
    if _compressed(ts):
        table = await _frames_of(inst)
        if table:
            # encapsulated pixel data: one part per frame, each the frame's compressed bitstream
            return await _range_parts(store, inst, table, f"{choice.media_type}; transfer-syntax={ts}")
    return await _range_parts(
        store, inst, [[byte_range]], f"{choice.media_type}; transfer-syntax={choice.syntax}"
    )


def _shown(text: str) -> str:
    return text if len(text) <= 64 else text[:64] + "..."


def frame_numbers(text: str, count: int, limit: int = MAX_FRAME_LIST) -> list[int]:
    """The frame numbers of a frame list (1-based, in the order given, repeats kept), at most ``limit``
    of them: 400 when malformed, 404 naming a frame past ``count``."""
    items = text.replace("%2C", ",").split(",", limit)
    if len(items) > limit:
        raise ApiError(400, f"frame list '{_shown(text)}' has more than {limit} frame numbers")
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
    numbers = frame_numbers(request.path_params["frames"], len(table))
    ts = inst.transfer_syntax_uid
    if ts == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN and any(b <= a for a, b in pairwise(numbers)):
        # a deflate stream is read forwards only: a frame before the one read last (or the same again)
        # would cost inflating the data set again from its start
        raise ApiError(
            400,
            f"frame list '{_shown(request.path_params['frames'])}': frames of a deflated instance must be "
            "asked for in strictly ascending order (each at most once)",
        )
    choice = await _choose_pixels(
        request, inst, "these frames are", single_part=len(numbers) == 1, frames=True
    )
    store = _store(request)
    if choice.plan is not None:
        return await _transcoded_parts(request, choice, transcode.frame_chunks(store, choice.plan, numbers))
    content_type = f"{choice.media_type}; transfer-syntax={choice.syntax}"
    pieces = [table[n - 1] for n in numbers]
    if choice.single_part:
        return await _range_single(store, inst, pieces[0], content_type)
    return await _range_parts(store, inst, pieces, content_type)


async def _range_single(
    store: ObjectStore, inst: StoredInstance, frame: Sequence[tuple[int, int]], content_type: str
) -> Response:
    """One stored frame as a single-part body (its fragments joined), streamed with its length."""
    try:
        ranges = await asyncio.to_thread(open_instance_ranges, store, inst)
    except FileNotFoundError:
        raise ApiError(404, "the instance was deleted") from None
    return StreamingResponse(
        _in_thread(_range_body(ranges, [frame], b"", b"", b"")),
        media_type=content_type,
        headers={"content-length": str(sum(length for _, length in frame))},
    )
