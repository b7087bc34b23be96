"""pixels/render.py: the rendering pipeline as pure functions (no server): parameter parsing, the VOI
functions of PS3.3 C.11.2.1.2, the modality and VOI LUTs, MONOCHROME1 and presentation LUT inversion,
per-frame functional groups, the viewport's region and flips, and the encoders."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import Dataset
from pydicom.sequence import Sequence

from dicomd.pixels import render as R
from dicomd.pixels.frames import DecodedFrame, ImageDescription

from support.dicom_files import TEST_FILES


def frame(pixels: np.ndarray, photometric: str = "MONOCHROME2", **attrs: object) -> DecodedFrame:
    header = Dataset()
    header.Rows, header.Columns = pixels.shape[:2]
    header.BitsAllocated = 16 if pixels.dtype.itemsize > 1 else 8
    header.BitsStored = header.BitsAllocated
    header.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    header.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    header.PhotometricInterpretation = photometric
    for keyword, value in attrs.items():
        setattr(header, keyword, value)
    description = ImageDescription.of(header, "1.2.840.10008.1.2.1")
    return DecodedFrame(pixels, photometric, header, description)


RAMP = np.arange(256, dtype=np.uint16).reshape(16, 16) * 4  # 0..1020


def test_the_frames_range_is_the_window_without_one_in_the_file() -> None:
    got = R.display_pixels(frame(RAMP))
    assert got.dtype == np.uint8 and got.min() == 0 and got.max() == 255
    assert (np.diff(got.ravel().astype(int)) >= 0).all()
    flat = R.display_pixels(frame(np.full((4, 4), 7, np.uint16)))
    assert (flat == 0).all()


def test_linear_window_of_ps3_3() -> None:
    got = R.display_pixels(frame(RAMP), window=R.Window(512, 256, "linear")).astype(float)
    x = RAMP.astype(float)
    expected = np.clip(((x - 511.5) / 255 + 0.5) * 255, 0, 255)
    assert np.abs(got - np.rint(expected)).max() <= 1
    assert got[x <= 511.5 - 127.5].max() == 0 and got[x > 511.5 + 127.5].min() == 255


def test_linear_exact_and_sigmoid_windows() -> None:
    x = RAMP.astype(float)
    exact = R.display_pixels(frame(RAMP), window=R.Window(512, 256, "linear-exact")).astype(float)
    assert np.abs(exact - np.rint(np.clip(((x - 512) / 256 + 0.5) * 255, 0, 255))).max() <= 1
    sigmoid = R.display_pixels(frame(RAMP), window=R.Window(512, 256, "sigmoid")).astype(float)
    assert np.abs(sigmoid - 255 / (1 + np.exp(-4 * (x - 512) / 256))).max() <= 1


def test_the_files_window_and_its_function() -> None:
    x = RAMP.astype(float)
    got = R.display_pixels(frame(RAMP, WindowCenter=[300, 10], WindowWidth=[200, 5])).astype(float)
    assert np.abs(got - np.rint(np.clip(((x - 299.5) / 199 + 0.5) * 255, 0, 255))).max() <= 1
    sig = R.display_pixels(frame(RAMP, WindowCenter=300, WindowWidth=200, VOILUTFunction="SIGMOID")).astype(
        float
    )
    assert np.abs(sig - 255 / (1 + np.exp(-4 * (x - 300) / 200))).max() <= 1
    # the request's window wins over the file's
    req = R.display_pixels(frame(RAMP, WindowCenter=300, WindowWidth=200), window=R.Window(900, 2))
    assert (req[RAMP > 900] == 255).all() and (req[RAMP < 899] == 0).all()


def test_rescale_applies_before_the_window() -> None:
    # stored 0..1020, slope 2, intercept -1000: values -1000..1040; a window around 0 shows stored 500
    got = R.display_pixels(frame(RAMP, RescaleSlope=2, RescaleIntercept=-1000), window=R.Window(0, 2))
    assert (got[RAMP > 500] == 255).all() and (got[RAMP < 500] == 0).all()


def test_modality_and_voi_lut_sequences() -> None:
    stored = np.array([[0, 1, 2, 3]], np.uint16)
    modality = Dataset()
    modality.LUTDescriptor = [4, 0, 16]
    modality.LUTData = [0, 100, 200, 300]
    modality.ModalityLUTType = "US"
    voi = Dataset()
    voi.LUTDescriptor = [301, 0, 8]
    voi.LUTData = [min(255, v) for v in range(301)]  # identity up to 255
    f = frame(stored, ModalityLUTSequence=Sequence([modality]), VOILUTSequence=Sequence([voi]))
    got = R.display_pixels(f)
    assert got.tolist() == [[0, 100, 200, 255]]


def test_monochrome1_and_inverse_presentation_shape_invert() -> None:
    normal = R.display_pixels(frame(RAMP)).astype(int)
    assert (R.display_pixels(frame(RAMP, "MONOCHROME1")).astype(int) == 255 - normal).all()
    inverse = R.display_pixels(frame(RAMP, PresentationLUTShape="INVERSE")).astype(int)
    assert (inverse == 255 - normal).all()


def test_enhanced_multi_frame_takes_each_frames_functional_groups() -> None:
    def group(center: float) -> Dataset:
        item, voi = Dataset(), Dataset()
        voi.WindowCenter, voi.WindowWidth = center, 2
        item.FrameVOILUTSequence = Sequence([voi])
        return item

    shared, transform = Dataset(), Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 1, -100, "US"
    shared.PixelValueTransformationSequence = Sequence([transform])
    f = frame(
        RAMP,
        SharedFunctionalGroupsSequence=Sequence([shared]),
        PerFrameFunctionalGroupsSequence=Sequence([group(100), group(500)]),
    )
    first, second = R.display_pixels(f, 1), R.display_pixels(f, 2)
    assert (first[RAMP > 200] == 255).all() and (first[RAMP < 200] == 0).all()
    assert (second[RAMP > 600] == 255).all() and (second[RAMP < 600] == 0).all()


def test_palette_and_ybr() -> None:
    ds = pydicom.dcmread(TEST_FILES / "examples_palette.dcm")
    f = DecodedFrame(ds.pixel_array, "PALETTE COLOR", ds, ImageDescription.of(ds, "1.2.840.10008.1.2.1"))
    got = R.display_pixels(f)
    assert got.shape == (ds.Rows, ds.Columns, 3) and got.dtype == np.uint8
    rgb = np.array([[[200, 50, 20]]], np.uint8)
    ybr = pydicom.pixels.convert_color_space(rgb, "RGB", "YBR_FULL")
    back = R.display_pixels(frame(ybr, "YBR_FULL"))
    assert np.abs(back.astype(int) - rgb.astype(int)).max() <= 2
    sixteen = R.display_pixels(frame((rgb.astype(np.uint16) << 8), "RGB"))
    assert (sixteen == rgb).all()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("40,400", R.Window(40, 400, "linear")),
        ("40.5,400,LINEAR-EXACT", R.Window(40.5, 400, "linear-exact")),
        ("-600,1500,sigmoid", R.Window(-600, 1500, "sigmoid")),
    ],
)
def test_window_parsing(text: str, expected: R.Window) -> None:
    assert R.parse_window(text) == expected


@pytest.mark.parametrize(
    "text", ["40", "a,b", "40,0", "40,0.5,linear", "40,-1,sigmoid", "40,100,cubic", "nan,100", "1,2,3,4"]
)
def test_bad_windows(text: str) -> None:
    with pytest.raises(R.RenderParameterError):
        R.parse_window(text)


def test_viewport_parsing() -> None:
    assert R.parse_viewport("512,256") == R.Viewport(512, 256)
    assert R.parse_viewport("10,20,1,2,-3,4") == R.Viewport(10, 20, (1, 2, -3, 4))
    assert R.parse_viewport("10,20,,,,") == R.Viewport(10, 20, (0, 0, None, None))
    assert R.parse_viewport("10,20,5,6") == R.Viewport(10, 20, (5, 6, None, None))
    for bad in ("10", "0,10", "10,99999", "a,b", "10,10,-1,0", "10,10,0,0,0,5", "1,2,3"):
        with pytest.raises(R.RenderParameterError):
            R.parse_viewport(bad)


def test_viewport_region_flip_and_scale() -> None:
    image = np.arange(12 * 20, dtype=np.uint8).reshape(12, 20)
    same = np.asarray(R.apply_viewport(image, None))
    assert (same == image).all()
    crop = np.asarray(R.apply_viewport(image, R.Viewport(5, 4, (2, 3, 5, 4))))
    assert (crop == image[3:7, 2:7]).all()
    left = np.asarray(R.apply_viewport(image, R.Viewport(5, 4, (7, 3, -5, 4))))
    assert (left == image[3:7, 2:7][:, ::-1]).all()
    up = np.asarray(R.apply_viewport(image, R.Viewport(5, 4, (2, 7, 5, -4))))
    assert (up == image[3:7, 2:7][::-1]).all()
    to_edge = np.asarray(R.apply_viewport(image, R.Viewport(18, 9, (2, 3, None, None))))
    assert (to_edge == image[3:, 2:]).all()
    assert R.apply_viewport(image, R.Viewport(10, 100)).size == (10, 6)  # aspect kept
    assert R.apply_viewport(image, R.Viewport(None, 24)).size == (40, 24)
    assert R.apply_viewport(image, R.Viewport(fractions=(0.5, 0.5, 1, 1))).size == (10, 6)
    with pytest.raises(R.RenderParameterError):
        R.apply_viewport(image, R.Viewport(5, 5, (20, 0, 5, 5)))


def test_encoders() -> None:
    image = R.apply_viewport(np.zeros((8, 8), np.uint8), None)
    assert Image.open(io.BytesIO(R.encode([image], R.JPEG, 50))).format == "JPEG"
    assert Image.open(io.BytesIO(R.encode([image], R.PNG))).format == "PNG"
    animated = Image.open(io.BytesIO(R.encode([image, image.point(lambda v: 255)], R.GIF)))
    assert animated.format == "GIF" and getattr(animated, "n_frames", 1) == 2
    with pytest.raises(R.RenderParameterError):
        R.encode([image], "image/tiff")


def test_quality_and_region_parsing() -> None:
    assert R.parse_quality("1") == 1 and R.parse_quality("100") == 100
    for bad in ("0", "101", "x", ""):
        with pytest.raises(R.RenderParameterError):
            R.parse_quality(bad)
    assert R.parse_region("0,0.25,1,0.75") == (0, 0.25, 1, 0.75)
    for bad in ("0,0,1", "0.5,0,0.5,1", "-0.1,0,1,1", "0,0,1,1.5"):
        with pytest.raises(R.RenderParameterError):
            R.parse_region(bad)


@pytest.mark.parametrize(
    "window",
    [
        R.Window(1e308, 1e308, "sigmoid"),
        R.Window(-1e308, 1e-300, "linear-exact"),
        R.Window(1e308, 1, "linear"),
        R.Window(-1e308, 1e308, "linear"),
    ],
)
def test_extreme_windows_saturate_without_warnings(window: R.Window) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = R.display_pixels(frame(RAMP), window=window)
    assert got.dtype == np.uint8 and got.shape == RAMP.shape


def _lut_item(entries: int, first: int, bits: int, data: list[int], **more: object) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [entries, first, bits]
    item.LUTData = data
    for keyword, value in more.items():
        setattr(item, keyword, value)
    return item


@pytest.mark.parametrize(
    "attrs",
    [
        {},  # the range of the values present
        {"RescaleSlope": 1, "RescaleIntercept": -1024},
        {"RescaleSlope": 1, "RescaleIntercept": -1024, "WindowCenter": 40, "WindowWidth": 400},
        {"WindowCenter": 900, "WindowWidth": 1, "VOILUTFunction": "LINEAR"},
        {"WindowCenter": 1500, "WindowWidth": 800, "VOILUTFunction": "SIGMOID"},
        {"PresentationLUTShape": "INVERSE"},
        {
            "ModalityLUTSequence": Sequence(
                [_lut_item(4096, 0, 16, [(v * 7) % 4096 for v in range(4096)], ModalityLUTType="US")]
            )
        },
        {"VOILUTSequence": Sequence([_lut_item(4096, 0, 12, [4095 - v for v in range(4096)])])},
    ],
)
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_a_large_frame_is_a_table_look_up_with_the_same_result(
    attrs: dict[str, object], photometric: str
) -> None:
    """Frames of more than 65,536 integer pixels are rendered through a table of the values between their
    lowest and highest: exactly what the pipeline gives pixel by pixel, in every VOI case."""
    rng = np.random.default_rng(7)
    pixels = rng.integers(200, 3000, size=(300, 300), dtype=np.uint16)  # not every value in the range
    pixels[rng.random(pixels.shape) < 0.5] = 200  # and a peak
    f = frame(pixels, photometric, **attrs)
    header = R.frame_attributes(f.header, 1)
    inverse = (photometric == "MONOCHROME1") != (attrs.get("PresentationLUTShape") == "INVERSE")
    for window in (None, R.Window(1000.0, 700.0, "linear"), R.Window(-5.0, 3.0, "linear-exact")):
        assert pixels.size > R._TABLE_MIN_PIXELS
        by_table = R._grayscale(f, header, window)
        by_pixel = R._display_values(pixels, header, window, inverse, None)
        assert by_table.dtype == np.uint8 and np.array_equal(by_table, by_pixel), (attrs, window)
    signed = frame(pixels.astype(np.int16) - 1500, photometric, **attrs)
    signed_header = R.frame_attributes(signed.header, 1)
    by_table = R._grayscale(signed, signed_header, None)
    assert np.array_equal(by_table, R._display_values(signed.pixels, signed_header, None, inverse, None))
