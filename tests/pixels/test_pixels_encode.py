"""pixels/encode.py: each encoder round-trips one frame through pydicom's decoders (exactly for lossless
targets, within a stated tolerance for lossy ones), and what a target cannot hold is refused up front with
the target and the reason named."""

from __future__ import annotations

import re

import numpy as np
import pytest
from pydicom import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID

from dicomd.pixels.encode import EncodeError, check_encodable, encode_frame
from dicomd.pixels.frames import ImageDescription
from dicomd.pixels.syntaxes import (
    JPEG_2000,
    JPEG_2000_LOSSLESS,
    JPEG_BASELINE,
    JPEG_LS_LOSSLESS,
    JPEG_LS_NEAR_LOSSLESS,
    RLE_LOSSLESS,
    default_syntax,
    frame_media_type,
)

LOSSLESS = [RLE_LOSSLESS, JPEG_LS_LOSSLESS, JPEG_2000_LOSSLESS]


def describe(
    rows: int,
    columns: int,
    *,
    bits: int = 16,
    stored: int | None = None,
    signed: bool = False,
    samples: int = 1,
    photometric: str | None = None,
) -> ImageDescription:
    header = Dataset()
    header.Rows, header.Columns = rows, columns
    header.BitsAllocated, header.BitsStored = bits, stored or bits
    header.PixelRepresentation = int(signed)
    header.SamplesPerPixel = samples
    header.PhotometricInterpretation = photometric or ("RGB" if samples == 3 else "MONOCHROME2")
    return ImageDescription.of(header, "1.2.840.10008.1.2.1")


def decode(data: bytes, d: ImageDescription, ts: str, photometric: str) -> np.ndarray:
    pixels, _meta = get_decoder(UID(ts)).as_array(
        encapsulate([data]), as_rgb=False, **(d.decoder_options | {"photometric_interpretation": photometric})
    )
    return pixels


def pixels_for(d: ImageDescription, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (d.rows, d.columns, 3) if d.samples_per_pixel == 3 else (d.rows, d.columns)
    low, high = (
        (-(1 << (d.bits_stored - 1)), 1 << (d.bits_stored - 1))
        if d.pixel_representation
        else (0, 1 << d.bits_stored)
    )
    dtype = f"{'i' if d.pixel_representation else 'u'}{d.bits_allocated // 8}"
    # a smooth ramp plus noise: compressible, yet every value range exercised
    ramp = np.linspace(low, high - 1, d.rows * d.columns).reshape(d.rows, d.columns)
    if d.samples_per_pixel == 3:
        ramp = np.stack([ramp, ramp[::-1], ramp.T if d.rows == d.columns else ramp], axis=-1)
    noisy = ramp + rng.integers(-3, 4, shape)
    return np.clip(noisy, low, high - 1).astype(dtype)


@pytest.mark.parametrize("target", LOSSLESS)
@pytest.mark.parametrize(
    "d",
    [
        describe(64, 48, bits=8),
        describe(64, 64, bits=16, stored=12),
        describe(40, 40, bits=16, stored=16, signed=True),
        describe(33, 35, bits=8, samples=3),
        describe(64, 64, bits=16, samples=3),
    ],
    ids=["8-bit", "12-bit", "16-bit signed", "rgb 8-bit", "rgb 16-bit"],
)
def test_lossless_encoders_round_trip_exactly(target: str, d: ImageDescription) -> None:
    pixels = pixels_for(d)
    encoded = encode_frame(pixels, d.photometric_interpretation, d, target)
    assert encoded.attributes["PhotometricInterpretation"] == d.photometric_interpretation
    if d.samples_per_pixel == 3:
        assert encoded.attributes["PlanarConfiguration"] == 0
    np.testing.assert_array_equal(decode(encoded.data, d, target, d.photometric_interpretation), pixels)


def test_ybr_full_pixels_keep_their_values() -> None:
    d = describe(32, 32, bits=8, samples=3, photometric="YBR_FULL")
    pixels = pixels_for(d)
    for target in LOSSLESS:
        encoded = encode_frame(pixels, "YBR_FULL_422", d, target)  # decoded 4:2:2 is full resolution
        assert encoded.attributes["PhotometricInterpretation"] == "YBR_FULL"
        np.testing.assert_array_equal(decode(encoded.data, d, target, "YBR_FULL"), pixels)


@pytest.mark.parametrize(
    ("d", "target", "tolerance"),
    [
        (describe(64, 64, bits=8), JPEG_BASELINE, 3.0),  # mean absolute error
        (describe(64, 64, bits=8, samples=3), JPEG_BASELINE, 4.0),
        (describe(64, 64, bits=16, stored=12), JPEG_2000, 8.0),
        (describe(64, 64, bits=16, stored=12), JPEG_LS_NEAR_LOSSLESS, 2.0),
    ],
)
def test_lossy_encoders_stay_within_tolerance(d: ImageDescription, target: str, tolerance: float) -> None:
    pixels = pixels_for(d)
    encoded = encode_frame(pixels, d.photometric_interpretation, d, target)
    photometric = encoded.attributes["PhotometricInterpretation"]
    if target == JPEG_BASELINE and d.samples_per_pixel == 3:
        assert photometric == "YBR_FULL_422"  # PS3.5 8.2.1: colour JPEG baseline is YCbCr 4:2:2
        got, _meta = get_decoder(UID(target)).as_array(
            encapsulate([encoded.data]), **(d.decoder_options | {"photometric_interpretation": photometric})
        )
    else:
        got = decode(encoded.data, d, target, photometric)
    error = np.abs(got.astype(np.int64) - pixels.astype(np.int64))
    assert error.mean() <= tolerance
    if target == JPEG_LS_NEAR_LOSSLESS:
        assert error.max() <= 2  # the near-lossless bound dicomd asks for


@pytest.mark.parametrize(
    ("d", "photometric", "target", "reason"),
    [
        (describe(64, 64, bits=16, stored=12), "MONOCHROME2", JPEG_BASELINE, "Bits Allocated 16"),
        (describe(64, 64, bits=8, signed=True), "MONOCHROME2", JPEG_BASELINE, "signed"),
        (describe(64, 64, bits=32), "MONOCHROME2", RLE_LOSSLESS, "Bits Allocated 32"),
        (describe(64, 64, bits=32, stored=16), "MONOCHROME2", JPEG_2000_LOSSLESS, "Bits Allocated 32"),
        (describe(64, 64, bits=8), "PALETTE COLOR", JPEG_2000, "palette"),
        (describe(64, 64, bits=8), "PALETTE COLOR", JPEG_BASELINE, "palette"),
        (describe(16, 64, bits=8), "MONOCHROME2", JPEG_2000_LOSSLESS, "fewer than 32"),
        (describe(64, 64, bits=16, samples=3), "YBR_FULL", RLE_LOSSLESS, "YBR_FULL"),
        (describe(64, 64, bits=8, samples=3), "YBR_PARTIAL_420", JPEG_LS_LOSSLESS, "YBR_PARTIAL_420"),
        (describe(64, 64, bits=1), "MONOCHROME2", RLE_LOSSLESS, "Bits Allocated 1"),
        (describe(64, 64), "MONOCHROME2", "1.2.840.10008.1.2.4.70", "cannot encode"),
    ],
)
def test_what_a_target_cannot_hold_is_refused_naming_it(
    d: ImageDescription, photometric: str, target: str, reason: str
) -> None:
    with pytest.raises(EncodeError, match=re.escape(target)) as refused:
        check_encodable(d, photometric, target)
    assert reason in str(refused.value)
    if "cannot encode" not in reason:
        with pytest.raises(EncodeError):
            encode_frame(np.zeros((d.rows, d.columns), np.uint8), photometric, d, target)


def test_values_beyond_bits_stored_are_an_encode_error_not_a_wrong_image() -> None:
    d = describe(64, 64, bits=16, stored=12)
    pixels = np.full((64, 64), 4095 + 100, np.uint16)  # more than 12 bits
    with pytest.raises(EncodeError, match=re.escape(JPEG_LS_LOSSLESS)):
        encode_frame(pixels, "MONOCHROME2", d, JPEG_LS_LOSSLESS)


def test_frame_media_types_and_their_defaults() -> None:
    # PS3.18 Table 8.7.3-5
    assert default_syntax("image/jpeg") == JPEG_BASELINE
    assert default_syntax("image/jls") == JPEG_LS_LOSSLESS
    assert default_syntax("image/jp2") == JPEG_2000_LOSSLESS
    assert default_syntax("image/jpx") == "1.2.840.10008.1.2.4.92"
    assert default_syntax("image/jphc") == "1.2.840.10008.1.2.4.201"
    assert default_syntax("image/dicom-rle") == RLE_LOSSLESS
    assert default_syntax("application/octet-stream") == "1.2.840.10008.1.2.1"
    assert default_syntax("image/png") is None
    assert frame_media_type("1.2.840.10008.1.2.4.70") == "image/jpeg"
    assert frame_media_type("1.2.840.10008.1.2.4.203") == "image/jphc"
    assert frame_media_type("1.2.840.10008.1.2") == "application/octet-stream"
