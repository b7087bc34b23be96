"""Rendered images end to end (PS3.18 8.3.5): instance, frame, series and study /rendered on known files,
checked for size, viewport, windowing, photometric handling, negotiation, caching and errors."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.uid import generate_uid

from support.dicom_files import TEST_FILES, make_instance, new_uid
from support.dicomweb import parse_multipart, stow, unique_id
from support.server import Server, start_server, stop_server


def stored(client: httpx.Client, name: str, **attrs: object) -> tuple[pydicom.Dataset, str]:
    """A bundled file stored with fresh UIDs (attributes replaced by ``attrs``): its data set and URL."""
    ds = pydicom.dcmread(TEST_FILES / name)
    sop = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.PatientID = unique_id("REN")
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    out = io.BytesIO()
    ds.save_as(out)
    r = stow(client, [out.getvalue()])
    assert r.status_code == 200, r.text
    url = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{sop}"
    return ds, url


def image(r: httpx.Response, media: str = "image/jpeg") -> np.ndarray:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == media
    picture = Image.open(io.BytesIO(r.content))
    assert picture.format == {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF"}[media]
    return np.asarray(picture.convert("RGB") if picture.mode == "P" else picture)


def test_ct_is_rendered_at_its_size_with_rescale_and_min_max_window(client: httpx.Client) -> None:
    ds, url = stored(client, "CT_small.dcm")
    got = image(client.get(url + "/rendered", headers={"Accept": "image/png"}), "image/png")
    assert got.shape == (128, 128) and got.dtype == np.uint8
    # no window in the file: the frame's range (after rescale) spans black to white, order kept
    assert got.min() == 0 and got.max() == 255
    hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected = np.rint((hu - hu.min()) / (hu.max() - hu.min()) * 255)
    assert np.abs(got.astype(float) - expected).max() <= 1


def test_window_parameter_and_the_files_own_window(client: httpx.Client) -> None:
    ds, url = stored(client, "MR_small.dcm")  # Window Center 600, Width 1600 in the file
    raw = ds.pixel_array.astype(float)
    default = image(client.get(url + "/rendered", headers={"Accept": "image/png"}), "image/png")
    c, w = 600.0, 1600.0
    expected = np.clip(((raw - (c - 0.5)) / (w - 1) + 0.5) * 255, 0, 255)
    assert np.abs(default.astype(float) - np.rint(expected)).max() <= 1
    # a narrow window from the request: a threshold around its center
    narrow = image(
        client.get(url + "/rendered?window=500,2,linear", headers={"Accept": "image/png"}), "image/png"
    )
    assert set(np.unique(narrow)) <= {0, 255}
    assert (narrow[raw > 501] == 255).all() and (narrow[raw < 499] == 0).all()
    sig = image(client.get(url + "/rendered?window=500,400,sigmoid&accept=image/png"), "image/png")
    expected_sig = 255 / (1 + np.exp(-4 * (raw - 500) / 400))
    assert np.abs(sig.astype(float) - expected_sig).max() <= 1


def test_monochrome1_is_inverted(client: httpx.Client) -> None:
    _, url2 = stored(client, "MR_small.dcm")
    _, url1 = stored(client, "MR_small.dcm", PhotometricInterpretation="MONOCHROME1")
    mono2 = image(client.get(url2 + "/rendered?accept=image/png"), "image/png").astype(int)
    mono1 = image(client.get(url1 + "/rendered?accept=image/png"), "image/png").astype(int)
    assert (mono1 == 255 - mono2).all()


def test_palette_color_goes_through_its_palette(client: httpx.Client) -> None:
    ds, url = stored(client, "examples_palette.dcm")
    got = image(client.get(url + "/rendered?accept=image/png"), "image/png")
    assert got.shape == (ds.Rows, ds.Columns, 3)
    expected = pydicom.pixels.apply_color_lut(ds.pixel_array, ds)
    expected8 = (expected >> 8) if expected.max() > 255 else expected
    assert np.abs(got.astype(int) - expected8.astype(int)).max() <= 1


@pytest.mark.parametrize(
    "name", ["SC_ybr_full_422_uncompressed.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_rle.dcm"]
)
def test_color_images_come_out_rgb(client: httpx.Client, name: str) -> None:
    ds, url = stored(client, name)
    got = image(client.get(url + "/rendered?accept=image/png"), "image/png").astype(int)
    expected = ds.pixel_array.astype(int)  # pydicom converts YBR to RGB
    assert got.shape == (ds.Rows, ds.Columns, 3)
    assert np.abs(got - expected).mean() < 3


def test_viewport_scales_keeping_aspect_and_crops_and_flips(client: httpx.Client) -> None:
    _, url = stored(client, "examples_palette.dcm")  # 800 wide, 350 high
    r = client.get(url + "/rendered?viewport=400,400")
    assert image(r).shape[:2] == (175, 400)
    # a region: 100x50 pixels from (10, 20), shown at 200x100
    full = image(client.get(url + "/rendered?accept=image/png"), "image/png")
    crop = image(client.get(url + "/rendered?viewport=100,50,10,20,100,50&accept=image/png"), "image/png")
    assert (crop == full[20:70, 10:110]).all()
    flipped = image(
        client.get(url + "/rendered?viewport=100,50,110,20,-100,50&accept=image/png"), "image/png"
    )
    assert (flipped == full[20:70, 10:110][:, ::-1]).all()
    upside = image(client.get(url + "/rendered?viewport=100,50,10,70,100,-50&accept=image/png"), "image/png")
    assert (upside == full[20:70, 10:110][::-1]).all()
    big = image(client.get(url + "/rendered?viewport=200,100,10,20,100,50&accept=image/png"), "image/png")
    assert big.shape[:2] == (100, 200)


def test_quality_changes_the_jpeg(client: httpx.Client) -> None:
    _, url = stored(client, "examples_rgb_color.dcm")
    low = client.get(url + "/rendered?quality=5")
    high = client.get(url + "/rendered?quality=100")
    image(low), image(high)
    assert len(low.content) < len(high.content)


def test_multi_frame_instance_frames_and_animated_gif(client: httpx.Client) -> None:
    study, series, sop = new_uid(), new_uid(), new_uid()
    pixels = np.zeros((3, 8, 8), np.uint16)
    pixels[1] += 100
    pixels[2] += 200
    pixels[:, 0, 0], pixels[:, 0, 1] = 300, 0  # the same range (0-300) in every frame
    data = make_instance(
        study=study,
        series=series,
        sop=sop,
        frames=3,
        PixelData=pixels.tobytes(),
    )
    assert stow(client, [data]).status_code == 200
    url = f"/studies/{study}/series/{series}/instances/{sop}"
    first = image(client.get(url + "/rendered?accept=image/png"), "image/png")
    assert first[4, 4] == 0
    second = image(client.get(url + "/frames/2/rendered?accept=image/png"), "image/png")
    assert abs(int(second[4, 4]) - round(100 / 300 * 255)) <= 1
    gif = client.get(url + "/rendered", headers={"Accept": "image/gif"})
    assert gif.status_code == 200 and gif.headers["content-type"] == "image/gif"
    animation = Image.open(io.BytesIO(gif.content))
    assert getattr(animation, "n_frames", 1) == 3
    several = client.get(
        url + "/frames/1,3/rendered", headers={"Accept": 'multipart/related; type="image/png"'}
    )
    assert several.status_code == 200
    parts = parse_multipart(several)
    assert [h["content-type"] for h, _ in parts] == ["image/png", "image/png"]
    assert np.asarray(Image.open(io.BytesIO(parts[1][1])))[4, 4] == round(200 / 300 * 255)
    assert client.get(url + "/frames/4/rendered").status_code == 404
    assert client.get(url + "/frames/x/rendered").status_code == 400


def test_series_and_study_rendered_are_multipart_of_their_images(client: httpx.Client) -> None:
    study, series = new_uid(), new_uid()
    parts = [make_instance(study=study, series=series, InstanceNumber=n) for n in (1, 2)]
    other = make_instance(study=study, series=new_uid())
    assert stow(client, [*parts, other]).status_code == 200
    r = client.get(f"/studies/{study}/series/{series}/rendered", headers={"Accept": "*/*"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith('multipart/related; type="image/jpeg"')
    assert len(parse_multipart(r)) == 2
    r = client.get(f"/studies/{study}/rendered", headers={"Accept": "image/png"})
    found = parse_multipart(r)
    assert len(found) == 3 and all(h["content-type"] == "image/png" for h, _ in found)
    for _, body in found:
        assert Image.open(io.BytesIO(body)).size == (8, 8)


def test_accept_negotiation(client: httpx.Client) -> None:
    _, url = stored(client, "CT_small.dcm")
    for accept, media in [
        ("*/*", "image/jpeg"),
        ("image/*", "image/jpeg"),
        (None, "image/jpeg"),
        ("image/gif", "image/gif"),
        ("image/png, image/jpeg;q=0.5", "image/png"),
        ("application/dicom, image/*;q=0.1", "image/jpeg"),
    ]:
        headers = {"Accept": accept} if accept else {}
        r = client.get(url + "/rendered", headers=headers)
        assert r.status_code == 200 and r.headers["content-type"] == media, (accept, r.text)
    r = client.get(url + "/rendered", headers={"Accept": "application/dicom"})
    assert r.status_code == 406 and "image/jpeg" in r.json()["message"]


def test_etag_and_304(client: httpx.Client) -> None:
    _, url = stored(client, "CT_small.dcm")
    r = client.get(url + "/rendered?viewport=64,64")
    etag = r.headers["etag"]
    again = client.get(url + "/rendered?viewport=64,64", headers={"If-None-Match": etag})
    assert again.status_code == 304 and not again.content
    other = client.get(url + "/rendered?viewport=32,32", headers={"If-None-Match": etag})
    assert other.status_code == 200 and other.headers["etag"] != etag


@pytest.mark.parametrize(
    "query",
    [
        "window=abc,100,linear",
        "window=40,0,linear",
        "window=40,100,cubic",
        "window=40",
        "viewport=0,10",
        "viewport=10",
        "viewport=99999,10",
        "viewport=10,10,500,0,10,10",
        "viewport=10,10,0,0,0,10",
        "quality=0",
        "quality=101",
        "quality=high",
    ],
)
def test_bad_parameters_are_400(client: httpx.Client, query: str) -> None:
    _, url = stored(client, "CT_small.dcm")
    r = client.get(f"{url}/rendered?{query}")
    assert r.status_code == 400, (query, r.text)
    assert r.json()["message"]


def test_non_images_and_unknown_objects(client: httpx.Client) -> None:
    _, url = stored(client, "test-SR.dcm")
    r = client.get(url + "/rendered")
    assert r.status_code == 406 and "pixel data" in r.json()["message"]
    study = url.split("/")[2]
    assert client.get(f"/studies/{study}/rendered").status_code == 406
    assert client.get(f"/studies/{new_uid()}/rendered").status_code == 404
    # ignored: annotation (nothing burned in), charset and parameters the standard does not define
    _, url = stored(client, "CT_small.dcm")
    assert client.get(url + "/rendered?annotation=patient&charset=utf-8&foo=bar").status_code == 200


def test_a_frame_above_the_memory_limit_is_406(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "data", "--pixel-memory-limit", "1048576", workers=1)
    try:
        with httpx.Client(base_url=srv.v2, timeout=30) as c:
            study, series, sop = new_uid(), new_uid(), new_uid()
            data = make_instance(study=study, series=series, sop=sop, rows=1024, columns=1024)
            assert stow(c, [data]).status_code == 200
            r = c.get(f"/studies/{study}/series/{series}/instances/{sop}/rendered")
            assert r.status_code == 406 and "pixel_memory_limit" in r.json()["message"]
    finally:
        stop_server(srv)


IMAGE_FILES = sorted(
    path.name
    for path in TEST_FILES.glob("*.dcm")
    if path.name
    not in ("badVR.dcm", "MR_truncated.dcm", "ExplVR_BigEndNoMeta.dcm", "ExplVR_LitEndNoMeta.dcm")
    and "Rows" in pydicom.dcmread(path, stop_before_pixels=True, force=True)
)


def decodable(ds: pydicom.Dataset) -> bool:
    try:
        ds.pixel_array  # noqa: B018 - decoding is the question
    except Exception:
        return False
    return True


def test_every_bundled_image_renders_at_its_size(client: httpx.Client) -> None:
    """Every image pydicom decodes renders (at its size, with a thumbnail); the others are 406 with a
    reason (JPEG-lossy.dcm and a JPEG 2000 file with a broken header), never a 500."""
    refused = []
    for name in IMAGE_FILES:
        try:
            ds, url = stored(client, name)
        except (AssertionError, TypeError, ValueError, AttributeError):
            continue  # a file pydicom cannot rewrite, or the archive refuses, is not this test's business
        r = client.get(url + "/rendered?accept=image/png")
        if not decodable(ds):
            assert r.status_code == 406 and "cannot be rendered" in r.json()["message"], name
            refused.append(name)
            continue
        got = image(r, "image/png")
        assert got.shape[:2] == (ds.Rows, ds.Columns), name
        assert Image.open(io.BytesIO(client.get(url + "/thumbnail").content)).size[0] <= 128, name
    assert len(refused) <= 3, refused


def test_dicomweb_client_gets_rendered_images(server: Server, client: httpx.Client) -> None:
    study, series, sop = new_uid(), new_uid(), new_uid()
    data = make_instance(study=study, series=series, sop=sop, frames=2, rows=8, columns=12)
    assert stow(client, [data]).status_code == 200
    web = DICOMwebClient(server.v2)
    jpeg = web.retrieve_instance_rendered(study, series, sop)
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"
    png = web.retrieve_instance_rendered(
        study, series, sop, media_types=("image/png",), params={"viewport": "6,6"}
    )
    assert Image.open(io.BytesIO(png)).size == (6, 4)
    frame = web.retrieve_instance_frames_rendered(study, series, sop, [2], media_types=("image/gif",))
    assert Image.open(io.BytesIO(frame)).format == "GIF"
