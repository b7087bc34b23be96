"""pixels/transcode.py without a server: every bundled image file to Explicit VR Little Endian (pydicom's
pixels), the Part 10 structure produced (file meta, empty offset table, one fragment per frame, dropped
encapsulation attributes), the memory bound and 1-bit packing across frames."""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_fragments

from dicomd.index.types import StoredInstance
from dicomd.pixels import transcode
from dicomd.pixels.encode import EncodeError
from dicomd.pixels.frames import ImageDescription
from dicomd.pixels.service import PixelLimitError
from dicomd.pixels.syntaxes import is_decodable

from support.dicom_files import TEST_FILES, make_instance
from support.pixel_store import FileStore, put

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
RLE = "1.2.840.10008.1.2.5"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
LIMIT = 512 << 20


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path)


def produce(store: FileStore, inst: StoredInstance, target: str, limit: int = LIMIT) -> pydicom.Dataset:
    plan = transcode.plan(store, inst, target, limit)  # type: ignore[arg-type]
    data = b"".join(transcode.part10_chunks(store, plan))  # type: ignore[arg-type]
    assert data[:132] == b"\0" * 128 + b"DICM"
    return pydicom.dcmread(io.BytesIO(data))


def image_files() -> list[str]:
    """Every bundled file with pixel data pydicom itself can decode."""
    names = []
    for name in sorted(os.listdir(TEST_FILES)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(TEST_FILES / name)
                if "PixelData" not in ds or "TransferSyntaxUID" not in ds.file_meta:
                    continue
                ds.pixel_array  # noqa: B018 - decodable by pydicom?
        except Exception:  # not an image pydicom decodes: not a reference
            continue
        names.append(name)
    return names


IMAGE_FILES = image_files()


def test_the_bundled_files_cover_every_syntax_dicomd_decodes() -> None:
    syntaxes = {
        str(pydicom.dcmread(TEST_FILES / n, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        for n in IMAGE_FILES
    }
    for ts in (
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2.1.99",
        "1.2.840.10008.1.2.2",
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.5",
    ):
        assert ts in syntaxes


def test_decodable_syntaxes() -> None:
    for ts in (
        "1.2.840.10008.1.2.2",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.203",
    ):
        assert is_decodable(ts), ts
    for ts in ("1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.100", "1.2.3"):
        assert not is_decodable(ts), ts


@pytest.mark.parametrize("name", IMAGE_FILES)
def test_every_bundled_image_to_explicit_le(store: FileStore, name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        original = pydicom.dcmread(TEST_FILES / name)
        inst = put(store, (TEST_FILES / name).read_bytes())
        got = produce(store, inst, EXPLICIT_LE)
        assert got.file_meta.TransferSyntaxUID == EXPLICIT_LE
        assert got.file_meta.ImplementationClassUID == transcode.IMPLEMENTATION_CLASS_UID
        assert got.file_meta.MediaStorageSOPInstanceUID == original.SOPInstanceUID
        np.testing.assert_array_equal(got.pixel_array, original.pixel_array)


@pytest.mark.parametrize("target", [RLE, J2K_LOSSLESS, JPEG_LS_LOSSLESS, IMPLICIT_LE])
def test_multi_frame_to_each_lossless_target(store: FileStore, target: str) -> None:
    original = pydicom.dcmread(TEST_FILES / "SC_rgb_rle_16bit_2frame.dcm")
    inst = put(store, (TEST_FILES / "SC_rgb_rle_16bit_2frame.dcm").read_bytes())
    got = produce(store, inst, target)
    assert got.file_meta.TransferSyntaxUID == target
    np.testing.assert_array_equal(got.pixel_array, original.pixel_array)
    if target != IMPLICIT_LE:
        fragments = list(generate_fragments(got.PixelData))
        assert fragments[0] == b""  # an empty basic offset table
        assert len(fragments) == 1 + 2  # one fragment per frame


def test_ybr_values_are_kept_with_their_photometric_interpretation(store: FileStore) -> None:
    original = pydicom.dcmread(TEST_FILES / "SC_ybr_full_422_uncompressed.dcm")
    inst = put(store, (TEST_FILES / "SC_ybr_full_422_uncompressed.dcm").read_bytes())
    got = produce(store, inst, RLE)
    assert got.PhotometricInterpretation == "YBR_FULL"  # up-sampled, values untouched
    np.testing.assert_array_equal(got.pixel_array, original.pixel_array)


def test_encapsulation_attributes_are_dropped_and_lossy_marked(store: FileStore) -> None:
    ds = pydicom.dcmread(TEST_FILES / "SC_rgb_rle_2frame.dcm")
    ds.ExtendedOffsetTable = b"\0" * 16
    ds.ExtendedOffsetTableLengths = b"\0" * 16
    out = io.BytesIO()
    ds.save_as(out)
    inst = put(store, out.getvalue())
    got = produce(store, inst, JPEG_BASELINE)
    assert "ExtendedOffsetTable" not in got and "ExtendedOffsetTableLengths" not in got
    assert got.LossyImageCompression == "01"
    assert got.LossyImageCompressionMethod == "ISO_10918_1"
    assert got.PhotometricInterpretation == "YBR_FULL_422"
    lossless = produce(store, inst, EXPLICIT_LE)
    assert "LossyImageCompression" not in lossless


def test_lossy_source_stays_marked_lossy(store: FileStore) -> None:
    inst = put(store, (TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm").read_bytes())
    assert produce(store, inst, EXPLICIT_LE).LossyImageCompression == "01"


def test_memory_limit_and_unproducible_targets_are_refused_from_the_header(store: FileStore) -> None:
    inst = put(store, make_instance(rows=1024, columns=1024))
    with pytest.raises(PixelLimitError, match="pixel_memory_limit"):
        transcode.plan(store, inst, RLE, 1 << 20)  # type: ignore[arg-type]
    with pytest.raises(EncodeError, match=re.escape(JPEG_BASELINE)):
        transcode.plan(store, inst, JPEG_BASELINE, LIMIT)  # type: ignore[arg-type]
    with pytest.raises(EncodeError, match=r"1\.2\.840\.10008\.1\.2\.4\.70"):
        transcode.plan(store, inst, "1.2.840.10008.1.2.4.70", LIMIT)  # type: ignore[arg-type]


def test_instance_without_pixel_data(store: FileStore) -> None:
    original = pydicom.dcmread(TEST_FILES / "test-SR.dcm")
    inst = put(store, (TEST_FILES / "test-SR.dcm").read_bytes())
    for target in (IMPLICIT_LE, RLE):
        got = produce(store, inst, target)
        assert got.file_meta.TransferSyntaxUID == target
        assert got.ContentSequence == original.ContentSequence


def test_one_bit_frames_are_packed_across_byte_boundaries() -> None:
    header = pydicom.Dataset()
    header.Rows, header.Columns, header.NumberOfFrames = 5, 5, 3  # 25 bits a frame
    header.BitsAllocated, header.BitsStored, header.SamplesPerPixel = 1, 1, 1
    description = ImageDescription.of(header, "1.2.840.10008.1.2.5")
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 2, (5, 5), dtype=np.uint8) for _ in range(3)]
    length = transcode._native_length(description)
    data = b"".join(transcode._native_chunks(iter([(f, "MONOCHROME2") for f in frames]), description, length))
    assert len(data) == length == 10  # 75 bits -> 10 bytes, even
    bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")[:75]
    np.testing.assert_array_equal(bits, np.concatenate([f.reshape(-1) for f in frames]))
