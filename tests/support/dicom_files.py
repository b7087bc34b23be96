"""Part 10 files for tests, built with UIDs of the test's choosing, and the real-world files bundled with
pydicom. Needs nothing of dicomd, so the end-to-end tests can run against any server build.

- small, valid instances: `make_instance` (and `quietly_make`, `without`), sent as `multipart` bodies;
- large or crafted pixel data files (`image_dataset`, `write_part10`, `patterned`, ...): written to disk in
  pieces, never held in memory whole (tests/dicom/test_parser_frames.py, tests/e2e/test_pixel_bombs.py);
- `TEST_FILES`, `CHARSET_FILES`: pydicom's bundled files, read directly (never its download helpers)."""

from __future__ import annotations

import io
import os
import random
import secrets
import struct
import warnings
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    generate_uid,
)

PYDICOM_DATA = Path(os.path.dirname(pydicom.__file__)) / "data"
TEST_FILES = PYDICOM_DATA / "test_files"
CHARSET_FILES = PYDICOM_DATA / "charset_files"

DEFLATED = str(DeflatedExplicitVRLittleEndian)
EXPLICIT = str(ExplicitVRLittleEndian)


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


def quietly_make(**kwargs: object) -> bytes:
    """`make_instance` with pydicom's warnings about the invalid values asked for silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_instance(**kwargs)  # type: ignore[arg-type]


def without(raw: bytes, *keywords: str) -> bytes:
    """A Part 10 file like ``raw`` with the given data set attributes removed."""
    ds = pydicom.dcmread(io.BytesIO(raw))
    for keyword in keywords:
        delattr(ds, keyword)
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def multipart(
    parts: list[bytes], boundary: str = "dicomd-test-boundary", content_type: str = "application/dicom"
) -> tuple[bytes, str]:
    body = b""
    for part in parts:
        body += f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode() + part + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


# ---- large or crafted pixel data files -----------------------------------------------------------


def image_dataset(
    *, rows: int, columns: int, bits: int, frames: int | None = None, samples: int = 1, **attrs: Any
) -> Dataset:
    """An image's data set without Pixel Data (the caller appends it), with fresh UIDs."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = new_uid()
    ds.StudyInstanceUID = new_uid()
    ds.SeriesInstanceUID = new_uid()
    ds.PatientID = "BOMB-" + os.urandom(4).hex()
    ds.PatientName = "Bomb^Pixel"
    ds.Modality = "CT"
    ds.Rows = rows
    ds.Columns = columns
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if frames is not None:
        ds.NumberOfFrames = frames
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def part10_head(ds: Dataset, ts: str) -> tuple[bytes, bytes]:
    """(preamble + DICM + File Meta Information, the data set in Explicit VR Little Endian)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(ts)
    head = DicomBytesIO()
    head.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    body = DicomBytesIO()
    body.is_little_endian = True
    body.is_implicit_VR = False
    write_dataset(body, ds)
    return head.getvalue(), body.getvalue()


def long_element(tag: int, vr: bytes, length: int) -> bytes:
    """Header of an explicit VR element with a 4-byte length (OB, OW, SQ, ...)."""
    return struct.pack("<HH2sHL", tag >> 16, tag & 0xFFFF, vr, 0, length)


def write_part10(path: Path, ds: Dataset, ts: str, tail: Iterable[bytes]) -> int:
    """Write a Part 10 file: `ds`, then the raw data set bytes of `tail` (e.g. a Pixel Data element,
    in pieces), deflated when `ts` is the Deflated syntax. Returns the file's size."""
    head, body = part10_head(ds, ts)
    with open(path, "wb") as f:
        f.write(head)
        if ts == DEFLATED:
            z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
            f.write(z.compress(body))
            for piece in tail:
                f.write(z.compress(piece))
            f.write(z.flush())
        else:
            f.write(body)
            for piece in tail:
                f.write(piece)
    return path.stat().st_size


def patterned(length: int, seed: int = 1) -> Iterator[bytes]:
    """`length` bytes: 4 KiB of random bytes, then zeros with each 64 KiB block starting with its number
    (deflates ~800:1, yet an offset error shows), then 4 KiB of random bytes. In pieces of 1 MiB."""
    rng = random.Random(seed)
    edge = min(4096, length // 2)
    yield rng.randbytes(edge)
    middle = length - 2 * edge
    block = 0
    while middle > 0:
        piece = bytearray(min(1 << 20, middle))
        for at in range(0, len(piece) - 7, 1 << 16):
            piece[at : at + 8] = struct.pack("<Q", block + 1)
            block += 1
        middle -= len(piece)
        yield bytes(piece)
    yield rng.randbytes(edge)


def hashed(pieces: Iterable[bytes], digest: Any) -> Iterator[bytes]:
    for piece in pieces:
        digest.update(piece)
        yield piece


def read_quietly(source: Path | bytes) -> Dataset:
    """A file (or its bytes) read by pydicom without its warnings about real-world oddities."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(source) if isinstance(source, bytes) else source)


def rounds_by_sop(files: list[Path]) -> list[list[Path]]:
    """Files in rounds with one file per SOP Instance UID each (several bundled files are one image in
    several transfer syntaxes): store a round, check it, delete it before the next."""
    by_sop: dict[str, list[Path]] = {}
    for path in files:
        by_sop.setdefault(str(read_quietly(path).SOPInstanceUID), []).append(path)
    result: list[list[Path]] = []
    for group in by_sop.values():
        for i, path in enumerate(group):
            if len(result) <= i:
                result.append([])
            result[i].append(path)
    return result


def with_fresh_uids(name: str, patient_id: str) -> tuple[bytes, Dataset]:
    """A bundled file with fresh Study/Series/SOP Instance UIDs and this Patient ID, in its own transfer
    syntax (the pixel data keep their bytes): the file and its data set as read back."""
    ds = pydicom.dcmread(TEST_FILES / name)
    sop = new_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = new_uid(), new_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.PatientID = patient_id
    out = io.BytesIO()
    ds.save_as(out)
    data = out.getvalue()
    return data, pydicom.dcmread(io.BytesIO(data))
