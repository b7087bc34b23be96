"""WADO-RS end to end (PS3.18 10.4): instances, metadata (ETag), frames, bulk data and the error cases."""

from __future__ import annotations

import io
from dataclasses import dataclass

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_frames

from support.dicom_files import make_instance, new_uid, with_fresh_uids
from support.dicomweb import DICOM_ANY, OCTET_ANY, instance_url, parse_multipart, stow, unique_id, value

EXPLICIT_LE = "1.2.840.10008.1.2.1"


@dataclass
class Study:
    study: str
    series: list[str]
    sops: dict[str, list[str]]  # series -> SOP Instance UIDs
    files: dict[str, bytes]  # SOP Instance UID -> Part 10 bytes
    patient: str

    def url(self, series: str | None = None, sop: str | None = None) -> str:
        url = f"/studies/{self.study}"
        if series:
            url += f"/series/{series}"
        if sop:
            url += f"/instances/{sop}"
        return url


def store_study(client: httpx.Client, layout: tuple[int, ...] = (2, 1), **attrs: object) -> Study:
    study, patient = new_uid(), unique_id("WADO")
    series = [new_uid() for _ in layout]
    sops: dict[str, list[str]] = {}
    files: dict[str, bytes] = {}
    for se, count in zip(series, layout, strict=True):
        sops[se] = []
        for n in range(count):
            sop = new_uid()
            files[sop] = make_instance(
                study=study, series=se, sop=sop, patient_id=patient, InstanceNumber=n + 1, **attrs
            )
            sops[se].append(sop)
    r = stow(client, list(files.values()))
    assert r.status_code == 200, r.text
    return Study(study, series, sops, files, patient)


def same_file(got: bytes, original: bytes) -> bool:
    return got[128:] == original[128:] and got[:128] in (original[:128], bytes(128))


# ---- instances ----------------------------------------------------------------------------------


def test_retrieve_study_series_and_instance(client: httpx.Client) -> None:
    st = store_study(client, (2, 1))
    r = client.get(st.url(), headers={"Accept": DICOM_ANY})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("multipart/related")
    assert 'type="application/dicom"' in r.headers["content-type"]
    parts = parse_multipart(r)
    assert len(parts) == 3
    originals = sorted(f[128:] for f in st.files.values())
    assert sorted(body[128:] for _, body in parts) == originals
    for headers, body in parts:
        assert headers["content-type"].startswith("application/dicom")
        assert f"transfer-syntax={EXPLICIT_LE}" in headers["content-type"]
        assert any(same_file(body, f) for f in st.files.values())

    se = st.series[0]
    parts = parse_multipart(client.get(st.url(se), headers={"Accept": DICOM_ANY}))
    assert sorted(b[128:] for _, b in parts) == sorted(st.files[s][128:] for s in st.sops[se])

    sop = st.sops[se][1]
    [(_, body)] = parse_multipart(client.get(st.url(se, sop), headers={"Accept": DICOM_ANY}))
    assert same_file(body, st.files[sop])


@pytest.mark.parametrize(
    "accept",
    [
        None,
        "*/*",
        'multipart/related; type="application/dicom"',
        f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT_LE}',
        "multipart/related; type=application/dicom; transfer-syntax=*",
    ],
)
def test_retrieve_default_and_explicit_accept(client: httpx.Client, accept: str | None) -> None:
    # the instances are stored in Explicit VR Little Endian, the default transfer syntax, so no transcoding
    st = store_study(client, (1,))
    headers = {"Accept": accept} if accept else {}
    r = client.get(st.url(), headers=headers)
    assert r.status_code == 200, r.text
    [(_, body)] = parse_multipart(r)
    assert same_file(body, next(iter(st.files.values())))


def test_single_instance_as_application_dicom(client: httpx.Client) -> None:
    st = store_study(client, (1,))
    se = st.series[0]
    sop = st.sops[se][0]
    for accept in ("application/dicom", "application/dicom; transfer-syntax=*"):
        r = client.get(st.url(se, sop), headers={"Accept": accept})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/dicom")
        assert same_file(r.content, st.files[sop])
    # application/dicom is for a single instance only
    r = client.get(st.url(se), headers={"Accept": "application/dicom"})
    assert r.status_code == 406


def test_syntaxes_that_cannot_be_produced_are_406(client: httpx.Client) -> None:
    # transcoding itself: tests/e2e/test_transcoding.py; these 8x8 12-bit images are neither 8-bit (JPEG
    # baseline) nor large enough for the JPEG 2000 encoder
    st = store_study(client, (1,))
    se = st.series[0]
    sop = st.sops[se][0]
    jpeg = "1.2.840.10008.1.2.4.50"
    for url in (st.url(), st.url(se), st.url(se, sop)):
        r = client.get(
            url, headers={"Accept": f'multipart/related; type="application/dicom"; transfer-syntax={jpeg}'}
        )
        assert r.status_code == 406, url
        assert jpeg in r.json()["message"]
    r = client.get(
        st.url(se, sop), headers={"Accept": "application/dicom; transfer-syntax=1.2.840.10008.1.2.4.90"}
    )
    assert r.status_code == 406
    assert "1.2.840.10008.1.2.4.90" in r.json()["message"]
    r = client.get(st.url(se, sop), headers={"Accept": "image/jpeg"})
    assert r.status_code == 406


def test_unknown_uids_are_404_and_invalid_uids_400(client: httpx.Client) -> None:
    st = store_study(client, (1,))
    se = st.series[0]
    sop = st.sops[se][0]
    missing = [
        f"/studies/{new_uid()}",
        st.url(new_uid()),
        st.url(se, new_uid()),
        f"/studies/{new_uid()}/series/{se}/instances/{sop}",  # exists, but not in that study
        f"/studies/{new_uid()}/metadata",
        st.url(new_uid()) + "/metadata",
        st.url(se, new_uid()) + "/metadata",
        st.url(se, new_uid()) + "/frames/1",
        st.url(se, new_uid()) + "/bulkdata/7FE00010",
        st.url(se, sop) + "/bulkdata/00091234",
    ]
    for url in missing:
        r = client.get(url, headers={"Accept": "*/*"})
        assert r.status_code == 404, (url, r.status_code)
        assert r.json()["message"]
    invalid = [
        "/studies/not-a-uid",
        "/studies/1.2.3/series/1.2.x",
        f"/studies/1.2.3/series/{se}/instances/.1.2",
        "/studies/1.2.-3/metadata",
        f"/studies/{st.study}/series/{se}/instances/abc/frames/1",
        "/studies/" + "1." * 40 + "1",  # longer than 64 characters
    ]
    for url in invalid:
        r = client.get(url, headers={"Accept": "*/*"})
        assert r.status_code == 400, (url, r.status_code)


# ---- metadata -----------------------------------------------------------------------------------


def test_metadata_of_study_series_and_instance(client: httpx.Client, server: object) -> None:
    st = store_study(client, (2, 1), PatientName="Doe^Jane")
    r = client.get(st.url() + "/metadata")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/dicom+json")
    study_md = r.json()
    assert sorted(value(d, "00080018") for d in study_md) == sorted(st.files)
    for d in study_md:
        assert value(d, "0020000D") == st.study
        assert value(d, "00100010") == {"Alphabetic": "Doe^Jane"}
        assert value(d, "00100020") == st.patient
        uri = d["7FE00010"]["BulkDataURI"]
        sop, se = value(d, "00080018"), value(d, "0020000E")
        assert uri.startswith(f"{client.base_url}".rstrip("/") + st.url(se, sop) + "/bulkdata/")
        assert "00020010" not in d  # file meta is not part of the data set
    se = st.series[0]
    series_md = client.get(st.url(se) + "/metadata").json()
    assert sorted(value(d, "00080018") for d in series_md) == sorted(st.sops[se])
    sop = st.sops[se][0]
    [inst] = client.get(st.url(se, sop) + "/metadata").json()
    expected = pydicom.dcmread(io.BytesIO(st.files[sop]))
    assert value(inst, "00200013") == expected.InstanceNumber
    assert value(inst, "00280010") == 8
    # the pixel data BulkDataURI returns the pixel data value
    r = client.get(inst["7FE00010"]["BulkDataURI"], headers={"Accept": OCTET_ANY})
    assert r.status_code == 200
    [(_, body)] = parse_multipart(r)
    assert body == expected.PixelData


def test_metadata_etag_and_if_none_match(client: httpx.Client) -> None:
    st = store_study(client, (1,))
    url = st.url() + "/metadata"
    r = client.get(url)
    etag = r.headers.get("etag")
    assert r.status_code == 200 and etag
    again = client.get(url)
    assert again.headers["etag"] == etag
    r = client.get(url, headers={"If-None-Match": etag})
    assert r.status_code == 304
    assert r.content == b""
    assert r.headers["etag"] == etag
    r = client.get(url, headers={"If-None-Match": '"something-else"'})
    assert r.status_code == 200
    # a new instance in the study changes the study's ETag
    se = st.series[0]
    r = stow(client, [make_instance(study=st.study, series=se, patient_id=st.patient)])
    assert r.status_code == 200
    r = client.get(url, headers={"If-None-Match": etag})
    assert r.status_code == 200
    assert r.headers["etag"] != etag
    assert len(r.json()) == 2
    r2 = client.get(url, headers={"If-None-Match": r.headers["etag"]})
    assert r2.status_code == 304


def test_metadata_with_xml_accept_is_406(client: httpx.Client) -> None:
    st = store_study(client, (1,))
    r = client.get(st.url() + "/metadata", headers={"Accept": "application/dicom+xml"})
    assert r.status_code == 406


# ---- frames -------------------------------------------------------------------------------------


def test_native_multiframe_frames(client: httpx.Client) -> None:
    rows, cols, n = 4, 6, 3
    sop = new_uid()
    study, series = new_uid(), new_uid()
    data = make_instance(study=study, series=series, sop=sop, rows=rows, columns=cols, frames=n)
    assert stow(client, [data]).status_code == 200
    pixels = (np.arange(rows * cols * n, dtype=np.uint16) % 4096).tobytes()
    size = rows * cols * 2
    frames = [pixels[i * size : (i + 1) * size] for i in range(n)]
    base = f"/studies/{study}/series/{series}/instances/{sop}/frames"

    r = client.get(base + "/1,3", headers={"Accept": OCTET_ANY})
    assert r.status_code == 200, r.text
    assert 'type="application/octet-stream"' in r.headers["content-type"]
    parts = parse_multipart(r)
    assert [body for _, body in parts] == [frames[0], frames[2]]
    for headers, _ in parts:
        assert headers["content-type"].startswith("application/octet-stream")
    r = client.get(base + "/2", headers={"Accept": OCTET_ANY})
    assert [body for _, body in parse_multipart(r)] == [frames[1]]
    r = client.get(base + "/3,1,2", headers={"Accept": OCTET_ANY})
    assert [body for _, body in parse_multipart(r)] == [frames[2], frames[0], frames[1]]
    # without transfer-syntax: native frames in Explicit VR Little Endian, the default
    r = client.get(base + "/1", headers={"Accept": 'multipart/related; type="application/octet-stream"'})
    assert r.status_code == 200
    assert [body for _, body in parse_multipart(r)] == [frames[0]]

    assert client.get(base + "/0", headers={"Accept": OCTET_ANY}).status_code == 400
    assert client.get(base + "/1,0", headers={"Accept": OCTET_ANY}).status_code == 400
    assert client.get(base + "/x", headers={"Accept": OCTET_ANY}).status_code == 400
    assert client.get(base + "/-1", headers={"Accept": OCTET_ANY}).status_code == 400
    assert client.get(base + "/4", headers={"Accept": OCTET_ANY}).status_code == 404
    assert client.get(base + "/1,4", headers={"Accept": OCTET_ANY}).status_code == 404
    # native frames are not JPEG
    jpeg = 'multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.50'
    assert client.get(base + "/1", headers={"Accept": jpeg}).status_code == 406


@pytest.mark.parametrize(
    ("name", "media_type", "numbers"),
    [
        ("SC_rgb_jpeg_dcmtk.dcm", "image/jpeg", [1]),
        ("examples_ybr_color.dcm", "image/jpeg", [1, 15, 30]),
        ("JPEG2000.dcm", "image/jp2", [1]),
        ("SC_rgb_rle_2frame.dcm", "image/dicom-rle", [2, 1]),
    ],
)
def test_encapsulated_frames(client: httpx.Client, name: str, media_type: str, numbers: list[int]) -> None:
    data, ds = with_fresh_uids(name, unique_id("ENC"))
    ts = str(ds.file_meta.TransferSyntaxUID)
    assert stow(client, [data]).status_code in (200, 202)
    count = int(ds.get("NumberOfFrames") or 1)
    frames = list(generate_frames(ds.PixelData, number_of_frames=count))
    want = [frames[i - 1] for i in numbers]
    url = instance_url(ds) + "/frames/" + ",".join(map(str, numbers))
    for accept in (OCTET_ANY, f'multipart/related; type="{media_type}"; transfer-syntax={ts}'):
        r = client.get(url, headers={"Accept": accept})
        assert r.status_code == 200, (accept, r.text)
        parts = parse_multipart(r)
        assert [body for _, body in parts] == want, accept
        for headers, _ in parts:
            assert f"transfer-syntax={ts}" in headers["content-type"]
    r = client.get(instance_url(ds) + f"/frames/{count + 1}", headers={"Accept": OCTET_ANY})
    assert r.status_code == 404
    # the whole instance comes back byte-exact too
    r = client.get(instance_url(ds), headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert r.status_code == 200
    assert same_file(r.content, data)


# ---- rendered -----------------------------------------------------------------------------------


def test_rendered_and_thumbnail_are_images(client: httpx.Client) -> None:
    # details in test_rendered.py and test_thumbnails.py
    st = store_study(client, (1,))
    se = st.series[0]
    sop = st.sops[se][0]
    for url in (
        st.url() + "/rendered",
        st.url(se) + "/rendered",
        st.url(se, sop) + "/rendered",
        st.url(se, sop) + "/frames/1/rendered",
        st.url() + "/thumbnail",
        st.url(se) + "/thumbnail",
        st.url(se, sop) + "/thumbnail",
        st.url(se, sop) + "/frames/1/thumbnail",
    ):
        r = client.get(url, headers={"Accept": "image/jpeg"})
        assert r.status_code == 200, url
        content_type = r.headers["content-type"]  # an image, or for a study or series a multipart of them
        assert content_type == "image/jpeg" or 'type="image/jpeg"' in content_type, url
    assert client.get(f"/studies/{new_uid()}/rendered").status_code == 404
