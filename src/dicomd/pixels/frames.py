"""One frame of a stored instance, decoded: its bytes are read from the recorded byte ranges (never the
rest of the file) and decoded by pydicom's pixel decoders (the codec wheels), as pydicom's ``pixel_array``
would give that frame."""

from __future__ import annotations

import io
from collections import OrderedDict
from collections.abc import Generator, Sequence
from contextlib import closing
from dataclasses import dataclass
from threading import Lock
from typing import Any

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID

from dicomd.dicom.model import NativeFrames
from dicomd.dicom.ranges import Ranges, open_ranges
from dicomd.dicom.tags import PIXEL_DATA
from dicomd.dicom.uids import DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
from dicomd.index.types import StoredInstance
from dicomd.pixels import codec_processes
from dicomd.pixels.service import check_pixel_memory
from dicomd.storage import ObjectStore

_HEADERS = 256  # data sets (without pixel data) kept per worker: a viewer asks for a series frame by frame


class PixelDataError(ValueError):
    """The instance's pixel data cannot be decoded (no image, an unsupported or malformed encoding)."""


@dataclass(frozen=True)
class ImageDescription:
    """The Image Pixel module attributes a decoder needs, from the instance's data set."""

    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric_interpretation: str
    planar_configuration: int
    number_of_frames: int
    transfer_syntax_uid: str

    @classmethod
    def of(cls, header: Dataset, transfer_syntax_uid: str) -> ImageDescription:
        try:
            rows, columns = int(header.Rows), int(header.Columns)
            bits_allocated = int(header.BitsAllocated)
            description = cls(
                rows=rows,
                columns=columns,
                samples_per_pixel=int(header.get("SamplesPerPixel", 1) or 1),
                bits_allocated=bits_allocated,
                bits_stored=int(header.get("BitsStored", bits_allocated) or bits_allocated),
                pixel_representation=int(header.get("PixelRepresentation", 0) or 0),
                photometric_interpretation=str(
                    header.get("PhotometricInterpretation", "MONOCHROME2")
                ).strip(),
                planar_configuration=int(header.get("PlanarConfiguration", 0) or 0),
                number_of_frames=int(header.get("NumberOfFrames", 1) or 1),
                transfer_syntax_uid=transfer_syntax_uid,
            )
        except (AttributeError, TypeError, ValueError) as exc:
            raise PixelDataError(f"the instance has no decodable image description ({exc})") from None
        if min(rows, columns, description.samples_per_pixel, description.number_of_frames) < 1:
            raise PixelDataError("the instance's image has no pixels (Rows, Columns or frames are 0)")
        if bits_allocated not in (1, 8, 16, 32, 64) or description.samples_per_pixel not in (1, 3):
            raise PixelDataError(
                f"Bits Allocated {bits_allocated} with {description.samples_per_pixel} samples per pixel "
                "cannot be decoded"
            )
        return description

    @property
    def size(self) -> str:
        """The frame's size for messages: "512x512x3 pixels"."""
        return f"{self.rows}x{self.columns}x{self.samples_per_pixel} pixels"

    @property
    def decoded_frame_bytes(self) -> int:
        """Bytes of one decoded frame in memory (1-bit pixels are unpacked to a byte each)."""
        return self.rows * self.columns * self.samples_per_pixel * max(1, self.bits_allocated // 8)

    @property
    def decoder_options(self) -> dict[str, Any]:
        """pydicom's decoder options for one frame of this image."""
        return {
            "rows": self.rows,
            "columns": self.columns,
            "samples_per_pixel": self.samples_per_pixel,
            "bits_allocated": self.bits_allocated,
            "bits_stored": self.bits_stored,
            "pixel_representation": self.pixel_representation,
            "photometric_interpretation": self.photometric_interpretation,
            "planar_configuration": self.planar_configuration,
            "number_of_frames": 1,
            "pixel_keyword": "PixelData",
        }


@dataclass(frozen=True)
class DecodedFrame:
    """A frame's pixels as pydicom's ``pixel_array`` gives them: (rows, columns) or (rows, columns,
    samples); ``photometric`` is their photometric interpretation (RGB after a YBR JPEG was converted)."""

    pixels: np.ndarray
    photometric: str
    header: Dataset  # the instance's data set without pixel data: window, LUTs, rescale, ...
    description: ImageDescription


class _HeaderCache:
    """Data sets without pixel data by object key (unique per stored version: never stale)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[str, Dataset] = OrderedDict()
        self._lock = Lock()  # pixel work runs in several threads

    def get(self, key: str) -> Dataset | None:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
            return found

    def put(self, key: str, header: Dataset) -> None:
        with self._lock:
            self._entries[key] = header
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)


_HEADER_CACHE = _HeaderCache(_HEADERS)


def read_header(store: ObjectStore, inst: StoredInstance) -> Dataset:
    """The instance's data set up to its pixel data (file meta in ``file_meta``); the pixel data are not
    read (a cloud object is read by ranged GETs as far as the pixel data's header)."""
    header = _HEADER_CACHE.get(inst.object_key)
    if header is None:
        pixel_data = inst.bulk.get(PIXEL_DATA)
        with store.open_object(inst.object_key) as f:
            try:
                if pixel_data is not None and inst.transfer_syntax_uid != DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
                    # everything before the pixel data's value in one read (one ranged GET on a cloud
                    # store, where pydicom's many small reads would each be a request)
                    head = io.BytesIO(f.read(pixel_data[0]))
                    header = dcmread(head, stop_before_pixels=True, force=True)
                else:
                    header = dcmread(f, stop_before_pixels=True, force=True)
            except Exception as exc:  # pydicom raises many types on malformed input
                raise PixelDataError(f"the stored instance cannot be parsed ({type(exc).__name__})") from None
        _HEADER_CACHE.put(inst.object_key, header)
    return header


def describe(store: ObjectStore, inst: StoredInstance) -> tuple[Dataset, ImageDescription]:
    header = read_header(store, inst)
    return header, ImageDescription.of(header, inst.transfer_syntax_uid)


def open_instance_ranges(store: ObjectStore, inst: StoredInstance) -> Ranges:
    """The byte ranges recorded at ingest of ``inst``: of its file, or of a deflated instance's inflated
    data set."""
    return open_ranges(store, inst.object_key, inst.transfer_syntax_uid == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)


def read_frames(store: ObjectStore, inst: StoredInstance, numbers: Sequence[int]) -> Generator[bytes]:
    """The stored bytes of frames ``numbers`` (1-based; ascending for a deflated instance), one open of
    the stored object: each its compressed bitstream (fragments joined), or the native frame's bytes (for
    1-bit data: the enclosing bytes; see NativeFrames)."""
    table = inst.frames
    for number in numbers:
        if not 1 <= number <= len(table):
            raise PixelDataError(f"frame {number} does not exist: the instance has {len(table)} frame(s)")
    ranges = open_instance_ranges(store, inst)
    try:
        for number in numbers:
            yield b"".join(
                piece for offset, length in table[number - 1] for piece in ranges.read(offset, length)
            )
    finally:
        ranges.close()


def read_frame_bytes(store: ObjectStore, inst: StoredInstance, number: int) -> bytes:
    """The stored bytes of frame ``number`` (1-based); see read_frames."""
    return b"".join(read_frames(store, inst, [number]))


def decode_frames(
    store: ObjectStore, inst: StoredInstance, numbers: Sequence[int], *, memory_limit: int
) -> Generator[DecodedFrame]:
    """Frames ``numbers`` (1-based) decoded, the header described and the stored object opened once.
    Blocking (file reads, codecs): run it in the pixel pool. Raises PixelDataError, or
    pixels.service.PixelLimitError when one frame needs more than ``memory_limit``."""
    header, description = describe(store, inst)
    check_pixel_memory(description.decoded_frame_bytes, memory_limit, f"a frame of {description.size}")
    with closing(read_frames(store, inst, numbers)) as stored:
        for data, number in zip(stored, numbers, strict=True):
            pixels, photometric = decode_frame_bytes(data, description, bit_offset(inst, number))
            yield DecodedFrame(pixels, photometric, header, description)


def decode_frame(store: ObjectStore, inst: StoredInstance, number: int, *, memory_limit: int) -> DecodedFrame:
    """Frame ``number`` (1-based) decoded; see decode_frames."""
    with closing(decode_frames(store, inst, [number], memory_limit=memory_limit)) as frames:
        return next(frames)


def bit_offset(inst: StoredInstance, number: int) -> int:
    """Where a 1-bit native frame starts within its first byte."""
    table = inst.frames
    if isinstance(table, NativeFrames):
        return ((number - 1) * table.frame_bits) % 8
    return 0


def decode_frame_bytes(
    data: bytes, description: ImageDescription, bit_offset: int = 0, *, as_rgb: bool = True
) -> tuple[np.ndarray, str]:
    """One frame's stored bytes decoded: (pixels, their photometric interpretation). ``as_rgb``: YBR
    colour data converted to RGB (for display); without, they keep their values (for transcoding).
    A compressed frame is decoded in a codec process (pixels/codec_processes.py)."""
    if not UID(description.transfer_syntax_uid).is_encapsulated:  # a copy or a byte swap: no codec
        return _decode(data, description, bit_offset, as_rgb)
    try:
        return codec_processes.run(_decode, data, description, bit_offset, as_rgb)
    except codec_processes.CodecCrashed as exc:
        raise PixelDataError(f"frame cannot be decoded ({exc})") from None


def _decode(
    data: bytes, description: ImageDescription, bit_offset: int, as_rgb: bool
) -> tuple[np.ndarray, str]:
    syntax = UID(description.transfer_syntax_uid)
    if syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:  # ranges were read from the inflated data set
        syntax = UID("1.2.840.10008.1.2.1")
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise PixelDataError(f"no decoder for transfer syntax {syntax}") from None
    if not decoder.is_available:
        raise PixelDataError(f"the decoder for transfer syntax {syntax} is not installed")
    options = description.decoder_options | {"as_rgb": as_rgb}
    if syntax.is_encapsulated:
        source: bytes = encapsulate([data])
    elif description.bits_allocated == 1 and bit_offset:
        bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
        count = description.rows * description.columns * description.samples_per_pixel
        source = np.packbits(bits[bit_offset : bit_offset + count], bitorder="little").tobytes()
    else:
        source = data
    try:
        pixels, meta = decoder.as_array(source, **options)
    except Exception as exc:  # the codecs raise many types on malformed bitstreams
        raise PixelDataError(f"frame cannot be decoded ({type(exc).__name__}: {exc})"[:300]) from None
    return pixels, str(meta.get("photometric_interpretation") or description.photometric_interpretation)
