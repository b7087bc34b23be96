"""pixels/frames.py: one frame decoded from its recorded byte ranges, as pydicom's pixel_array gives it:
multi-frame files, frames split over several fragments, a missing offset table, 1-bit frames, the error
cases, and a frame of a 2 GiB instance decoded without reading the rest of the file."""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.encaps import encapsulate, generate_frames

from dicomd.dicom.parser import parse_file
from dicomd.pixels.frames import ImageDescription, PixelDataError, decode_frame, read_frame_bytes
from dicomd.pixels.service import PixelLimitError

from support.dicom_files import TEST_FILES, image_dataset, long_element, part10_head
from support.pixel_store import FileStore, put, stored_instance

LIMIT = 512 << 20


class CountingFile(io.RawIOBase):
    """A stored object read by seek + read only (as a cloud object is), counting the bytes read."""

    def __init__(self, path: Path, counter: list[int]) -> None:
        self._f = open(path, "rb")  # noqa: SIM115 - closed with this object
        self._counter = counter

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def readinto(self, buffer: Any) -> int:
        data = self._f.read(len(buffer))
        buffer[: len(data)] = data
        self._counter[0] += len(data)
        return len(data)

    def close(self) -> None:
        self._f.close()
        super().close()


class CountingFileStore(FileStore):
    """Objects read by seek + read only (as a cloud object is), the bytes read counted."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.read = [0]

    def open_object(self, key: str, suffix: str = ".dcm") -> BinaryIO:
        return CountingFile(self.root / key, self.read)  # type: ignore[return-value]


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path)


@pytest.mark.parametrize(
    "name",
    [
        "examples_ybr_color.dcm",  # JPEG baseline 4:2:2, 30 frames: RGB as pydicom gives it
        "SC_rgb_rle_2frame.dcm",
        "SC_rgb_rle_32bit_2frame.dcm",
        "rtdose.dcm",  # implicit VR, 32-bit native, 15 frames
        "rtdose_rle.dcm",
        "JPEG2000.dcm",
        "image_dfl.dcm",  # deflated: ranges of the inflated data set
        "liver_1frame.dcm",  # 1-bit
    ],
)
def test_every_frame_is_pydicoms_frame(store: FileStore, name: str) -> None:
    original = pydicom.dcmread(TEST_FILES / name)
    inst = put(store, (TEST_FILES / name).read_bytes())
    count = int(original.get("NumberOfFrames") or 1)
    reference = original.pixel_array if count > 1 else original.pixel_array[np.newaxis]
    for n in range(1, count + 1):
        frame = decode_frame(store, inst, n, memory_limit=LIMIT)  # type: ignore[arg-type]
        np.testing.assert_array_equal(frame.pixels, reference[n - 1], err_msg=f"frame {n}")
        assert frame.description.number_of_frames == count
    assert frame.photometric == (
        "RGB" if original.SamplesPerPixel == 3 else original.PhotometricInterpretation
    )


def reencapsulated(name: str, fragments_per_frame: int, has_bot: bool) -> tuple[bytes, pydicom.Dataset]:
    ds = pydicom.dcmread(TEST_FILES / name)
    count = int(ds.get("NumberOfFrames") or 1)
    frames = list(generate_frames(ds.PixelData, number_of_frames=count))
    ds.PixelData = encapsulate(frames, fragments_per_frame=fragments_per_frame, has_bot=has_bot)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue(), ds


@pytest.mark.parametrize(
    ("name", "fragments", "has_bot"),
    [
        ("examples_ybr_color.dcm", 3, True),  # frames of several fragments, located by the offset table
        ("examples_ybr_color.dcm", 1, False),  # no offset table: one fragment per frame
        ("examples_ybr_color.dcm", 2, False),  # no offset table, several fragments: JPEG start markers
        ("JPEG2000.dcm", 4, False),  # a single frame in several fragments
    ],
)
def test_fragmented_frames_and_missing_offset_tables(
    store: FileStore, name: str, fragments: int, has_bot: bool
) -> None:
    data, ds = reencapsulated(name, fragments, has_bot)
    inst = put(store, data)
    count = int(ds.get("NumberOfFrames") or 1)
    reference = pydicom.dcmread(TEST_FILES / name).pixel_array
    reference = reference if count > 1 else reference[np.newaxis]
    for n in sorted({1, min(2, count), max(1, count // 2), count}):
        frame = decode_frame(store, inst, n, memory_limit=LIMIT)  # type: ignore[arg-type]
        np.testing.assert_array_equal(frame.pixels, reference[n - 1], err_msg=f"frame {n}")


def test_missing_frames_and_limits_are_clear_errors(store: FileStore) -> None:
    inst = put(store, (TEST_FILES / "SC_rgb_rle_2frame.dcm").read_bytes())
    with pytest.raises(PixelDataError, match="frame 3 does not exist"):
        read_frame_bytes(store, inst, 3)  # type: ignore[arg-type]
    with pytest.raises(PixelDataError, match="frame 0 does not exist"):
        read_frame_bytes(store, inst, 0)  # type: ignore[arg-type]
    with pytest.raises(PixelLimitError, match="pixel_memory_limit"):
        decode_frame(store, inst, 1, memory_limit=1000)  # type: ignore[arg-type]


def test_a_corrupt_bitstream_is_a_pixel_data_error(store: FileStore) -> None:
    ds = pydicom.dcmread(TEST_FILES / "JPEG2000.dcm")
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 64])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    out = io.BytesIO()
    ds.save_as(out)
    inst = put(store, out.getvalue())
    with pytest.raises(PixelDataError, match="cannot be decoded"):
        decode_frame(store, inst, 1, memory_limit=LIMIT)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({"Rows": None}, "no decodable image description"),
        ({"Rows": 0}, "no pixels"),
        ({"BitsAllocated": 12}, "Bits Allocated 12"),
        ({"SamplesPerPixel": 4}, "4 samples per pixel"),
    ],
)
def test_image_descriptions_that_cannot_be_decoded(attrs: dict[str, Any], message: str) -> None:
    header = Dataset()
    header.Rows, header.Columns, header.BitsAllocated, header.SamplesPerPixel = 4, 4, 16, 1
    for keyword, value in attrs.items():
        if value is None:
            delattr(header, keyword)
        else:
            setattr(header, keyword, value)
    with pytest.raises(PixelDataError, match=message):
        ImageDescription.of(header, "1.2.840.10008.1.2.1")


def test_a_frame_of_a_2_gib_instance_reads_only_that_frame(tmp_path: Path) -> None:
    rows = columns = 512
    frame_bytes = rows * columns * 2
    frames = (2 << 30) // frame_bytes  # 4096 frames: 2 GiB of pixel data
    ds = image_dataset(rows=rows, columns=columns, bits=16, frames=frames)
    head, body = part10_head(ds, "1.2.840.10008.1.2.1")
    path = tmp_path / "big"
    wanted = 3000
    pattern = (np.arange(rows * columns, dtype=np.uint16) * 7).reshape(rows, columns)
    with open(path, "wb") as f:
        f.write(head + body + long_element(0x7FE00010, b"OW", frames * frame_bytes))
        start = f.tell()
        f.truncate(start + frames * frame_bytes)  # sparse: no disk used for the other frames
        f.seek(start + (wanted - 1) * frame_bytes)
        f.write(pattern.tobytes())
    store = CountingFileStore(tmp_path)
    inst = stored_instance("big", parse_file(path), path.stat().st_size)
    frame = decode_frame(store, inst, wanted, memory_limit=LIMIT)  # type: ignore[arg-type]
    np.testing.assert_array_equal(frame.pixels, pattern)
    assert store.read[0] < frame_bytes + (1 << 20), store.read[0]  # the header and that frame only
    assert struct.unpack("<H", frame.pixels.tobytes()[2:4])[0] == 7
