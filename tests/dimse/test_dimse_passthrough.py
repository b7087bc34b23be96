"""Stored data sets sent without re-encoding (dimse/passthrough.py): pynetdicom's association module encodes
a StoredDataSet as exactly the stored bytes after the File Meta Information; asked for another encoding it
encodes the parsed data set; and the C-STORE a C-GET sends carries those bytes unchanged."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pydicom
import pynetdicom.association as pynetdicom_association
import pytest
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelGet
from test_dimse_query_archive import AE_TITLE, part10, query, start_scp

from dicomd.dicom.meta import meta_end
from dicomd.dicom.model import InvalidDicom
from dicomd.dimse.passthrough import StoredDataSet, stored_data_set

from support.dicom_files import TEST_FILES, new_uid


def _stored(name: str) -> tuple[bytes, pydicom.Dataset]:
    data = (TEST_FILES / name).read_bytes()
    return data, pydicom.dcmread(io.BytesIO(data))


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small_implicit.dcm", "image_dfl.dcm", "MR_small_RLE.dcm"]
)
def test_the_stored_bytes_are_what_pynetdicom_sends(name: str) -> None:
    data, ds = _stored(name)
    syntax = ds.file_meta.TransferSyntaxUID
    sent = stored_data_set(data, ds.SOPClassUID, ds.SOPInstanceUID, syntax)
    assert isinstance(sent, StoredDataSet)
    assert (sent.SOPClassUID, sent.SOPInstanceUID) == (ds.SOPClassUID, ds.SOPInstanceUID)
    encoded = pynetdicom_association.encode(
        sent, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated
    )
    assert encoded == data[meta_end(data, len(data)) :]


def test_another_encoding_is_made_from_the_parsed_data_set() -> None:
    data, ds = _stored("CT_small.dcm")  # explicit VR little endian
    sent = stored_data_set(data, ds.SOPClassUID, ds.SOPInstanceUID, ds.file_meta.TransferSyntaxUID)
    encoded = pynetdicom_association.encode(sent, True, True, False)
    again = pydicom.filereader.read_dataset(io.BytesIO(encoded), True, True)
    assert again.PatientName == ds.PatientName
    assert again.PixelData == ds.PixelData


def test_a_file_without_file_meta_is_refused() -> None:
    with pytest.raises(InvalidDicom):
        stored_data_set(b"\0" * 200, "1.2", "1.2.3", str(ImplicitVRLittleEndian))


def test_a_c_get_sends_the_stored_data_set_byte_for_byte(tmp_path: Path) -> None:
    scp = start_scp(tmp_path)
    try:
        ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
        study = new_uid()
        ds.StudyInstanceUID = study
        data = part10(ds)
        scp.stow([data])
        received: list[bytes] = []

        def on_store(event: Any) -> int:
            received.append(bytes(event.request.DataSet.getvalue()))
            return 0x0000

        ae = AE(ae_title="GETSCU")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        ae.add_requested_context(CTImageStorage, [str(ds.file_meta.TransferSyntaxUID)])
        assoc = ae.associate(
            "127.0.0.1",
            scp.port,
            ae_title=AE_TITLE,
            ext_neg=[build_role(CTImageStorage, scp_role=True)],
            evt_handlers=[(evt.EVT_C_STORE, on_store)],
        )
        assert assoc.is_established
        try:
            statuses = [
                int(status.Status)
                for status, _ in assoc.send_c_get(
                    query("STUDY", StudyInstanceUID=study), StudyRootQueryRetrieveInformationModelGet
                )
            ]
        finally:
            assoc.release()
        assert statuses[-1] == 0x0000
        assert received == [data[meta_end(data, len(data)) :]]
    finally:
        scp.close()
