"""Transcoding on WADO-RS instance, series and study retrieve (PS3.18 8.7.3): every transfer syntax of
pydicom's bundled real-world files retrieved as Explicit VR Little Endian has pydicom's own pixel values;
each encoder round-trips; what cannot be produced is a 406 naming what was asked, never a wrong image."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from support.dicom_files import TEST_FILES, make_instance, new_uid, with_fresh_uids
from support.dicomweb import instance_url, parse_multipart, stow, unique_id

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR = "1.2.840.10008.1.2.4.81"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K_LOSSY = "1.2.840.10008.1.2.4.91"
RLE = "1.2.840.10008.1.2.5"
LOSSLESS_TARGETS = [EXPLICIT_LE, RLE, JPEG_LS_LOSSLESS, J2K_LOSSLESS]

# one or more bundled files per transfer syntax they hold (HTJ2K: none bundled with pydicom 3.0)
BUNDLED = [
    "MR_small_implicit.dcm",  # implicit VR little endian
    "rtdose.dcm",  # implicit, 32-bit, 15 frames
    "CT_small.dcm",  # explicit VR little endian
    "SC_rgb_small_odd.dcm",
    "SC_ybr_full_422_uncompressed.dcm",
    "examples_palette.dcm",
    "liver_1frame.dcm",  # 1-bit
    "image_dfl.dcm",  # deflated
    "MR_small_bigendian.dcm",  # explicit VR big endian
    "ExplVR_BigEnd.dcm",  # big endian 8-bit RGB
    "rtdose_expb.dcm",  # big endian 32-bit, 15 frames
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline YBR_FULL
    "SC_rgb_dcmtk_+eb+cy+np.dcm",  # JPEG baseline YBR_FULL_422
    "examples_ybr_color.dcm",  # JPEG baseline, 30 frames
    "JPGExtended.dcm",  # JPEG extended 12-bit
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless SV1
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
    "JPEGLSNearLossless_16.dcm",  # JPEG-LS near-lossless
    "SC_rgb_jls_lossy_line.dcm",
    "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
    "GDCMJ2K_TextGBR.dcm",  # JPEG 2000 lossless YBR_RCT
    "JPEG2000.dcm",  # JPEG 2000 (lossy)
    "SC_rgb_gdcm_KY.dcm",
    "MR_small_RLE.dcm",  # RLE lossless
    "SC_rgb_rle_16bit_2frame.dcm",
    "SC_rgb_rle_32bit_2frame.dcm",
]


def stored(client: httpx.Client, name: str) -> tuple[bytes, pydicom.Dataset]:
    data, ds = with_fresh_uids(name, unique_id("TC"))
    r = stow(client, [data])
    assert r.status_code in (200, 202), r.text
    return data, ds


def get_as(client: httpx.Client, url: str, ts: str) -> httpx.Response:
    return client.get(url, headers={"Accept": f"application/dicom; transfer-syntax={ts}"})


def parsed(response: httpx.Response) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(response.content))


def rgb_pixels(ds: pydicom.Dataset) -> np.ndarray:
    """pydicom's pixels, YBR converted to RGB (as it displays them)."""
    return np.asarray(ds.pixel_array)


@pytest.mark.parametrize("name", BUNDLED)
def test_every_bundled_syntax_retrieved_as_explicit_le_has_pydicoms_pixels(
    client: httpx.Client, name: str
) -> None:
    _data, original = stored(client, name)
    r = get_as(client, instance_url(original), EXPLICIT_LE)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
    got = parsed(r)
    assert got.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert got.SOPInstanceUID == original.SOPInstanceUID
    assert got.file_meta.MediaStorageSOPInstanceUID == original.SOPInstanceUID
    assert got.PatientID == original.PatientID and got.Rows == original.Rows
    # the same decoders run on both sides, so even lossy sources compare exactly
    np.testing.assert_array_equal(rgb_pixels(got), rgb_pixels(original))
    if original.file_meta.TransferSyntaxUID in (
        JPEG_BASELINE,
        J2K_LOSSY,
        JPEG_LS_NEAR,
        "1.2.840.10008.1.2.4.51",
    ):
        assert got.LossyImageCompression == "01"


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",
        "MR_small_RLE.dcm",
        "examples_rgb_color.dcm",
        "SC_ybr_full_422_uncompressed.dcm",
        "examples_palette.dcm",
        "MR_small_jp2klossless.dcm",
        "SC_rgb_rle_16bit_2frame.dcm",
    ],
)
@pytest.mark.parametrize("target", LOSSLESS_TARGETS)
def test_lossless_targets_round_trip_exactly(client: httpx.Client, name: str, target: str) -> None:
    data, original = stored(client, name)
    r = get_as(client, instance_url(original), target)
    assert r.status_code == 200, r.text
    got = parsed(r)
    assert got.file_meta.TransferSyntaxUID == target
    np.testing.assert_array_equal(rgb_pixels(got), rgb_pixels(original))
    assert "LossyImageCompression" not in got or got.LossyImageCompression == original.get(
        "LossyImageCompression"
    )
    if target == original.file_meta.TransferSyntaxUID:
        assert r.content[128:] == data[128:]  # sent as stored
    elif target != EXPLICIT_LE:
        # encapsulated: an empty basic offset table, one fragment per frame
        frames = int(original.get("NumberOfFrames") or 1)
        fragments = list(pydicom.encaps.generate_fragments(got.PixelData))
        assert fragments[0] == b"" and len(fragments) == frames + 1


def listed(value: object) -> list[str]:
    return [str(value)] if isinstance(value, str | float | int) else [str(v) for v in value]  # type: ignore[attr-defined]


# tolerance: the mean absolute difference of pixel values from pydicom's decoding of the original
@pytest.mark.parametrize(
    ("name", "target", "tolerance"),
    [
        ("SC_rgb_small_odd.dcm", JPEG_BASELINE, 20),  # 3x3 colour: chroma subsampling dominates
        ("examples_rgb_color.dcm", JPEG_BASELINE, 3),
        ("examples_palette.dcm", J2K_LOSSLESS, 0),
        ("CT_small.dcm", J2K_LOSSY, 20),  # 16-bit CT values at ratio 10
        ("CT_small.dcm", JPEG_LS_NEAR, 2),  # the near-lossless error bound (also the largest difference)
        ("SC_rgb_jpeg_gdcm.dcm", JPEG_BASELINE, 3),  # JPEG lossless RGB
        ("JPEGLSNearLossless_08.dcm", JPEG_BASELINE, 3),  # lossy to lossy: both methods listed
    ],
)
def test_lossy_targets_within_tolerance_and_marked(
    client: httpx.Client, name: str, target: str, tolerance: int
) -> None:
    _data, original = stored(client, name)
    r = get_as(client, instance_url(original), target)
    assert r.status_code == 200, r.text
    got = parsed(r)
    assert got.file_meta.TransferSyntaxUID == target
    diff = np.abs(rgb_pixels(got).astype(np.int64) - rgb_pixels(original).astype(np.int64))
    assert diff.mean() <= tolerance, diff.mean()
    if target in (JPEG_BASELINE, J2K_LOSSY, JPEG_LS_NEAR):
        assert got.LossyImageCompression == "01"
        method = {JPEG_BASELINE: "ISO_10918_1", J2K_LOSSY: "ISO_15444_1", JPEG_LS_NEAR: "ISO_14495_1"}[target]
        assert listed(got.LossyImageCompressionMethod)[-1] == method
        fragment = next(pydicom.encaps.generate_frames(got.PixelData, number_of_frames=1))
        uncompressed = got.Rows * got.Columns * got.SamplesPerPixel * got.BitsAllocated // 8
        assert float(listed(got.LossyImageCompressionRatio)[-1]) == pytest.approx(
            uncompressed / len(fragment), abs=0.01
        )
        if original.get("LossyImageCompressionMethod"):
            assert listed(got.LossyImageCompressionMethod)[:-1] == listed(
                original.LossyImageCompressionMethod
            )
    if target == JPEG_BASELINE and got.SamplesPerPixel == 3:
        assert got.PhotometricInterpretation == "YBR_FULL_422"


def test_same_syntax_is_byte_exact_and_wildcards_get_the_stored_file(client: httpx.Client) -> None:
    data, original = stored(client, "MR_small_RLE.dcm")
    url = instance_url(original)
    for accept in (
        f"application/dicom; transfer-syntax={RLE}",
        "application/dicom; transfer-syntax=*",
        "*/*",
        "multipart/related",
        None,
    ):
        r = client.get(url, headers={"Accept": accept} if accept else {})
        assert r.status_code == 200, accept
        body = parse_multipart(r)[0][1] if r.headers["content-type"].startswith("multipart") else r.content
        assert body[128:] == data[128:], accept
        assert r.headers.get("content-length"), accept  # stored bytes keep their known length


def test_named_media_type_without_syntax_means_explicit_le(client: httpx.Client) -> None:
    _data, original = stored(client, "MR_small_jp2klossless.dcm")
    for accept in ("application/dicom", 'multipart/related; type="application/dicom"'):
        r = client.get(instance_url(original), headers={"Accept": accept})
        assert r.status_code == 200
        body = parse_multipart(r)[0][1] if r.headers["content-type"].startswith("multipart") else r.content
        got = pydicom.dcmread(io.BytesIO(body))
        assert got.file_meta.TransferSyntaxUID == EXPLICIT_LE
        np.testing.assert_array_equal(got.pixel_array, original.pixel_array)


def test_q_values_and_ties_prefer_the_stored_syntax(client: httpx.Client) -> None:
    _data, original = stored(client, "MR_small_RLE.dcm")
    url = instance_url(original)
    dicom = 'multipart/related; type="application/dicom"'

    def syntax_of(accept: str) -> str:
        r = client.get(url, headers={"Accept": accept})
        assert r.status_code == 200, r.text
        [(headers, body)] = parse_multipart(r)
        ts = str(pydicom.dcmread(io.BytesIO(body)).file_meta.TransferSyntaxUID)
        assert headers["content-type"] == f"application/dicom; transfer-syntax={ts}"
        return ts

    # equal q: the stored syntax wins whatever the order
    assert syntax_of(f"{dicom}; transfer-syntax={J2K_LOSSLESS}, {dicom}; transfer-syntax={RLE}") == RLE
    # a higher q wins over the stored syntax
    assert syntax_of(f"{dicom}; transfer-syntax={RLE}; q=0.5, {dicom}; transfer-syntax={J2K_LOSSLESS}") == (
        J2K_LOSSLESS
    )
    # what cannot be produced falls to the next acceptable syntax: 16-bit is not JPEG baseline
    assert syntax_of(
        f"{dicom}; transfer-syntax={JPEG_BASELINE}, {dicom}; transfer-syntax={EXPLICIT_LE}; q=0.2"
    ) == (EXPLICIT_LE)


def test_what_cannot_be_produced_is_406_naming_it(client: httpx.Client) -> None:
    _data, original = stored(client, "CT_small.dcm")  # 16-bit signed
    url = instance_url(original)
    r = get_as(client, url, JPEG_BASELINE)
    assert r.status_code == 406
    assert JPEG_BASELINE in r.json()["message"]
    r = client.get(
        url,
        headers={"Accept": f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}'},
    )
    assert r.status_code == 406 and JPEG_BASELINE in r.json()["message"]
    # a syntax dicomd cannot encode at all (JPEG lossless, HTJ2K)
    for ts in ("1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.201", "1.2.3.4"):
        r = get_as(client, url, ts)
        assert r.status_code == 406, ts
    # an 8x8 image is too small for the JPEG 2000 encoder (6 wavelet resolutions)
    sop, study, series = new_uid(), new_uid(), new_uid()
    assert stow(client, [make_instance(study=study, series=series, sop=sop)]).status_code == 200
    r = get_as(client, f"/studies/{study}/series/{series}/instances/{sop}", J2K_LOSSLESS)
    assert r.status_code == 406 and "32" in r.json()["message"]


def test_series_and_study_transcode_each_instance(client: httpx.Client) -> None:
    study, series = new_uid(), new_uid()
    files = {}
    for name in ("MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_implicit.dcm"):
        ds = pydicom.dcmread(TEST_FILES / name)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        out = io.BytesIO()
        ds.save_as(out)
        files[str(ds.SOPInstanceUID)] = pydicom.dcmread(io.BytesIO(out.getvalue()))
        assert stow(client, [out.getvalue()]).status_code == 200
    for url in (f"/studies/{study}", f"/studies/{study}/series/{series}"):
        r = client.get(
            url, headers={"Accept": f'multipart/related; type="application/dicom"; transfer-syntax={RLE}'}
        )
        assert r.status_code == 200, r.text
        assert "content-length" not in r.headers  # produced on the fly: chunked
        parts = parse_multipart(r)
        assert len(parts) == 3
        for headers, body in parts:
            assert headers["content-type"] == f"application/dicom; transfer-syntax={RLE}"
            got = pydicom.dcmread(io.BytesIO(body))
            assert got.file_meta.TransferSyntaxUID == RLE
            np.testing.assert_array_equal(got.pixel_array, files[str(got.SOPInstanceUID)].pixel_array)


def test_one_instance_that_cannot_be_produced_refuses_the_series_up_front(client: httpx.Client) -> None:
    study, series = new_uid(), new_uid()
    for name in ("SC_rgb_rle.dcm", "CT_small.dcm"):  # 8-bit RGB can be JPEG baseline, 16-bit CT cannot
        ds = pydicom.dcmread(TEST_FILES / name)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        out = io.BytesIO()
        ds.save_as(out)
        assert stow(client, [out.getvalue()]).status_code == 200
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}'
    r = client.get(f"/studies/{study}/series/{series}", headers={"Accept": accept})
    assert r.status_code == 406
    assert JPEG_BASELINE in r.json()["message"] and "Bits" in r.json()["message"]
    # with a fallback each instance gets the best syntax it can be produced in
    r = client.get(
        f"/studies/{study}/series/{series}",
        headers={
            "Accept": f'{accept}, multipart/related; type="application/dicom"; transfer-syntax=*; q=0.5'
        },
    )
    assert r.status_code == 200
    syntaxes = sorted(headers["content-type"].split("=", 1)[1] for headers, _ in parse_multipart(r))
    assert syntaxes == sorted([JPEG_BASELINE, EXPLICIT_LE])


def test_instance_without_pixel_data_is_re_encoded(client: httpx.Client) -> None:
    data, original = stored(client, "test-SR.dcm")
    for ts in (IMPLICIT_LE, EXPLICIT_LE, J2K_LOSSLESS):
        r = get_as(client, instance_url(original), ts)
        if str(original.file_meta.TransferSyntaxUID) == ts:
            assert r.content[128:] == data[128:]
            continue
        assert r.status_code == 200, r.text
        got = parsed(r)
        assert got.file_meta.TransferSyntaxUID == ts
        assert got.ContentSequence == original.ContentSequence
        assert got.SOPInstanceUID == original.SOPInstanceUID
