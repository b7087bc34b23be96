"""WADO-URI (PS3.18 chapter 9): ``GET /v{n}/?requestType=WADO&studyUID=..&seriesUID=..&objectUID=..``
(what OHIF's ``wadouri`` mode sends to its wadoUriRoot, /v{n}; /v{n} without the slash is redirected
there) and the same at ``/v{n}/wado``, for legacy viewers and EHR links. Under a partition too.

- ``contentType``: application/dicom (the stored file), image/jpeg, image/png or image/gif (rendered
  through the rendered path, api/rendered.py); a list takes the first one offered. Absent: image/jpeg
  for an image, application/dicom otherwise. ``*/*`` and ``image/*`` pick as absent does.
- Rendering: ``frameNumber``, ``rows``, ``columns`` (maxima, aspect kept), ``region`` (fractions),
  ``windowCenter`` + ``windowWidth``, ``imageQuality``; ``annotation`` and ``charset`` are accepted and
  ignored. With application/dicom they are refused (400), as PS3.18 says they shall not be present.
- ``transferSyntax`` (application/dicom only): absent or ``*``: the stored file, byte-exact; another:
  transcoded as WADO-RS does (api/wado.py), 406 when that syntax cannot be produced.
- ``anonymize=yes`` and presentation states (``presentationUID``): not supported, 400 saying so.
- Parameters the standard does not define are ignored (a viewer's own ``frame=`` included).
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from dicomd.api import rendered
from dicomd.api.common import ApiError
from dicomd.api.partitions import partition
from dicomd.api.services import services
from dicomd.api.wado import instance_response
from dicomd.audit.events import annotate
from dicomd.dicom.uids import is_valid_uid
from dicomd.index.types import StoredInstance
from dicomd.pixels import render as rendering
from dicomd.pixels.render import RenderParameterError, RenderParams, Viewport

DICOM = "application/dicom"
_RENDER_ONLY = ("rows", "columns", "region", "windowCenter", "windowWidth", "frameNumber", "imageQuality")


def _uid(request: Request, name: str) -> str:
    value = request.query_params.get(name)
    if not value:
        raise ApiError(400, f"WADO-URI needs {name} (requestType=WADO&studyUID=..&seriesUID=..&objectUID=..)")
    if not is_valid_uid(value):
        raise ApiError(400, f"'{value[:64]}' is not a valid UID for {name}")
    return value


def _content_type(request: Request, image: bool) -> str:
    """The media type to answer with, from contentType (a comma-separated list, first offered wins)."""
    default = rendering.JPEG if image else DICOM
    text = request.query_params.get("contentType")
    if not text:
        return default
    offered = [*rendering.RENDERED_MEDIA_TYPES, DICOM] if image else [DICOM]
    for item in text.split(","):
        media = item.split(";", 1)[0].strip().lower()
        if media in offered:
            return media
        if media in ("*/*", "*") or (media == "image/*" and image):
            return default
    what = "application/dicom, image/jpeg, image/png or image/gif" if image else "application/dicom"
    raise ApiError(406, f"contentType '{text[:64]}' is not available: this object is available as {what}")


def _integer(request: Request, name: str, low: int, high: int) -> int | None:
    text = request.query_params.get(name)
    if text is None:
        return None
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 9 or not low <= int(text) <= high:
        raise ApiError(400, f"{name} must be an integer from {low} to {high}")
    return int(text)


def _render_params(request: Request, media: str) -> RenderParams:
    query = request.query_params
    rows = _integer(request, "rows", 1, rendering.MAX_VIEWPORT)
    columns = _integer(request, "columns", 1, rendering.MAX_VIEWPORT)
    quality = _integer(request, "imageQuality", 1, 100)
    try:
        fractions = rendering.parse_region(query["region"]) if "region" in query else None
        window = None
        if "windowCenter" in query or "windowWidth" in query:
            if "windowCenter" not in query or "windowWidth" not in query:
                raise RenderParameterError("windowCenter and windowWidth go together")
            window = rendering.parse_window(f"{query['windowCenter']},{query['windowWidth']}")
    except RenderParameterError as exc:
        raise ApiError(400, str(exc)) from None
    viewport = None
    if rows is not None or columns is not None or fractions is not None:
        viewport = Viewport(columns, rows, fractions=fractions)
    return RenderParams(media, quality or rendering.DEFAULT_QUALITY, window, viewport)


async def retrieve(request: Request) -> Response:
    query = request.query_params
    request_type = query.get("requestType")
    if request_type is None:
        raise ApiError(
            400,
            "this is the WADO-URI endpoint: it needs requestType=WADO&studyUID=..&seriesUID=..&objectUID=..",
        )
    if request_type.strip().upper() != "WADO":
        raise ApiError(400, f"requestType '{request_type[:32]}' is not supported: only WADO")
    study, series, instance = (
        _uid(request, "studyUID"),
        _uid(request, "seriesUID"),
        _uid(request, "objectUID"),
    )
    annotate(request, study=study, series=series, instance=instance)
    if query.get("anonymize", "").strip().lower() == "yes":
        raise ApiError(400, "anonymize=yes is not supported by this server")
    if "presentationUID" in query or "presentationSeriesUID" in query:
        raise ApiError(400, "presentation states (presentationUID) are not supported by this server")
    found = await asyncio.to_thread(
        services(request).index.find_instances, partition(request), study, series, instance
    )
    if not found:
        raise ApiError(404, "the requested instance does not exist")
    inst = found[0]
    annotate(request, instances=1)
    image = rendered.has_image(inst)
    media = _content_type(request, image)
    if media == DICOM:
        given = [name for name in _RENDER_ONLY if name in query]
        if given:
            raise ApiError(400, f"{', '.join(given)} cannot be used with contentType=application/dicom")
        return await _dicom(request, inst)
    if "transferSyntax" in query:
        raise ApiError(400, "transferSyntax can be used with contentType=application/dicom only")
    params = _render_params(request, media)
    frame = _integer(request, "frameNumber", 1, 2**31) or 1
    if frame > inst.number_of_frames:
        raise ApiError(
            404, f"frame {frame} does not exist: the instance has {inst.number_of_frames} frame(s)"
        )
    return await rendered.frame_response(request, rendered.Target(inst, frame), params)


async def _dicom(request: Request, inst: StoredInstance) -> Response:
    """The instance as application/dicom: as stored, or transcoded to ``transferSyntax`` (WADO-RS's path;
    406 naming the syntax when it cannot be produced)."""
    wanted = request.query_params.get("transferSyntax", "").strip() or None
    if wanted is not None and wanted != "*" and not is_valid_uid(wanted):
        raise ApiError(400, f"transferSyntax '{wanted[:64]}' is not a UID")
    return await instance_response(request, inst, wanted)
