"""Thumbnails end to end (PS3.18 10.4.1.1.4): instance, frame, series and study /thumbnail give one small
image of a representative frame, for any Accept that admits an image (OHIF asks with */*), cached."""

from __future__ import annotations

import io

import httpx
import numpy as np
from PIL import Image

from support.dicom_files import make_instance, new_uid
from support.dicomweb import stow


def flat(value: int, frames: int = 1, rows: int = 300, columns: int = 200) -> bytes:
    """Pixel data of ``frames`` frames, each flat at ``value`` except one corner pixel at 0 and one at
    1000, so that every frame spans the same range and renders its flat part as value/1000 of white."""
    pixels = np.full((frames, rows, columns), value, np.uint16)
    pixels[:, 0, 0], pixels[:, 0, 1] = 0, 1000
    return pixels.tobytes()


def shade(r: httpx.Response, media: str = "image/jpeg") -> float:
    """The thumbnail's middle grey level (checks it decodes and is small)."""
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == media
    picture = Image.open(io.BytesIO(r.content))
    picture.load()
    assert max(picture.size) <= 128
    pixels = np.asarray(picture.convert("L"))
    return float(pixels[pixels.shape[0] // 2, pixels.shape[1] // 2])


def test_series_and_study_thumbnails_show_the_middle_image_of_the_first_series(client: httpx.Client) -> None:
    study, first, second = new_uid(), new_uid(), new_uid()
    parts = [
        make_instance(
            study=study,
            series=first,
            rows=300,
            columns=200,
            InstanceNumber=n,
            SeriesNumber=1,
            PixelData=flat(value),
        )
        for n, value in ((1, 100), (2, 500), (3, 900))
    ]
    parts.append(
        make_instance(study=study, series=second, rows=300, columns=200, SeriesNumber=2, PixelData=flat(900))
    )
    assert stow(client, parts).status_code == 200
    for url in (f"/studies/{study}/thumbnail", f"/studies/{study}/series/{first}/thumbnail"):
        r = client.get(url, headers={"Accept": "*/*"})
        assert abs(shade(r) - 0.5 * 255) < 6, url  # the middle instance: 500 of 1000
        picture = Image.open(io.BytesIO(r.content))
        assert picture.size == (85, 128)  # 200x300 fitted into 128x128
    r = client.get(f"/studies/{study}/series/{second}/thumbnail", headers={"Accept": "image/*"})
    assert shade(r) > 0.85 * 255


def test_instance_and_frame_thumbnails(client: httpx.Client) -> None:
    study, series, sop = new_uid(), new_uid(), new_uid()
    pixels = np.concatenate([np.frombuffer(flat(v, rows=64, columns=64), np.uint16) for v in (0, 250, 1000)])
    data = make_instance(
        study=study, series=series, sop=sop, rows=64, columns=64, frames=3, PixelData=pixels.tobytes()
    )
    assert stow(client, [data]).status_code == 200
    url = f"/studies/{study}/series/{series}/instances/{sop}"
    assert abs(shade(client.get(url + "/thumbnail")) - 0.25 * 255) < 6  # the middle frame
    assert shade(client.get(url + "/frames/3/thumbnail", headers={"Accept": "image/png"}), "image/png") > 250
    small = client.get(url + "/thumbnail?viewport=32,16")
    assert Image.open(io.BytesIO(small.content)).size == (16, 16)
    assert client.get(url + "/frames/1,2/thumbnail").status_code == 400
    assert client.get(url + "/frames/9/thumbnail").status_code == 404


def test_thumbnails_are_cached_and_revalidated(client: httpx.Client) -> None:
    study, series = new_uid(), new_uid()
    assert stow(client, [make_instance(study=study, series=series)]).status_code == 200
    url = f"/studies/{study}/series/{series}/thumbnail"
    first = client.get(url, headers={"Accept": "*/*"})
    again = client.get(url, headers={"Accept": "*/*"})
    assert first.content == again.content and first.headers["etag"] == again.headers["etag"]
    r = client.get(url, headers={"Accept": "*/*", "If-None-Match": first.headers["etag"]})
    assert r.status_code == 304


def test_what_has_no_thumbnail(client: httpx.Client) -> None:
    study, series = new_uid(), new_uid()
    assert stow(client, [make_instance(study=study, series=series)]).status_code == 200
    r = client.get(f"/studies/{study}/thumbnail", headers={"Accept": "application/dicom+json"})
    assert r.status_code == 406 and "image/jpeg" in r.json()["message"]
    assert client.get(f"/studies/{new_uid()}/thumbnail").status_code == 404
    r = client.get(f"/studies/{study}/thumbnail?viewport=0,0")
    assert r.status_code == 400
