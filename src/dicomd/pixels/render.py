"""Rendered images (PS3.18 8.3.5): a decoded frame turned into what a viewer would show, as JPEG, PNG or GIF.

Pure functions, no HTTP. The pipeline follows PS3.4 N.2 for what an archive can know without a
presentation state: modality LUT (Rescale Slope/Intercept or Modality LUT Sequence), VOI (the request's
window, else the file's first Window Center/Width or VOI LUT, else the frame's own range), MONOCHROME1 and
an INVERSE presentation LUT shape inverted; PALETTE COLOR through its palette; YBR converted to RGB;
everything to 8 bits. Then the source region and viewport (PS3.18 8.3.5.1.3), then the encoder.

Parameter parsers raise RenderParameterError (the API answers 400 with its message).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydicom import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, convert_color_space

from dicomd.pixels.frames import DecodedFrame, PixelDataError

JPEG, PNG, GIF = "image/jpeg", "image/png", "image/gif"
RENDERED_MEDIA_TYPES = (JPEG, PNG, GIF)  # in order of preference: JPEG is what viewers ask for
DEFAULT_QUALITY = 90
MAX_VIEWPORT = 8192  # pixels per side of a rendered image
WINDOW_FUNCTIONS = ("linear", "linear-exact", "sigmoid")
_FILE_VOI_FUNCTIONS = {"LINEAR": "linear", "LINEAR_EXACT": "linear-exact", "SIGMOID": "sigmoid"}
DEFAULT_FRAME_TIME_MS = 100  # an animated GIF's frame time when the instance names none


class RenderParameterError(ValueError):
    """A rendering parameter is malformed or does not fit the image (HTTP 400)."""


@dataclass(frozen=True)
class Window:
    """A VOI window (PS3.3 C.11.2.1.2): center and width in modality values, and its function."""

    center: float
    width: float
    function: str = "linear"


@dataclass(frozen=True)
class Viewport:
    """The rendered image's size and the source region shown in it.

    ``width``/``height``: the viewport; None (WADO-URI rows/columns) means "follow the other side's
    scale", both None the region's own size. ``region``: (sx, sy, sw, sh) in source pixels, sw/sh None
    for "to the image's edge" and negative to flip (PS3.18 8.3.5.1.3). ``fractions``: WADO-URI's region
    (x1, y1, x2, y2) as fractions of the image instead."""

    width: int | None = None
    height: int | None = None
    region: tuple[int, int, int | None, int | None] | None = None
    fractions: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class RenderParams:
    media_type: str = JPEG
    quality: int = DEFAULT_QUALITY
    window: Window | None = None
    viewport: Viewport | None = None

    @property
    def cache_key(self) -> tuple[object, ...]:
        return (self.media_type, self.quality, self.window, self.viewport)


# ---- parameter parsing --------------------------------------------------------------------------


def _number(text: str, what: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise RenderParameterError(f"{what} '{_shown(text)}' is not a number") from None
    if not math.isfinite(value):
        raise RenderParameterError(f"{what} '{_shown(text)}' is not a finite number")
    return value


def _integer(text: str, what: str) -> int:
    text = text.strip()
    body = text[1:] if text[:1] in "+-" else text
    if not (body.isascii() and body.isdigit()) or len(body) > 9:
        raise RenderParameterError(f"{what} '{_shown(text)}' is not an integer")
    return int(text)


def _shown(text: str) -> str:
    return text if len(text) <= 40 else text[:40] + "..."


def check_window(center: float, width: float, function: str) -> Window:
    function = function.strip().lower()
    if function not in WINDOW_FUNCTIONS:
        raise RenderParameterError(
            f"window function '{_shown(function)}' is not one of {', '.join(WINDOW_FUNCTIONS)}"
        )
    if function == "linear" and width < 1:
        raise RenderParameterError("a linear window's width must be at least 1")
    if width <= 0:
        raise RenderParameterError("a window's width must be positive")
    return Window(center, width, function)


def parse_window(text: str) -> Window:
    """``window=center,width[,function]`` (PS3.18 8.3.5.1.4; the function defaults to linear)."""
    items = text.split(",")
    if len(items) not in (2, 3):
        raise RenderParameterError(f"window '{_shown(text)}' must be center,width,function")
    center = _number(items[0], "window center")
    width = _number(items[1], "window width")
    return check_window(center, width, items[2] if len(items) == 3 else "linear")


def _size(value: int, what: str) -> int:
    if not 1 <= value <= MAX_VIEWPORT:
        raise RenderParameterError(f"{what} must be between 1 and {MAX_VIEWPORT}")
    return value


def parse_viewport(text: str) -> Viewport:
    """``viewport=vw,vh[,sx,sy,sw,sh]`` (PS3.18 8.3.5.1.3). sx, sy, sw, sh may be empty (their
    defaults: 0, 0 and the rest of the image); a negative sw or sh flips the region."""
    items = text.split(",")
    if len(items) not in (2, 4, 6):
        raise RenderParameterError(f"viewport '{_shown(text)}' must be vw,vh or vw,vh,sx,sy,sw,sh")
    width = _size(_integer(items[0], "viewport width"), "viewport width")
    height = _size(_integer(items[1], "viewport height"), "viewport height")
    if len(items) == 2:
        return Viewport(width, height)
    values = [None if not item.strip() else _integer(item, "viewport region") for item in items[2:]]
    sx, sy = values[0] or 0, values[1] or 0
    if sx < 0 or sy < 0:
        raise RenderParameterError("viewport sx and sy must not be negative")
    sw, sh = (values[2], values[3]) if len(values) == 4 else (None, None)
    if sw == 0 or sh == 0:
        raise RenderParameterError("viewport sw and sh must not be zero")
    return Viewport(width, height, (sx, sy, sw, sh))


def parse_quality(text: str) -> int:
    quality = _integer(text, "quality")
    if not 1 <= quality <= 100:
        raise RenderParameterError("quality must be between 1 and 100")
    return quality


def parse_region(text: str) -> tuple[float, float, float, float]:
    """WADO-URI ``region=x1,y1,x2,y2``: the top left and bottom right corners as fractions (0.0-1.0)."""
    items = text.split(",")
    if len(items) != 4:
        raise RenderParameterError(f"region '{_shown(text)}' must be x1,y1,x2,y2")
    x1, y1, x2, y2 = (_number(item, "region") for item in items)
    if not all(0.0 <= v <= 1.0 for v in (x1, y1, x2, y2)) or x1 >= x2 or y1 >= y2:
        raise RenderParameterError("region must be 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1")
    return x1, y1, x2, y2


# ---- per-frame attributes -----------------------------------------------------------------------

# attributes of an enhanced multi-frame image that live in its functional groups (PS3.3 C.7.6.16)
_FUNCTIONAL_GROUPS = ("PixelValueTransformationSequence", "FrameVOILUTSequence")


def frame_attributes(header: Dataset, number: int) -> Dataset:
    """The instance's rendering attributes for frame ``number`` (1-based): the top-level ones, overlaid
    with those of the shared and then the frame's functional groups (enhanced multi-frame images)."""
    if "SharedFunctionalGroupsSequence" not in header and "PerFrameFunctionalGroupsSequence" not in header:
        return header
    found = Dataset()
    for keyword in (
        "RescaleSlope",
        "RescaleIntercept",
        "RescaleType",
        "ModalityLUTSequence",
        "WindowCenter",
        "WindowWidth",
        "VOILUTFunction",
        "VOILUTSequence",
        "PresentationLUTShape",
        "PhotometricInterpretation",
        "BitsStored",
        "PixelRepresentation",
    ):
        if keyword in header:
            setattr(found, keyword, header[keyword].value)
    groups: list[Dataset] = []
    for keyword, index in (
        ("SharedFunctionalGroupsSequence", 0),
        ("PerFrameFunctionalGroupsSequence", number - 1),
    ):
        sequence = header.get(keyword)
        if sequence is not None and 0 <= index < len(sequence):
            groups.append(sequence[index])
    for group in groups:
        for macro in _FUNCTIONAL_GROUPS:
            items = group.get(macro)
            if not items:
                continue
            for element in items[0]:
                if element.keyword:
                    setattr(found, element.keyword, element.value)
    return found


# ---- the pipeline -------------------------------------------------------------------------------


_TABLE_MIN_PIXELS = 1 << 16  # smaller frames go through the pipeline pixel by pixel


def _window(values: np.ndarray, window: Window) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 and C.11.2.1.3.2 to output 0.0-255.0. Values are float64 so that any finite
    center and width a request gives stays finite (extremes saturate to black or white)."""
    values = values.astype(np.float64, copy=False)
    c, w = window.center, window.width
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if window.function == "sigmoid":
            shown = 255.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
        elif window.function == "linear-exact":
            shown = ((values - c) / w + 0.5) * 255.0
        elif w <= 1:  # a linear window of width 1 is a threshold
            shown = np.where(values > c - 0.5, 255.0, 0.0)
        else:
            shown = ((values - (c - 0.5)) / (w - 1) + 0.5) * 255.0
    return np.clip(np.nan_to_num(shown, nan=0.0, posinf=255.0, neginf=0.0), 0.0, 255.0)


def _first(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = value[0] if len(value) else None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _file_window(attrs: Dataset) -> Window | None:
    center, width = _first(attrs.get("WindowCenter")), _first(attrs.get("WindowWidth"))
    if center is None or width is None or not math.isfinite(center) or not math.isfinite(width):
        return None
    function = attrs.get("VOILUTFunction")
    name = _FILE_VOI_FUNCTIONS.get(
        str(function[0] if isinstance(function, list) else function or "LINEAR").strip(), "linear"
    )
    if width <= 0 or (name == "linear" and width < 1):
        return None
    return Window(center, width, name)


def _file_voi_lut(values: np.ndarray, attrs: Dataset) -> np.ndarray | None:
    """The first VOI LUT of the instance (PS3.3 C.11.2.1.1) applied, scaled to 0.0-255.0; None without
    a usable one."""
    sequence = attrs.get("VOILUTSequence")
    if not sequence:
        return None
    item = sequence[0]
    try:
        entries, first, bits = (int(v) for v in item.LUTDescriptor)
        data = item.LUTData
        lut = np.frombuffer(data, "<u2") if isinstance(data, bytes) else np.asarray(data, np.float64)
    except (AttributeError, TypeError, ValueError):  # a malformed LUT: fall back to the frame's range
        return None
    entries = entries or 65536
    if lut.size < 1:
        return None
    lut = lut[:entries].astype(np.float32)
    if first >= 1 << 15 and float(np.min(values)) < 0:  # the first mapped value is signed (US or SS)
        first -= 1 << 16
    looked_up = lut[np.clip(np.rint(values).astype(np.int64) - first, 0, lut.size - 1)]
    top = max(float((1 << bits) - 1) if 0 < bits <= 16 else 0.0, float(lut.max()))
    if top <= 0:
        return None
    return looked_up * np.float32(255.0 / top)


def _range_window(values: np.ndarray) -> Window:
    low, high = float(np.min(values)), float(np.max(values))
    if high <= low:
        return Window(low + 0.5, 1.0, "linear-exact")  # a flat image: all black
    return Window((low + high) / 2, high - low, "linear-exact")


def _grayscale(frame: DecodedFrame, attrs: Dataset, window: Window | None) -> np.ndarray:
    pixels = frame.pixels
    if pixels.dtype == np.bool_:
        pixels = pixels.astype(np.uint8)
    inverse = frame.photometric == "MONOCHROME1"
    if str(attrs.get("PresentationLUTShape", "")).strip() == "INVERSE":
        inverse = not inverse
    if pixels.dtype.kind in "ui" and pixels.dtype.itemsize <= 2 and pixels.size > _TABLE_MIN_PIXELS:
        # integer pixels of at most 16 bits: the pipeline runs once per stored value between the frame's
        # lowest and highest (at most 65,536) and the frame is a table look-up: the same output, several
        # times faster than the pipeline over every pixel of a 512x512 image
        # unsigned values index the table directly (from 0); signed ones from the frame's lowest
        low = int(pixels.min()) if pixels.dtype.kind == "i" else 0
        indices = pixels if low == 0 else pixels.astype(np.int32) - low
        domain = np.arange(low, int(pixels.max()) + 1, dtype=np.int64).astype(pixels.dtype)
        present = None
        if window is None and _file_window(attrs) is None:  # the range of the values present may be used
            present = np.bincount(indices.ravel(), minlength=domain.size) > 0
        table = _display_values(domain, attrs, window, inverse, present)
        return table[indices]
    return _display_values(pixels, attrs, window, inverse, None)


def _display_values(
    pixels: np.ndarray, attrs: Dataset, window: Window | None, inverse: bool, present: np.ndarray | None
) -> np.ndarray:
    """Modality LUT, VOI (the request's window, else the file's, else its VOI LUT, else the range of the
    values present: ``present`` marks which of ``pixels`` occur in the frame, None = all) and inversion."""
    try:
        values = apply_modality_lut(pixels, attrs)
    except Exception:  # a malformed modality LUT or rescale: show the stored values
        values = pixels
    with np.errstate(over="ignore", invalid="ignore"):
        values = np.asarray(values, dtype=np.float64)
    if window is not None:
        shown = _window(values, window)
    else:
        file_window = _file_window(attrs)
        if file_window is not None:
            shown = _window(values, file_window)
        else:
            from_lut = _file_voi_lut(np.rint(values).astype(np.int64), attrs)
            occurring = values if present is None else values[present]
            shown = from_lut if from_lut is not None else _window(values, _range_window(occurring))
    out = np.rint(shown).astype(np.uint8)
    return 255 - out if inverse else out


def _to_8_bits(values: np.ndarray, bits_stored: int) -> np.ndarray:
    if values.dtype == np.uint8:
        return values
    shift = max(0, min(bits_stored, values.dtype.itemsize * 8) - 8)
    return np.clip(values.astype(np.int64) >> shift, 0, 255).astype(np.uint8)


def display_pixels(frame: DecodedFrame, number: int = 1, window: Window | None = None) -> np.ndarray:
    """Frame ``number`` of its instance as 8-bit display values: (rows, columns) grey or (rows, columns, 3)
    RGB. ``window`` (the request's) applies to greyscale images only."""
    attrs = frame_attributes(frame.header, number)
    photometric = frame.photometric.strip().upper()
    pixels = frame.pixels
    bits_stored = frame.description.bits_stored
    if photometric == "PALETTE COLOR":
        try:
            rgb = apply_color_lut(pixels, frame.header)
        except Exception as exc:
            raise PixelDataError(f"the palette color lookup tables cannot be applied ({exc})"[:200]) from None
        if rgb.dtype != np.uint8:
            rgb = (rgb >> 8).astype(np.uint8) if rgb.size and int(rgb.max()) > 255 else rgb.astype(np.uint8)
        return np.ascontiguousarray(rgb[..., :3])
    if pixels.ndim == 3 and pixels.shape[-1] == 3:
        if photometric in ("YBR_FULL", "YBR_FULL_422"):
            pixels = convert_color_space(pixels, "YBR_FULL", "RGB")
        elif photometric.startswith("YBR_PARTIAL"):
            pixels = convert_color_space(
                pixels, "YBR_PARTIAL_420" if "420" in photometric else "YBR_PARTIAL_422", "RGB"
            )
        return np.ascontiguousarray(
            _to_8_bits(pixels, bits_stored if frame.description.bits_allocated > 8 else 8)
        )
    if pixels.ndim != 2:
        raise PixelDataError(f"a frame of shape {pixels.shape} ({photometric}) cannot be rendered")
    return _grayscale(frame, attrs, window)


def _source_region(
    shape: tuple[int, ...], viewport: Viewport | None
) -> tuple[int, int, int, int, bool, bool]:
    """(x0, y0, x1, y1, flip horizontally, flip vertically): the region of the image shown."""
    rows, columns = shape[0], shape[1]
    if viewport is None or (viewport.region is None and viewport.fractions is None):
        return 0, 0, columns, rows, False, False
    if viewport.fractions is not None:
        fx1, fy1, fx2, fy2 = viewport.fractions
        x0, y0 = math.floor(fx1 * columns), math.floor(fy1 * rows)
        x1, y1 = max(x0 + 1, math.ceil(fx2 * columns)), max(y0 + 1, math.ceil(fy2 * rows))
        return x0, y0, min(x1, columns), min(y1, rows), False, False
    assert viewport.region is not None
    sx, sy, sw, sh = viewport.region
    if sx >= columns or sy >= rows:
        raise RenderParameterError(
            f"viewport region starts at ({sx},{sy}), outside the {columns}x{rows} image"
        )
    flip_x, flip_y = sw is not None and sw < 0, sh is not None and sh < 0
    if sw is None:
        x0, x1 = sx, columns
    elif sw > 0:
        x0, x1 = sx, min(columns, sx + sw)
    else:  # the region extends left of sx, shown flipped
        x0, x1 = max(0, sx + sw), sx
    if sh is None:
        y0, y1 = sy, rows
    elif sh > 0:
        y0, y1 = sy, min(rows, sy + sh)
    else:
        y0, y1 = max(0, sy + sh), sy
    if x1 <= x0 or y1 <= y0:
        raise RenderParameterError("the viewport's source region holds no pixels of the image")
    return x0, y0, x1, y1, flip_x, flip_y


def output_size(region_width: int, region_height: int, viewport: Viewport | None) -> tuple[int, int]:
    """The rendered size: the region scaled to fit the viewport, its aspect ratio kept."""
    if viewport is None or (viewport.width is None and viewport.height is None):
        return region_width, region_height
    scales = []
    if viewport.width is not None:
        scales.append(viewport.width / region_width)
    if viewport.height is not None:
        scales.append(viewport.height / region_height)
    scale = min(scales)
    return max(1, min(MAX_VIEWPORT, round(region_width * scale))), max(
        1, min(MAX_VIEWPORT, round(region_height * scale))
    )


def apply_viewport(pixels: np.ndarray, viewport: Viewport | None) -> Image.Image:
    x0, y0, x1, y1, flip_x, flip_y = _source_region(pixels.shape, viewport)
    region = pixels[y0:y1, x0:x1]
    if flip_x:
        region = region[:, ::-1]
    if flip_y:
        region = region[::-1]
    image = Image.fromarray(np.ascontiguousarray(region), "RGB" if region.ndim == 3 else "L")
    size = output_size(x1 - x0, y1 - y0, viewport)
    if size != image.size:
        # a reduction by a whole factor first keeps large downscales fast (thumbnails of big images)
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return image


def encode(
    images: list[Image.Image],
    media_type: str,
    quality: int = DEFAULT_QUALITY,
    frame_time_ms: int = DEFAULT_FRAME_TIME_MS,
) -> bytes:
    """``images`` (one, or the frames of an animated GIF) encoded as ``media_type``."""
    out = io.BytesIO()
    first = images[0]
    if media_type == JPEG:
        first.save(out, "JPEG", quality=quality)
    elif media_type == PNG:
        first.save(out, "PNG", compress_level=6)
    elif media_type == GIF:
        frames = [im.quantize(256) if im.mode == "RGB" else im for im in images]
        if len(frames) == 1:
            frames[0].save(out, "GIF")
        else:
            frames[0].save(
                out, "GIF", save_all=True, append_images=frames[1:], duration=frame_time_ms, loop=0
            )
    else:
        raise RenderParameterError(f"{media_type} is not a rendered media type")
    return out.getvalue()


def render(frame: DecodedFrame, params: RenderParams, number: int = 1) -> bytes:
    """Frame ``number`` (1-based, for per-frame attributes) rendered as ``params`` ask."""
    image = apply_viewport(display_pixels(frame, number, params.window), params.viewport)
    return encode([image], params.media_type, params.quality)


def render_animation(frames: list[tuple[int, DecodedFrame]], params: RenderParams) -> bytes:
    """Several frames (number, decoded) as one animated GIF, at the instance's frame time."""
    images = [apply_viewport(display_pixels(f, n, params.window), params.viewport) for n, f in frames]
    header = frames[0][1].header
    frame_time = _first(header.get("FrameTime"))
    ms = int(frame_time) if frame_time is not None and 10 <= frame_time <= 10_000 else DEFAULT_FRAME_TIME_MS
    return encode(images, GIF, params.quality, ms)


def rendered_bytes(rows: int, columns: int, viewport: Viewport | None) -> int:
    """Working memory of rendering one frame: a few float64 arrays of its values (modality LUT, window),
    then the output image."""
    width, height = output_size(columns, rows, viewport) if viewport else (columns, rows)
    return rows * columns * 3 * 8 + width * height * 3
