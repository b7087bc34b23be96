"""A real DICOMweb client library (dicomweb-client) driving the server through every service."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator

import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid
from requests.exceptions import HTTPError

from support.dicom_files import TEST_FILES, make_instance, new_uid
from support.dicomweb import value
from support.server import Server


@pytest.fixture(scope="module")
def dw(server: Server) -> DICOMwebClient:
    return DICOMwebClient(url=server.v2)


@pytest.fixture(scope="module")
def study(dw: DICOMwebClient) -> Iterator[dict[str, object]]:
    """Two series (3 native multi-frame instances + 1 JPEG) of one fresh patient, stored with the client."""
    patient = f"DW-{uuid.uuid4().hex[:12]}"
    study_uid, native_series, jpeg_series = new_uid(), new_uid(), new_uid()
    datasets = []
    for n in range(3):
        raw = make_instance(
            study=study_uid,
            series=native_series,
            patient_id=patient,
            patient_name="Müller^Jürgen",
            frames=2,
            rows=4,
            columns=4,
            InstanceNumber=n + 1,
            StudyDescription="client test",
        )
        datasets.append(pydicom.dcmread(io.BytesIO(raw)))
    jpeg = pydicom.dcmread(TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm")
    jpeg.StudyInstanceUID, jpeg.SeriesInstanceUID, jpeg.SOPInstanceUID = (
        study_uid,
        jpeg_series,
        generate_uid(),
    )
    jpeg.file_meta.MediaStorageSOPInstanceUID = jpeg.SOPInstanceUID
    jpeg.PatientID = patient
    jpeg.PatientName = "Müller^Jürgen"
    jpeg.StudyDescription = "client test"  # study attributes come from the newest instance
    datasets.append(jpeg)
    response = dw.store_instances(datasets)
    assert len(response.ReferencedSOPSequence) == 4
    assert "FailedSOPSequence" not in response
    yield {
        "patient": patient,
        "study": study_uid,
        "native_series": native_series,
        "jpeg_series": jpeg_series,
        "datasets": datasets,
    }


def test_search(dw: DICOMwebClient, study: dict[str, object]) -> None:
    patient = study["patient"]
    [found] = dw.search_for_studies(search_filters={"PatientID": patient})
    assert value(found, "0020000D") == study["study"]
    assert value(found, "00201208") == 4
    assert dw.search_for_studies(search_filters={"PatientID": patient, "PatientName": "muller"}) == []
    fuzzy = dw.search_for_studies(
        fuzzymatching=True, search_filters={"PatientID": patient, "PatientName": "jur"}
    )
    assert [value(s, "0020000D") for s in fuzzy] == [study["study"]]
    fields = dw.search_for_studies(search_filters={"PatientID": patient}, fields=["StudyDescription"])
    assert value(fields[0], "00081030") == "client test"
    series = dw.search_for_series(study_instance_uid=study["study"])
    assert {value(s, "0020000E") for s in series} == {study["native_series"], study["jpeg_series"]}
    ct = dw.search_for_series(search_filters={"PatientID": patient, "Modality": "CT"})
    assert [value(s, "0020000E") for s in ct] == [study["native_series"]]
    instances = dw.search_for_instances(
        study_instance_uid=study["study"], series_instance_uid=study["native_series"]
    )
    assert len(instances) == 3
    # paging through the client's limit/offset
    first = dw.search_for_instances(search_filters={"PatientID": patient}, limit=3, offset=0)
    rest = dw.search_for_instances(search_filters={"PatientID": patient}, limit=3, offset=3)
    uids = [value(i, "00080018") for i in first + rest]
    assert len(first) == 3 and len(rest) == 1 and len(set(uids)) == 4
    everything = dw.search_for_instances(search_filters={"PatientID": patient}, limit=1, get_remaining=True)
    assert len(everything) == 4


def test_retrieve(dw: DICOMwebClient, study: dict[str, object]) -> None:
    datasets: list[pydicom.Dataset] = study["datasets"]  # type: ignore[assignment]
    native = datasets[:3]
    retrieved = dw.retrieve_study(study["study"], media_types=(("application/dicom", "*"),))
    assert sorted(ds.SOPInstanceUID for ds in retrieved) == sorted(ds.SOPInstanceUID for ds in datasets)
    series = dw.retrieve_series(study["study"], study["native_series"])
    assert sorted(ds.SOPInstanceUID for ds in series) == sorted(ds.SOPInstanceUID for ds in native)
    for ds in series:
        original = next(d for d in native if d.SOPInstanceUID == ds.SOPInstanceUID)
        assert ds.PixelData == original.PixelData
        assert ds.PatientName == "Müller^Jürgen"
    one = dw.retrieve_instance(study["study"], study["native_series"], native[0].SOPInstanceUID)
    assert one.SOPInstanceUID == native[0].SOPInstanceUID
    assert one.PixelData == native[0].PixelData


def test_metadata_frames_and_bulkdata(dw: DICOMwebClient, study: dict[str, object], server: Server) -> None:
    datasets: list[pydicom.Dataset] = study["datasets"]  # type: ignore[assignment]
    native, jpeg = datasets[0], datasets[3]
    metadata = dw.retrieve_study_metadata(study["study"])
    assert len(metadata) == 4
    md = dw.retrieve_instance_metadata(study["study"], study["native_series"], native.SOPInstanceUID)
    assert value(md, "00080018") == native.SOPInstanceUID
    assert value(md, "00100010") == {"Alphabetic": "Müller^Jürgen"}
    assert value(md, "00280008") == 2
    series_md = dw.retrieve_series_metadata(study["study"], study["native_series"])
    assert len(series_md) == 3

    frames = dw.retrieve_instance_frames(
        study["study"], study["native_series"], native.SOPInstanceUID, frame_numbers=[2, 1]
    )
    pixels = np.frombuffer(native.PixelData, dtype=np.uint8)
    size = len(pixels) // 2
    assert frames == [native.PixelData[size:], native.PixelData[:size]]

    jpeg_frames = dw.retrieve_instance_frames(
        study["study"],
        study["jpeg_series"],
        jpeg.SOPInstanceUID,
        frame_numbers=[1],
        media_types=(("image/jpeg", "1.2.840.10008.1.2.4.50"),),
    )
    assert jpeg_frames == list(generate_frames(jpeg.PixelData, number_of_frames=1))

    # dicomweb-client sends "Host: 127.0.0.1" without the port; the server still builds a usable
    # absolute BulkDataURI from the port the client connected to
    uri = md["7FE00010"]["BulkDataURI"]
    assert uri.startswith(server.v2 + "/studies/")
    bulk = dw.retrieve_bulkdata(uri)
    assert bulk == [native.PixelData]


def test_transcoding_requests(dw: DICOMwebClient, study: dict[str, object]) -> None:
    datasets: list[pydicom.Dataset] = study["datasets"]  # type: ignore[assignment]
    jpeg = datasets[3]  # JPEG baseline YBR_FULL, 100x100 RGB
    uids = (study["study"], study["jpeg_series"], jpeg.SOPInstanceUID)
    # retrieve_series / retrieve_study without media types: Explicit VR Little Endian (PS3.18 default)
    [series] = dw.retrieve_series(study["study"], study["jpeg_series"])
    assert series.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    np.testing.assert_array_equal(series.pixel_array, jpeg.pixel_array)
    for ts in (
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.5",
        "1.2.840.10008.1.2.4.80",
    ):
        one = dw.retrieve_instance(*uids, media_types=(("application/dicom", ts),))
        assert one.file_meta.TransferSyntaxUID == ts
        assert one.SOPInstanceUID == jpeg.SOPInstanceUID
        np.testing.assert_array_equal(one.pixel_array, jpeg.pixel_array)
    # frames uncompressed, and in another compressed syntax
    [frame] = dw.retrieve_instance_frames(*uids, frame_numbers=[1], media_types=("application/octet-stream",))
    assert frame == np.ascontiguousarray(jpeg.pixel_array).tobytes()
    [j2k] = dw.retrieve_instance_frames(
        *uids, frame_numbers=[1], media_types=(("image/jp2", "1.2.840.10008.1.2.4.90"),)
    )
    assert j2k[:4] == b"\xff\x4f\xff\x51"  # a JPEG 2000 codestream (SOC, SIZ)
    # what cannot be produced is refused: the native 12-bit CT as JPEG baseline
    native = datasets[0]
    with pytest.raises(HTTPError) as refused:
        dw.retrieve_instance(
            study["study"],
            study["native_series"],
            native.SOPInstanceUID,
            media_types=(("application/dicom", "1.2.840.10008.1.2.4.50"),),
        )
    assert refused.value.response.status_code == 406


def test_delete(dw: DICOMwebClient, server: Server) -> None:
    study_uid, series_uid = new_uid(), new_uid()
    sops = [new_uid(), new_uid()]
    datasets = [
        pydicom.dcmread(io.BytesIO(make_instance(study=study_uid, series=series_uid, sop=sop)))
        for sop in sops
    ]
    dw.store_instances(datasets, study_instance_uid=study_uid)
    dw.delete_instance(study_uid, series_uid, sops[0])
    assert [value(i, "00080018") for i in dw.search_for_instances(study_instance_uid=study_uid)] == [sops[1]]
    dw.delete_series(study_uid, series_uid)
    assert dw.search_for_instances(study_instance_uid=study_uid) == []
    with pytest.raises(HTTPError):
        dw.retrieve_study(study_uid)
    with pytest.raises(HTTPError):
        dw.delete_study(study_uid)
