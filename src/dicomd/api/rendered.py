"""Rendered and thumbnail resources (PS3.18 8.3.5, 10.4.1.1.3-4): images a viewer or a browser shows.

- Instance and frame ``/rendered``: one image (JPEG by default, PNG, GIF). A multi-frame instance gives
  its first frame, except as image/gif, which animates all its frames (within pixel_memory_limit). A frame
  list of several frames, and study and series ``/rendered``, give multipart/related of images: one part
  per frame, or per image instance (its first frame), in index order.
- ``/thumbnail`` at every level: a representative frame (the middle image instance of the first series
  with images, its middle frame) fitted into 128x128 unless ``viewport`` says otherwise.
- Query parameters: ``accept`` (overrides the Accept header), ``window``, ``viewport``, ``quality``;
  ``annotation`` is accepted and ignored (nothing is burned in), as are ``charset``, ``iccprofile`` and
  parameters the standard does not define. Malformed values: 400.
- Any Accept that admits an image type gets one (``*/*``, ``image/*``); otherwise 406 naming the types.
  An instance without pixel data, or whose pixel data cannot be decoded: 406 with the reason; a frame
  larger than pixel_memory_limit: 406 naming the limit.

All decoding and rendering runs in the pixel pool (services(request).pixels), never on the event loop.
Renders are cached per worker by object key (one per stored version), frame and parameters, and carry an
ETag from the same, so If-None-Match is answered 304 before anything is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomd.api.common import ApiError, not_found, uid_scope
from dicomd.api.partitions import partition
from dicomd.api.services import services
from dicomd.api.wado import frame_numbers, not_modified
from dicomd.audit.events import annotate
from dicomd.http.multipart import closing, new_boundary, part_header
from dicomd.http.negotiation import Offer, negotiate, parse_accept
from dicomd.index.types import StoredInstance
from dicomd.pixels import render as rendering
from dicomd.pixels.frames import PixelDataError, decode_frame, decode_frames
from dicomd.pixels.render import RenderParameterError, RenderParams, Viewport
from dicomd.pixels.service import PixelLimitError, PixelService
from dicomd.storage import ObjectStore

THUMBNAIL_SIZE = 128  # pixels: a thumbnail fits in a square of this side unless `viewport` says otherwise
MAX_RENDERED_FRAMES = 256  # frames in one frame list, and in one animated GIF

_SINGLE_OFFERS = [Offer(media) for media in rendering.RENDERED_MEDIA_TYPES]
_MULTIPART_OFFERS = [Offer("multipart/related", media) for media in rendering.RENDERED_MEDIA_TYPES]
_AVAILABLE = ", ".join(rendering.RENDERED_MEDIA_TYPES)


@dataclass(frozen=True)
class Target:
    """One frame to render: an instance and a frame number (1-based)."""

    instance: StoredInstance
    frame: int


# ---- shared with WADO-URI -----------------------------------------------------------------------


def has_image(inst: StoredInstance) -> bool:
    return inst.frames_json != "[]" and inst.number_of_frames > 0


def render_key(kind: str, inst: StoredInstance, frame: int, params: RenderParams) -> tuple[object, ...]:
    """What identifies a rendered image: its key in the render cache and the source of its ETag (object
    keys are unique per stored version)."""
    return (kind, inst.object_key, frame, params.cache_key)


def _etag(key: tuple[object, ...]) -> str:
    return f'"{hashlib.blake2b(repr(key).encode(), digest_size=16).hexdigest()}"'


def _render_frame(store: ObjectStore, pixels: PixelService, target: Target, params: RenderParams) -> bytes:
    """Decode and render one frame (blocking: runs in the pixel pool)."""
    frame = decode_frame(store, target.instance, target.frame, memory_limit=pixels.memory_limit)
    description = frame.description
    pixels.check_memory(
        rendering.rendered_bytes(description.rows, description.columns, params.viewport),
        f"rendering a {description.rows}x{description.columns} frame",
    )
    return rendering.render(frame, params, target.frame)


def _render_animation(
    store: ObjectStore, pixels: PixelService, inst: StoredInstance, numbers: list[int], params: RenderParams
) -> bytes:
    """Decode and render frames ``numbers`` as one animated GIF (blocking: runs in the pixel pool); the
    decoded frames and their rendered images are held together, within the memory limit."""
    decoded = []
    held = 0
    with contextlib.closing(decode_frames(store, inst, numbers, memory_limit=pixels.memory_limit)) as frames:
        for frame, number in zip(frames, numbers, strict=True):
            description = frame.description
            width, height = rendering.output_size(description.columns, description.rows, params.viewport)
            held += description.decoded_frame_bytes + width * height * 3
            pixels.check_memory(held, f"an animation of {len(numbers)} frames")
            decoded.append((number, frame))
    return rendering.render_animation(decoded, params)


def _pixel_error(exc: Exception) -> ApiError:
    """A bad parameter is the client's (400); pixel data that cannot be decoded, or that needs more memory
    than the limit, cannot be given in a rendered media type (406, with the reason)."""
    if isinstance(exc, RenderParameterError):
        return ApiError(400, str(exc))
    return ApiError(406, f"the image cannot be rendered: {exc}")


async def _rendered(
    request: Request, key: tuple[object, ...], render: Callable[..., bytes], *args: object
) -> bytes:
    """The image of ``key``, from the worker's cache or made in the pixel pool by ``render(store, pixels,
    *args)``. Raises ApiError (400, 404, 406)."""
    service = services(request)
    body = service.render_cache.get(key)
    if body is None:
        try:
            body = await service.pixels.run(render, service.store, service.pixels, *args)
        except (PixelDataError, PixelLimitError, RenderParameterError) as exc:
            raise _pixel_error(exc) from None
        except FileNotFoundError:
            raise ApiError(404, "the instance was deleted") from None
        service.render_cache.put(key, body)
    return body


async def render_image(request: Request, target: Target, params: RenderParams) -> bytes:
    """One frame rendered, from the worker's cache or the pixel pool. Raises ApiError (400, 404, 406)."""
    key = render_key("rendered", target.instance, target.frame, params)
    return await _rendered(request, key, _render_frame, target, params)


async def _image_response(
    request: Request, key: tuple[object, ...], media_type: str, render: Callable[..., bytes], *args: object
) -> Response:
    """The image of ``key`` with its ETag: 304, before anything is read, when If-None-Match names it."""
    etag = _etag(key)
    if not_modified(request, etag):
        return Response(status_code=304, headers={"etag": etag})
    body = await _rendered(request, key, render, *args)
    return Response(body, media_type=media_type, headers={"etag": etag, "cache-control": "private, no-cache"})


async def frame_response(
    request: Request, target: Target, params: RenderParams, kind: str = "rendered"
) -> Response:
    """One frame rendered (``kind``: "rendered" or "thumbnail"), with its ETag."""
    key = render_key(kind, target.instance, target.frame, params)
    return await _image_response(request, key, params.media_type, _render_frame, target, params)


# ---- parameters ---------------------------------------------------------------------------------


def _params(request: Request, media_type: str, *, thumbnail: bool = False) -> RenderParams:
    query = request.query_params
    try:
        viewport = rendering.parse_viewport(query["viewport"]) if "viewport" in query else None
        if thumbnail:
            return RenderParams(media_type, viewport=viewport or Viewport(THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        window = rendering.parse_window(query["window"]) if "window" in query else None
        quality = rendering.parse_quality(query["quality"]) if "quality" in query else None
    except RenderParameterError as exc:
        raise ApiError(400, str(exc)) from None
    return RenderParams(media_type, quality or rendering.DEFAULT_QUALITY, window, viewport)


def _accept(request: Request) -> str | None:
    # PS3.18 8.3.3.1: the accept query parameter takes precedence over the Accept header
    return request.query_params.get("accept") or request.headers.get("accept")


def negotiate_image(accept: str | None, *, multipart: bool) -> str:
    """The rendered media type to send (for a multipart answer: its parts'), or 406."""
    ranges = parse_accept(accept)
    if multipart:
        choice = negotiate(ranges, _MULTIPART_OFFERS)
        if choice is not None and choice.part_type is not None:
            return choice.part_type
        # a client asking for image/png of a series means parts of image/png
    choice = negotiate(ranges, _SINGLE_OFFERS)
    if choice is None:
        what = (
            f'multipart/related; type="{rendering.JPEG}" (or image/png, image/gif)'
            if multipart
            else _AVAILABLE
        )
        raise ApiError(406, f"rendered images are available as {what}")
    return choice.media_type


# ---- handlers -----------------------------------------------------------------------------------


async def _find(request: Request) -> list[StoredInstance]:
    study, series, instance = uid_scope(request)
    found = await asyncio.to_thread(
        services(request).index.find_instances, partition(request), study, series, instance
    )
    if not found:
        raise not_found(series, instance)
    return found


def _only_images(found: list[StoredInstance], what: str) -> list[StoredInstance]:
    images = [inst for inst in found if has_image(inst)]
    if not images:
        raise ApiError(406, f"the {what} has no image to render (no instance with pixel data)")
    return images


async def rendered(request: Request) -> Response:
    """GET .../rendered of a study, series, instance or frame list."""
    found = await _find(request)
    params_of = request.path_params
    if "instance" not in params_of:
        images = _only_images(found, "series" if "series" in params_of else "study")
        annotate(request, instances=len(images))
        media = negotiate_image(_accept(request), multipart=True)
        return await _multipart(request, [Target(inst, 1) for inst in images], _params(request, media))
    inst = found[0]
    annotate(request, instances=1)
    if not has_image(inst):
        raise ApiError(406, "the instance has no pixel data: rendered images are offered for images only")
    if "frames" in params_of:
        numbers = frame_numbers(params_of["frames"], inst.number_of_frames, MAX_RENDERED_FRAMES)
        if len(numbers) > 1:
            media = negotiate_image(_accept(request), multipart=True)
            return await _multipart(request, [Target(inst, n) for n in numbers], _params(request, media))
        return await _single(request, Target(inst, numbers[0]), "rendered")
    media = negotiate_image(_accept(request), multipart=False)
    if media == rendering.GIF and inst.number_of_frames > 1:
        return await _animation(request, inst, _params(request, media))
    return await _single(request, Target(inst, 1), "rendered", media)


async def thumbnail(request: Request) -> Response:
    """GET .../thumbnail of a study, series, instance or frame: one small representative image."""
    found = await _find(request)
    annotate(request, instances=1)
    params_of = request.path_params
    if "instance" in params_of:
        inst = found[0]
        if not has_image(inst):
            raise ApiError(406, "the instance has no pixel data: thumbnails are offered for images only")
        if "frames" in params_of:
            numbers = frame_numbers(params_of["frames"], inst.number_of_frames, MAX_RENDERED_FRAMES)
            if len(numbers) != 1:
                raise ApiError(400, "a thumbnail is of one frame")
            target = Target(inst, numbers[0])
        else:
            target = Target(inst, (inst.number_of_frames + 1) // 2)
    else:
        chosen = representative(found)
        if chosen is None:
            what = "series" if "series" in params_of else "study"
            raise ApiError(406, f"the {what} has no image for a thumbnail (no instance with pixel data)")
        target = chosen
    return await _single(request, target, "thumbnail")


def representative(found: list[StoredInstance]) -> Target | None:
    """The middle image instance of the first series with images (instances come in series and instance
    number order), and its middle frame."""
    images = [inst for inst in found if has_image(inst)]
    if not images:
        return None
    series = [inst for inst in images if inst.series_instance_uid == images[0].series_instance_uid]
    inst = series[(len(series) - 1) // 2]
    return Target(inst, (inst.number_of_frames + 1) // 2)


async def _single(request: Request, target: Target, kind: str, media: str | None = None) -> Response:
    media = media or negotiate_image(_accept(request), multipart=False)
    return await frame_response(request, target, _params(request, media, thumbnail=kind == "thumbnail"), kind)


async def _animation(request: Request, inst: StoredInstance, params: RenderParams) -> Response:
    count = min(inst.number_of_frames, MAX_RENDERED_FRAMES)
    key = render_key("animation", inst, count, params)
    return await _image_response(
        request, key, rendering.GIF, _render_animation, inst, list(range(1, count + 1)), params
    )


async def _multipart(request: Request, targets: list[Target], params: RenderParams) -> Response:
    """One part per target, rendered one after another as the body streams (one frame in memory at a
    time); the first is rendered before the response starts, so its errors get their status."""
    boundary = new_boundary()
    first = await render_image(request, targets[0], params)

    async def body() -> AsyncIterator[bytes]:
        yield part_header(boundary, params.media_type, first=True) + first
        for target in targets[1:]:
            try:
                image = await render_image(request, target, params)
            except ApiError:
                continue  # an instance that cannot be rendered is left out; the status is already sent
            yield part_header(boundary, params.media_type) + image
        yield closing(boundary)

    return StreamingResponse(
        body(), media_type=f'multipart/related; type="{params.media_type}"; boundary={boundary}'
    )
