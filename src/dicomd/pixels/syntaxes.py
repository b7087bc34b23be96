"""The transfer syntaxes dicomd can decode and produce, and the media types of their frames (PS3.18
8.7.3: Table 8.7.3-2 for instances and bulk data, Table 8.7.3-5 for single-frame media types)."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID

from dicomd.dicom.uids import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
)

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR_LOSSLESS = "1.2.840.10008.1.2.4.81"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_2000 = "1.2.840.10008.1.2.4.91"
JPEG_2000_PART2_LOSSLESS = "1.2.840.10008.1.2.4.92"
JPEG_2000_PART2 = "1.2.840.10008.1.2.4.93"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_LOSSLESS_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K = "1.2.840.10008.1.2.4.203"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"

# syntaxes whose pixel data are native (not encapsulated); deflate only compresses the whole data set
NATIVE_PIXEL_SYNTAXES = frozenset(
    {
        EXPLICIT_VR_LITTLE_ENDIAN,
        IMPLICIT_VR_LITTLE_ENDIAN,
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_BIG_ENDIAN,
    }
)

OCTET_STREAM = "application/octet-stream"

# PS3.18 Table 8.7.3-5: the transfer syntaxes of each single-frame media type, default first
MEDIA_TYPE_SYNTAXES: dict[str, tuple[str, ...]] = {
    OCTET_STREAM: (EXPLICIT_VR_LITTLE_ENDIAN,),
    "image/jpeg": (JPEG_BASELINE, JPEG_EXTENDED, JPEG_LOSSLESS, JPEG_LOSSLESS_SV1),
    "image/jls": (JPEG_LS_LOSSLESS, JPEG_LS_NEAR_LOSSLESS),
    "image/jp2": (JPEG_2000_LOSSLESS, JPEG_2000),
    "image/jpx": (JPEG_2000_PART2_LOSSLESS, JPEG_2000_PART2),
    "image/jphc": (HTJ2K_LOSSLESS, HTJ2K_LOSSLESS_RPCL, HTJ2K),
    "image/dicom-rle": (RLE_LOSSLESS,),
}

# the media type of a frame (or encapsulated pixel data) in each compressed syntax
FRAME_MEDIA_TYPES: dict[str, str] = {
    syntax: media
    for media, syntaxes in MEDIA_TYPE_SYNTAXES.items()
    if media != OCTET_STREAM
    for syntax in syntaxes
}


def default_syntax(media_type: str) -> str | None:
    """The transfer syntax a frame media type means when the client names none."""
    syntaxes = MEDIA_TYPE_SYNTAXES.get(media_type)
    return syntaxes[0] if syntaxes else None


def frame_media_type(syntax: str) -> str:
    """The media type of one frame in ``syntax`` (native syntaxes: application/octet-stream)."""
    return FRAME_MEDIA_TYPES.get(syntax, OCTET_STREAM)


@dataclass(frozen=True)
class Target:
    """A transfer syntax dicomd can encode to.

    ``lossy``: producing it loses information (only sent when the client names it);
    ``max_bits``: the largest Bits Stored its encoder takes; ``bits_allocated``: the Bits Allocated it
    accepts (None: any); ``method``: Lossy Image Compression Method (0028,2114) of a lossy target."""

    uid: str
    name: str
    lossy: bool
    max_bits: int
    bits_allocated: tuple[int, ...] | None = None
    signed: bool = True
    method: str = ""


ENCODABLE: dict[str, Target] = {
    t.uid: t
    for t in (
        Target(EXPLICIT_VR_LITTLE_ENDIAN, "Explicit VR Little Endian", False, 64),
        Target(IMPLICIT_VR_LITTLE_ENDIAN, "Implicit VR Little Endian", False, 64),
        Target(RLE_LOSSLESS, "RLE Lossless", False, 16, (8, 16)),
        Target(JPEG_LS_LOSSLESS, "JPEG-LS Lossless", False, 16, (8, 16)),
        Target(JPEG_LS_NEAR_LOSSLESS, "JPEG-LS Near-Lossless", True, 16, (8, 16), method="ISO_14495_1"),
        Target(JPEG_2000_LOSSLESS, "JPEG 2000 Lossless", False, 16, (8, 16)),
        Target(JPEG_2000, "JPEG 2000", True, 16, (8, 16), method="ISO_15444_1"),
        Target(JPEG_BASELINE, "JPEG Baseline (8-bit)", True, 8, (8,), signed=False, method="ISO_10918_1"),
    )
}

# targets whose pixel data are native: no encoder, the decoded (or stored little endian) bytes
NATIVE_TARGETS = frozenset({EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN})


def is_decodable(syntax: str) -> bool:
    """Whether pixel data stored in ``syntax`` can be decoded here (the codec is installed)."""
    if syntax in NATIVE_PIXEL_SYNTAXES:
        return True
    try:
        return bool(get_decoder(UID(syntax)).is_available)
    except NotImplementedError:
        return False


def syntax_name(syntax: str) -> str:
    name = UID(syntax).name
    return f"{name} ({syntax})" if name and name != syntax else syntax
