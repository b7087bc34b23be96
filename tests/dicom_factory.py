"""Builds small, valid DICOM Part 10 files for tests, with UIDs of the test's choosing."""

from __future__ import annotations

import io
import secrets
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def new_uid() -> str:
    return generate_uid(prefix="1.2.826.0.1.3680043.10.1234.")


def make_instance(
    *,
    study: str | None = None,
    series: str | None = None,
    sop: str | None = None,
    patient_id: str = "PAT-1",
    patient_name: str = "Doe^John",
    modality: str = "CT",
    rows: int = 8,
    columns: int = 8,
    frames: int = 1,
    **attrs: Any,
) -> bytes:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop or new_uid()
    ds.StudyInstanceUID = study or new_uid()
    ds.SeriesInstanceUID = series or new_uid()
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20240102"
    ds.StudyTime = "101112"
    ds.AccessionNumber = "ACC" + secrets.token_hex(3)
    ds.StudyID = "1"
    ds.StudyDescription = "Test study"
    ds.ReferringPhysicianName = "Ref^Doctor"
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Rows = rows
    ds.Columns = columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    pixels = (np.arange(rows * columns * frames, dtype=np.uint16) % 4096).reshape(frames, rows, columns)
    ds.PixelData = pixels.tobytes()
    for keyword, value in attrs.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def multipart(
    parts: list[bytes], boundary: str = "dicomd-test-boundary", content_type: str = "application/dicom"
) -> tuple[bytes, str]:
    body = b""
    for part in parts:
        body += f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode() + part + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'
