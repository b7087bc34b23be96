"""Frames and pixel bulk data in any requested transfer syntax (PS3.18 8.7.3): each frame of a multi-frame
file compared with pydicom's own per-frame array; single-part responses for one frame; 406 naming what was
asked when it cannot be produced."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from support.dicom_files import TEST_FILES, make_instance, new_uid
from support.dicomweb import OCTET_ANY, parse_multipart, stow, unique_id
from support.server import start_server, stop_server

EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
RLE = "1.2.840.10008.1.2.5"
OCTET = 'multipart/related; type="application/octet-stream"'


def stored(client: httpx.Client, name: str) -> pydicom.Dataset:
    ds = pydicom.dcmread(TEST_FILES / name)
    sop = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.PatientID = unique_id("FT")
    out = io.BytesIO()
    ds.save_as(out)
    r = stow(client, [out.getvalue()])
    assert r.status_code in (200, 202), r.text
    return pydicom.dcmread(io.BytesIO(out.getvalue()))


def frames_url(ds: pydicom.Dataset, numbers: list[int]) -> str:
    return (
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
        f"/frames/{','.join(map(str, numbers))}"
    )


def reference_frames(ds: pydicom.Dataset) -> np.ndarray:
    """pydicom's arrays, one per frame."""
    array = ds.pixel_array
    return array if int(ds.get("NumberOfFrames") or 1) > 1 else array[np.newaxis]


def native_frame(body: bytes, ds: pydicom.Dataset) -> np.ndarray:
    bits = int(ds.BitsAllocated)
    if bits == 1:
        count = ds.Rows * ds.Columns
        return np.unpackbits(np.frombuffer(body, np.uint8), bitorder="little")[:count].reshape(
            ds.Rows, ds.Columns
        )
    dtype = np.dtype(f"<{'i' if ds.PixelRepresentation else 'u'}{bits // 8}")
    shape = (ds.Rows, ds.Columns, 3) if ds.SamplesPerPixel == 3 else (ds.Rows, ds.Columns)
    return np.frombuffer(body, dtype).reshape(shape)


def decoded(body: bytes, ds: pydicom.Dataset, ts: str, photometric: str | None = None) -> np.ndarray:
    """A compressed frame decoded by pydicom's decoder for ``ts``, converted to RGB as pixel_array does."""
    from pydicom.encaps import encapsulate
    from pydicom.pixels.decoders.base import get_decoder

    pixels, _meta = get_decoder(pydicom.uid.UID(ts)).as_array(
        encapsulate([body]),
        rows=ds.Rows,
        columns=ds.Columns,
        samples_per_pixel=ds.SamplesPerPixel,
        bits_allocated=ds.BitsAllocated,
        bits_stored=ds.BitsStored,
        pixel_representation=ds.PixelRepresentation,
        photometric_interpretation=photometric
        or ("RGB" if ds.SamplesPerPixel == 3 else ds.PhotometricInterpretation),
        number_of_frames=1,
        planar_configuration=0,
    )
    return pixels


@pytest.mark.parametrize(
    ("name", "numbers"),
    [
        ("examples_ybr_color.dcm", [1, 15, 30]),  # JPEG baseline YBR_FULL_422, 30 frames
        ("SC_rgb_rle_16bit_2frame.dcm", [2, 1]),
        ("SC_rgb_rle_32bit_2frame.dcm", [1, 2]),
        ("rtdose_rle.dcm", [3, 15]),
        ("rtdose_expb.dcm", [1, 7]),  # big endian
        ("JPEG2000.dcm", [1]),
        ("MR_small_jpeg_ls_lossless.dcm", [1]),
        ("JPGExtended.dcm", [1]),
        ("image_dfl.dcm", [1]),
    ],
)
def test_frames_as_uncompressed_match_pydicoms_frames(
    client: httpx.Client, name: str, numbers: list[int]
) -> None:
    ds = stored(client, name)
    reference = reference_frames(ds)
    r = client.get(frames_url(ds, numbers), headers={"Accept": OCTET})
    assert r.status_code == 200, r.text
    parts = parse_multipart(r)
    assert len(parts) == len(numbers)
    for n, (headers, body) in zip(numbers, parts, strict=True):
        assert headers["content-type"] == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
        np.testing.assert_array_equal(native_frame(body, ds), reference[n - 1], err_msg=f"frame {n}")


@pytest.mark.parametrize(
    ("name", "media_type", "ts", "numbers"),
    [
        ("rtdose.dcm", "image/jp2", None, [2, 9]),  # 32-bit: too deep for JPEG 2000 here -> checked below
        ("SC_rgb_rle_2frame.dcm", "image/jp2", J2K_LOSSLESS, [1, 2]),
        ("SC_rgb_rle_16bit_2frame.dcm", "image/jls", JPEG_LS_LOSSLESS, [2]),
        ("examples_ybr_color.dcm", "image/dicom-rle", RLE, [3, 4]),
        ("MR_small_jp2klossless.dcm", "image/dicom-rle", None, [1]),  # the media type's default: RLE
        ("CT_small.dcm", "image/jls", None, [1]),  # default of image/jls: JPEG-LS lossless
    ],
)
def test_frames_transcoded_to_lossless_syntaxes(
    client: httpx.Client, name: str, media_type: str, ts: str | None, numbers: list[int]
) -> None:
    ds = stored(client, name)
    accept = f'multipart/related; type="{media_type}"' + (f"; transfer-syntax={ts}" if ts else "")
    r = client.get(frames_url(ds, numbers), headers={"Accept": accept})
    if ds.BitsAllocated == 32:
        assert r.status_code == 406
        assert "Bits Allocated 32" in r.json()["message"]
        return
    assert r.status_code == 200, r.text
    produced = ts or {"image/dicom-rle": RLE, "image/jls": JPEG_LS_LOSSLESS}[media_type]
    assert r.headers["content-type"].startswith(f'multipart/related; type="{media_type}"')
    reference = reference_frames(ds)
    parts = parse_multipart(r)
    assert len(parts) == len(numbers)
    for n, (headers, body) in zip(numbers, parts, strict=True):
        assert headers["content-type"] == f"{media_type}; transfer-syntax={produced}"
        np.testing.assert_array_equal(decoded(body, ds, produced), reference[n - 1], err_msg=f"frame {n}")


def test_big_endian_frames_go_out_as_little_endian_even_as_stored(client: httpx.Client) -> None:
    ds = stored(client, "MR_small_bigendian.dcm")
    for accept in (OCTET_ANY, "*/*", OCTET):
        r = client.get(frames_url(ds, [1]), headers={"Accept": accept})
        assert r.status_code == 200, accept
        [(headers, body)] = parse_multipart(r)
        assert headers["content-type"] == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
        np.testing.assert_array_equal(native_frame(body, ds), ds.pixel_array)


def test_single_frame_single_part_media_types(client: httpx.Client) -> None:
    ds = stored(client, "SC_rgb_rle_2frame.dcm")  # 8-bit RGB, RLE
    reference = reference_frames(ds)
    r = client.get(frames_url(ds, [2]), headers={"Accept": "image/jpeg"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == f"image/jpeg; transfer-syntax={JPEG_BASELINE}"
    assert r.content[:2] == b"\xff\xd8"
    got = decoded(r.content, ds, JPEG_BASELINE, "YBR_FULL_422")
    assert np.abs(got.astype(int) - reference[1].astype(int)).mean() < 3
    r = client.get(frames_url(ds, [1]), headers={"Accept": "application/octet-stream"})
    assert r.status_code == 200
    assert r.headers["content-type"] == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
    np.testing.assert_array_equal(native_frame(r.content, ds), reference[0])
    # the stored bitstream, single-part, with its length
    r = client.get(frames_url(ds, [1]), headers={"Accept": "image/dicom-rle"})
    assert r.status_code == 200
    assert r.headers["content-type"] == f"image/dicom-rle; transfer-syntax={RLE}"
    assert r.headers["content-length"] == str(len(r.content))
    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=2))
    assert r.content == frame
    # single-part media types need one frame
    r = client.get(frames_url(ds, [1, 2]), headers={"Accept": "image/jpeg"})
    assert r.status_code == 406


def test_lossy_jpeg_only_when_asked_and_only_8_bit(client: httpx.Client) -> None:
    ds = stored(client, "CT_small.dcm")
    r = client.get(frames_url(ds, [1]), headers={"Accept": 'multipart/related; type="image/jpeg"'})
    assert r.status_code == 406
    message = r.json()["message"]
    assert JPEG_BASELINE in message and "Bits" in message
    # a wildcard never gets a lossy (or any transcoded) representation: the stored bytes
    r = client.get(frames_url(ds, [1]), headers={"Accept": "*/*"})
    assert r.status_code == 200
    [(headers, body)] = parse_multipart(r)
    assert headers["content-type"] == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
    np.testing.assert_array_equal(native_frame(body, ds), ds.pixel_array)


def test_native_frames_of_a_compressed_target_and_the_stored_fast_path(client: httpx.Client) -> None:
    rows, cols, n = 40, 48, 3
    sop, study, series = new_uid(), new_uid(), new_uid()
    data = make_instance(study=study, series=series, sop=sop, rows=rows, columns=cols, frames=n)
    assert stow(client, [data]).status_code == 200
    pixels = (np.arange(rows * cols * n, dtype=np.uint16) % 4096).reshape(n, rows, cols)
    base = f"/studies/{study}/series/{series}/instances/{sop}/frames/"
    r = client.get(
        base + "3,1",
        headers={"Accept": f'multipart/related; type="image/jp2"; transfer-syntax={J2K_LOSSLESS}'},
    )
    assert r.status_code == 200, r.text
    ds = pydicom.dcmread(io.BytesIO(data))
    for (headers, body), want in zip(parse_multipart(r), (pixels[2], pixels[0]), strict=True):
        assert headers["content-type"] == f"image/jp2; transfer-syntax={J2K_LOSSLESS}"
        np.testing.assert_array_equal(decoded(body, ds, J2K_LOSSLESS), want)
    # native frames asked for natively keep their recorded length (no transcoding)
    r = client.get(base + "2", headers={"Accept": OCTET_ANY})
    assert r.headers["content-length"]
    [(_, body)] = parse_multipart(r)
    assert body == pixels[1].tobytes()


def test_pixel_bulk_data_transcoded(client: httpx.Client) -> None:
    ds = stored(client, "SC_rgb_rle_2frame.dcm")
    url = frames_url(ds, [1]).replace("/frames/1", "/bulkdata/7FE00010")
    r = client.get(url, headers={"Accept": OCTET})
    assert r.status_code == 200, r.text
    [(headers, body)] = parse_multipart(r)
    assert headers["content-type"] == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
    assert body == np.ascontiguousarray(ds.pixel_array).tobytes()
    r = client.get(
        url, headers={"Accept": f'multipart/related; type="image/jls"; transfer-syntax={JPEG_LS_LOSSLESS}'}
    )
    assert r.status_code == 200, r.text
    parts = parse_multipart(r)
    assert len(parts) == 2
    for (_, body), want in zip(parts, ds.pixel_array, strict=True):
        np.testing.assert_array_equal(decoded(body, ds, JPEG_LS_LOSSLESS), want)
    # the stored bitstreams, as before
    r = client.get(url, headers={"Accept": OCTET_ANY})
    assert [b for _, b in parse_multipart(r)] == list(
        pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=2)
    )


@pytest.fixture
def small_pixel_limit(tmp_path: Path) -> Iterator[httpx.Client]:
    srv = start_server(tmp_path / "data", "--pixel-memory-limit", str(1 << 20), workers=1)
    try:
        with httpx.Client(base_url=srv.v2, timeout=30) as c:
            yield c
    finally:
        stop_server(srv)


def test_frame_over_the_memory_limit_is_406_naming_it(small_pixel_limit: httpx.Client) -> None:
    client = small_pixel_limit
    sop, study, series = new_uid(), new_uid(), new_uid()
    data = make_instance(study=study, series=series, sop=sop, rows=1024, columns=1024)  # 2 MiB decoded
    assert stow(client, [data]).status_code == 200
    url = f"/studies/{study}/series/{series}/instances/{sop}"
    r = client.get(
        url + "/frames/1",
        headers={"Accept": f'multipart/related; type="image/jp2"; transfer-syntax={J2K_LOSSLESS}'},
    )
    assert r.status_code == 406
    assert "pixel_memory_limit" in r.json()["message"]
    r = client.get(url, headers={"Accept": f"application/dicom; transfer-syntax={RLE}"})
    assert r.status_code == 406 and "pixel_memory_limit" in r.json()["message"]
    # what needs no decoding is not limited
    r = client.get(url + "/frames/1", headers={"Accept": OCTET})
    assert r.status_code == 200
