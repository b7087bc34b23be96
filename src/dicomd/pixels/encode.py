"""One decoded frame encoded in a target transfer syntax: pydicom's encoders (RLE, JPEG-LS, JPEG 2000 via the
codec wheels) and Pillow for JPEG baseline. ``check_encodable`` says from the image description alone
(before any pixel is decoded) whether a target can hold the image, so a request is refused with 406 before
its response starts rather than half-way through it."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import UID

from dicomd.pixels import codec_processes
from dicomd.pixels.frames import ImageDescription, PixelDataError
from dicomd.pixels.syntaxes import (
    ENCODABLE,
    JPEG_2000,
    JPEG_2000_LOSSLESS,
    JPEG_BASELINE,
    JPEG_LS_NEAR_LOSSLESS,
    NATIVE_TARGETS,
    RLE_LOSSLESS,
    syntax_name,
)

_JPEG_QUALITY = 90
_J2K_COMPRESSION_RATIO = 10  # lossy JPEG 2000: about what viewers' lossy J2K transfer settings use
_JLS_NEAR_LOSSLESS_ERROR = 2
_J2K_MIN_SIZE = 32  # the largest difference of any pixel value after JPEG-LS near-lossless


class EncodeError(PixelDataError):
    """The image cannot be produced in the target transfer syntax (answer 406 with the reason)."""


@dataclass(frozen=True)
class EncodedFrame:
    data: bytes
    attributes: dict[str, Any]  # Image Pixel attributes (keywords) the data set must carry with these bytes


def decoded_photometric(photometric: str) -> str:
    """The photometric interpretation of decoded (full-resolution) pixels: pydicom's decoders up-sample
    YBR_FULL_422 data to one value per sample, which is YBR_FULL."""
    return "YBR_FULL" if photometric == "YBR_FULL_422" else photometric


def check_encodable(description: ImageDescription, photometric: str, target: str) -> None:
    """Raise EncodeError (naming the target and why) when a frame of ``description`` whose decoded pixels
    are in ``photometric`` cannot be encoded in ``target``."""
    spec = ENCODABLE.get(target)
    if spec is None:
        raise EncodeError(f"dicomd cannot encode pixel data in {syntax_name(target)}")
    if target in NATIVE_TARGETS:
        return
    why = ""
    if spec.bits_allocated is not None and description.bits_allocated not in spec.bits_allocated:
        takes = " or ".join(map(str, spec.bits_allocated))
        why = f"Bits Allocated {description.bits_allocated} (it takes {takes})"
    elif description.bits_stored > spec.max_bits:
        why = f"Bits Stored {description.bits_stored} (it takes at most {spec.max_bits})"
    elif description.pixel_representation and not spec.signed:
        why = "signed pixel values"
    elif description.pixel_representation and description.samples_per_pixel == 3:
        why = "signed colour pixel values"
    elif spec.lossy and photometric == "PALETTE COLOR":
        why = "palette colour pixels (lossy compression would change the palette indices)"
    elif photometric not in _photometrics_for(target, description):
        why = f"photometric interpretation {photometric}"
    elif (
        target in (JPEG_2000_LOSSLESS, JPEG_2000)
        and min(description.rows, description.columns) < _J2K_MIN_SIZE
    ):
        # the openjpeg wheel always uses 6 wavelet resolutions, which need 2**5 pixels each way
        why = f"fewer than {_J2K_MIN_SIZE} rows or columns ({description.rows}x{description.columns})"
    if why:
        raise EncodeError(f"an image with {why} cannot be encoded in {syntax_name(target)}")


def _photometrics_for(target: str, description: ImageDescription) -> set[str]:
    if description.samples_per_pixel == 1:
        return {"MONOCHROME1", "MONOCHROME2", "PALETTE COLOR"}
    if (
        target in (RLE_LOSSLESS, "1.2.840.10008.1.2.4.80", JPEG_LS_NEAR_LOSSLESS)
        and description.bits_allocated > 8
    ):
        return {"RGB"}  # pydicom's profiles: YBR_FULL only with 8-bit samples
    return {"RGB", "YBR_FULL"}


def encode_frame(
    pixels: np.ndarray, photometric: str, description: ImageDescription, target: str
) -> EncodedFrame:
    """``pixels`` (one decoded frame, as pydicom's ``pixel_array`` gives it, in ``photometric``) encoded in
    ``target`` (a compressed syntax of ENCODABLE). Raises EncodeError."""
    photometric = decoded_photometric(photometric)
    check_encodable(description, photometric, target)
    attributes: dict[str, Any] = {"PhotometricInterpretation": photometric}
    if description.samples_per_pixel == 3:
        attributes["PlanarConfiguration"] = 0
    if target == JPEG_BASELINE:
        return _jpeg_baseline(pixels, photometric, attributes)
    options: dict[str, Any] = {
        "rows": description.rows,
        "columns": description.columns,
        "number_of_frames": 1,
        "samples_per_pixel": description.samples_per_pixel,
        "bits_allocated": description.bits_allocated,
        "bits_stored": description.bits_stored,
        "pixel_representation": description.pixel_representation,
        "photometric_interpretation": photometric,
        "planar_configuration": 0,
    }
    if target == JPEG_2000:
        options["j2k_cr"] = [_J2K_COMPRESSION_RATIO]
    elif target == JPEG_LS_NEAR_LOSSLESS:
        options["jls_error"] = _JLS_NEAR_LOSSLESS_ERROR
    try:
        data = codec_processes.run(_encode, np.ascontiguousarray(pixels), target, options)
    except codec_processes.CodecCrashed as exc:
        raise EncodeError(f"the frame cannot be encoded in {syntax_name(target)} ({exc})") from None
    return EncodedFrame(data, attributes)


def _encode(pixels: np.ndarray, target: str, options: dict[str, Any]) -> bytes:
    """The codec call of encode_frame (in a codec process, in a server worker)."""
    try:
        encoder = get_encoder(UID(target))
        if not encoder.is_available:
            raise EncodeError(f"the encoder for {syntax_name(target)} is not installed")
        return bytes(encoder.encode(pixels, **options))
    except EncodeError:
        raise
    except Exception as exc:  # the encoders raise many types on values they cannot take
        raise EncodeError(f"the frame cannot be encoded in {syntax_name(target)} ({exc})"[:300]) from None


def _jpeg_baseline(pixels: np.ndarray, photometric: str, attributes: dict[str, Any]) -> EncodedFrame:
    """8-bit JPEG baseline via Pillow: greyscale as is; colour as YCbCr 4:2:2 (YBR_FULL_422, PS3.5 8.2.1)."""
    array = np.ascontiguousarray(pixels.astype(np.uint8, copy=False))
    buffer = io.BytesIO()
    if array.ndim == 2:
        Image.fromarray(array, mode="L").save(buffer, "JPEG", quality=_JPEG_QUALITY)
    else:
        # Pillow converts RGB to YCbCr itself; YBR_FULL pixels already are YCbCr
        mode = "RGB" if photometric == "RGB" else "YCbCr"
        Image.fromarray(array, mode=mode).save(buffer, "JPEG", quality=_JPEG_QUALITY, subsampling=1)
        attributes["PhotometricInterpretation"] = "YBR_FULL_422"
    return EncodedFrame(buffer.getvalue(), attributes)
