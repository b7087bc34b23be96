"""Builders of large or crafted pixel data files for the pixel data tests (test_parser_frames.py,
test_e2e_pixel_bombs.py): written to disk in pieces, never held in memory whole. Needs nothing of dicomd,
so the end-to-end tests can run against any server build."""

from __future__ import annotations

import os
import random
import struct
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from dicom_factory import new_uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import UID, CTImageStorage, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

DEFLATED = str(DeflatedExplicitVRLittleEndian)
EXPLICIT = str(ExplicitVRLittleEndian)


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
