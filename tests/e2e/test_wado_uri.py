"""WADO-URI end to end (PS3.18 chapter 9): at the version root (OHIF's wadouri: /v2?requestType=WADO...,
and /v2/?...), at /v2/wado, under a partition; the instance as application/dicom, rendered images, the
rendering parameters and the errors."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image

from support.dicom_files import TEST_FILES, make_instance, new_uid
from support.dicomweb import stow, unique_id
from support.server import Server, start_server, stop_server


def store(client: httpx.Client, data: bytes | None = None) -> tuple[str, str, str, bytes]:
    study, series, sop = new_uid(), new_uid(), new_uid()
    if data is None:
        pixels = np.arange(20 * 40, dtype=np.uint16).reshape(20, 40)  # 40 wide, 20 high: 0..799
        data = make_instance(
            study=study, series=series, sop=sop, rows=20, columns=40, PixelData=pixels.tobytes()
        )
    else:
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.PatientID = unique_id("URI")
        out = io.BytesIO()
        ds.save_as(out)
        data = out.getvalue()
    r = stow(client, [data])
    assert r.status_code == 200, r.text
    return study, series, sop, data


def query(study: str, series: str, sop: str, **more: str) -> dict[str, str]:
    return {"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": sop, **more}


def picture(r: httpx.Response, media: str = "image/jpeg") -> Image.Image:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == media
    found = Image.open(io.BytesIO(r.content))
    found.load()
    return found


def same_file(got: bytes, original: bytes) -> bool:
    return got[128:] == original[128:]


@pytest.mark.parametrize("path", ["", "/", "/wado"])
def test_the_instance_as_application_dicom_at_every_path(
    server: Server, client: httpx.Client, path: str
) -> None:
    study, series, sop, data = store(client)
    # /v2?requestType=... (OHIF's wadoUriRoot) is served as it is: no redirect to follow
    with httpx.Client(timeout=30, follow_redirects=False) as plain:
        r = plain.get(server.v2 + path, params=query(study, series, sop, contentType="application/dicom"))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/dicom")
    assert same_file(r.content, data)


def test_rendered_by_default_and_by_content_type(client: httpx.Client) -> None:
    study, series, sop, _ = store(client)
    assert picture(client.get("/wado", params=query(study, series, sop))).size == (40, 20)
    png = picture(client.get("/wado", params=query(study, series, sop, contentType="image/png")), "image/png")
    assert np.asarray(png)[0, 0] == 0 and np.asarray(png)[-1, -1] == 255
    gif = client.get("/wado", params=query(study, series, sop, contentType="image/gif"))
    picture(gif, "image/gif")
    # a list: the first one offered
    listed = client.get("/wado", params=query(study, series, sop, contentType="video/mpeg,image/png"))
    picture(listed, "image/png")


def test_rows_columns_region_window_quality(client: httpx.Client) -> None:
    study, series, sop, _ = store(client)
    q = query(study, series, sop, contentType="image/png")
    assert picture(client.get("/wado", params={**q, "columns": "20"}), "image/png").size == (20, 10)
    assert picture(client.get("/wado", params={**q, "rows": "5"}), "image/png").size == (10, 5)
    assert picture(client.get("/wado", params={**q, "rows": "10", "columns": "10"}), "image/png").size == (
        10,
        5,
    )
    region = picture(client.get("/wado", params={**q, "region": "0.5,0,1,0.5"}), "image/png")
    assert region.size == (20, 10)
    full = np.asarray(picture(client.get("/wado", params=q), "image/png"))
    assert (np.asarray(region) == full[0:10, 20:40]).all()
    windowed = np.asarray(
        picture(client.get("/wado", params={**q, "windowCenter": "400", "windowWidth": "2"}), "image/png")
    )
    assert set(np.unique(windowed)) == {0, 255}
    jq = query(study, series, sop)
    low = client.get("/wado", params={**jq, "imageQuality": "5"})
    high = client.get("/wado", params={**jq, "imageQuality": "100"})
    assert len(low.content) < len(high.content)


def test_frame_number_and_non_images(client: httpx.Client) -> None:
    study, series, sop = new_uid(), new_uid(), new_uid()
    pixels = np.zeros((2, 4, 4), np.uint16)
    pixels[1] = 100
    pixels[:, 0, 0], pixels[:, 0, 1] = 0, 100
    data = make_instance(
        study=study, series=series, sop=sop, rows=4, columns=4, frames=2, PixelData=pixels.tobytes()
    )
    assert stow(client, [data]).status_code == 200
    q = query(study, series, sop, contentType="image/png")
    second = np.asarray(picture(client.get("/wado", params={**q, "frameNumber": "2"}), "image/png"))
    assert second[2, 2] == 255
    assert client.get("/wado", params={**q, "frameNumber": "3"}).status_code == 404
    # an SR: application/dicom by default, no image
    study, series, sop, sr = store(client, (TEST_FILES / "test-SR.dcm").read_bytes())
    r = client.get("/wado", params=query(study, series, sop))
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/dicom")
    assert same_file(r.content, sr)
    assert client.get("/wado", params=query(study, series, sop, contentType="image/jpeg")).status_code == 406


@pytest.mark.parametrize(
    "change, status",
    [
        ({"requestType": None}, 400),
        ({"requestType": "STUDY"}, 400),
        ({"objectUID": None}, 400),
        ({"studyUID": "not a uid"}, 400),
        ({"objectUID": "1.2.3.4.5.6.7"}, 404),
        ({"anonymize": "yes"}, 400),
        ({"presentationUID": "1.2.3"}, 400),
        ({"contentType": "application/dicom", "rows": "10"}, 400),
        ({"contentType": "application/dicom", "transferSyntax": "1.2.3.4"}, 406),
        ({"contentType": "application/dicom", "transferSyntax": "not-a-uid"}, 400),
        ({"transferSyntax": "1.2.840.10008.1.2.1"}, 400),
        ({"contentType": "text/html"}, 406),
        ({"rows": "0"}, 400),
        ({"columns": "x"}, 400),
        ({"region": "0.5,0.5,0.2,1"}, 400),
        ({"windowCenter": "40"}, 400),
        ({"windowCenter": "40", "windowWidth": "0"}, 400),
        ({"imageQuality": "101"}, 400),
        ({"frameNumber": "0"}, 400),
    ],
)
def test_bad_requests(client: httpx.Client, change: dict[str, str | None], status: int) -> None:
    study, series, sop, _ = store(client)
    q: dict[str, str] = query(study, series, sop)
    for name, value in change.items():
        if value is None:
            q.pop(name)
        else:
            q[name] = value
    r = client.get("/wado", params=q)
    assert r.status_code == status, (change, r.text)
    assert r.json()["message"]


def test_stored_transfer_syntax_is_served_and_unknown_parameters_ignored(client: httpx.Client) -> None:
    study, series, sop, data = store(client)
    q = query(study, series, sop, contentType="application/dicom", transferSyntax="1.2.840.10008.1.2.1")
    r = client.get("/", params={**q, "frame": "1", "charset": "utf-8"})
    assert r.status_code == 200 and same_file(r.content, data)


def test_transfer_syntax_transcodes(client: httpx.Client) -> None:
    study, series, sop, data = store(client, (TEST_FILES / "MR_small_RLE.dcm").read_bytes())
    q = query(study, series, sop, contentType="application/dicom", transferSyntax="1.2.840.10008.1.2.1")
    r = client.get("/wado", params=q)
    assert r.status_code == 200 and r.headers["content-type"].endswith("transfer-syntax=1.2.840.10008.1.2.1")
    got = pydicom.dcmread(io.BytesIO(r.content))
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert (got.pixel_array == pydicom.dcmread(io.BytesIO(data)).pixel_array).all()


@pytest.fixture(scope="module")
def partitioned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("wado-uri") / "data", "--partitions", "true", workers=1)
    yield srv
    stop_server(srv)


def test_wado_uri_under_a_partition(partitioned: Server) -> None:
    with httpx.Client(base_url=partitioned.v2 + "/partitions/uri", timeout=30) as tenant:
        study, series, sop, data = store(tenant)
        r = tenant.get("/wado", params=query(study, series, sop, contentType="application/dicom"))
        assert r.status_code == 200 and same_file(r.content, data)
        r = tenant.get("/", params=query(study, series, sop))
        picture(r)
    with httpx.Client(timeout=30) as plain:
        for root in ("/partitions/uri/", "/partitions/uri"):  # with or without the slash
            r = plain.get(partitioned.v2 + root, params=query(study, series, sop))
            picture(r)
        # not in the default partition, nor in another
        for other in ("/wado", "/", "/partitions/other/wado"):
            r = plain.get(partitioned.v2 + other, params=query(study, series, sop))
            assert r.status_code == 404, other


def test_root_without_a_request_type_says_what_it_is(client: httpx.Client) -> None:
    r = client.get("/")
    assert r.status_code == 400 and "requestType=WADO" in r.json()["message"]
