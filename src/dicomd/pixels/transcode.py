"""A stored instance as a new Part 10 file in another transfer syntax, produced as a stream, frame by frame.

``plan`` checks, from the instance's header only (cached per worker), that the target can be produced and
that a frame fits in ``pixel_memory_limit``; ``part10_chunks`` then yields the file: preamble, file meta
(same SOP Instance UID, the new Transfer Syntax UID, dicomd's implementation UID), the data set without its
pixel data re-encoded in the target's encoding, and the pixel data: native targets as one element of known
length written frame after frame, encapsulated targets as an empty Basic Offset Table and one fragment per
frame. Memory holds one decoded frame and its encoding at a time (Explicit VR Big Endian sources, retired
and rare, are decoded whole, within the same limit).

Elements after the pixel data in the source (Data Set Trailing Padding, digital signatures, which no
longer hold once the pixels are re-encoded) are not copied. Lossy targets set Lossy Image Compression
"01", the ratio (of the first frame) and the method. An instance without pixel data is its data set
re-encoded, whatever the target: the compressed syntaxes only govern pixel data, and their data set
encoding is Explicit VR Little Endian.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Generator, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID

from dicomd.dicom.tags import PIXEL_DATA
from dicomd.dicom.uids import (
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    IMPLICIT_VR_LITTLE_ENDIAN,
)
from dicomd.index.types import StoredInstance
from dicomd.pixels.encode import EncodeError, check_encodable, decoded_photometric, encode_frame
from dicomd.pixels.frames import (
    ImageDescription,
    PixelDataError,
    bit_offset,
    decode_frame_bytes,
    open_instance_ranges,
    read_frames,
    read_header,
)
from dicomd.pixels.service import check_pixel_memory
from dicomd.pixels.syntaxes import ENCODABLE, NATIVE_PIXEL_SYNTAXES, NATIVE_TARGETS, is_decodable, syntax_name
from dicomd.storage import ObjectStore

_LOSSY_SOURCES = frozenset(
    {
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.93",
        "1.2.840.10008.1.2.4.203",
    }
)
# attributes that describe the stored encapsulation and would be wrong in the new file
_DROPPED = ("ExtendedOffsetTable", "ExtendedOffsetTableLengths")
_ITEM = b"\xfe\xff\x00\xe0"
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


@dataclass
class Plan:
    """What producing ``inst`` in ``target`` takes, checked up front."""

    inst: StoredInstance
    target: str
    header: Dataset
    description: ImageDescription | None  # None: no pixel data
    photometric: str = ""  # of the decoded pixels

    @property
    def stored_bytes_pass_through(self) -> bool:
        """Native little endian to Explicit VR Little Endian: the pixel bytes are copied, never decoded."""
        return (
            self.description is not None
            and self.target in NATIVE_TARGETS
            and self.inst.transfer_syntax_uid in NATIVE_PIXEL_SYNTAXES
            and self.inst.transfer_syntax_uid != EXPLICIT_VR_BIG_ENDIAN
        )


def plan(store: ObjectStore, inst: StoredInstance, target: str, memory_limit: int) -> Plan:
    """Check that ``inst`` can be produced in ``target``; raises EncodeError / PixelDataError (406) or
    PixelLimitError (406 naming the limit). Blocking (reads the header once): run it in the pixel pool."""
    if target not in ENCODABLE:
        raise EncodeError(f"dicomd cannot produce {syntax_name(target)}")
    header = read_header(store, inst)
    if PIXEL_DATA not in inst.bulk or "Rows" not in header:
        check_pixel_memory(inst.file_size, memory_limit, "re-encoding an instance without pixel data (whole)")
        return Plan(inst, target, header, None)
    source = inst.transfer_syntax_uid
    if not is_decodable(source):
        raise EncodeError(f"pixel data in {syntax_name(source)} cannot be decoded here")
    description = ImageDescription.of(header, source)
    photometric = _decoded_photometric(description)
    check_encodable(description, photometric, target)
    if source == EXPLICIT_VR_BIG_ENDIAN:
        check_pixel_memory(
            description.decoded_frame_bytes * description.number_of_frames * 2,
            memory_limit,
            f"transcoding an Explicit VR Big Endian instance of {description.number_of_frames} frame(s) "
            "(decoded whole)",
        )
    else:
        check_pixel_memory(
            description.decoded_frame_bytes * (1 if target in NATIVE_TARGETS else 2),
            memory_limit,
            f"transcoding a frame of {description.size}",
        )
    return Plan(inst, target, header, description, photometric)


def _decoded_photometric(description: ImageDescription) -> str:
    """The photometric interpretation of the pixels pydicom's decoders give without RGB conversion:
    JPEG 2000 colour-transformed data come out as RGB, YBR_FULL_422 data up-sampled (YBR_FULL)."""
    photometric = description.photometric_interpretation
    if description.samples_per_pixel == 3 and photometric in ("YBR_RCT", "YBR_ICT"):
        return "RGB"
    return decoded_photometric(photometric)


def part10_chunks(store: ObjectStore, plan: Plan) -> Generator[bytes]:
    """The instance as a Part 10 file in ``plan.target``, in chunks (one frame's worth at most, native
    pass-through in pieces of a read's size). Blocking: pull each chunk from the pixel pool."""
    if plan.description is None:
        yield _whole_data_set(store, plan)
        return
    if plan.target in NATIVE_TARGETS:
        yield from _native(store, plan)
    else:
        yield from _encapsulated(store, plan)


def _whole_data_set(store: ObjectStore, plan: Plan) -> bytes:
    with store.open_object(plan.inst.object_key) as f:
        try:
            ds = dcmread(f, force=True)
        except Exception as exc:  # pydicom raises many types on malformed input
            raise PixelDataError(f"the stored instance cannot be parsed ({type(exc).__name__})") from None
    return _head(ds, plan.target, {})


def _head(header: Dataset, target: str, attributes: dict[str, Any]) -> bytes:
    """Preamble, file meta and the data set (without pixel data) encoded for ``target``."""
    # a new element dict: the cached header (shared by requests and threads) stays untouched; elements
    # are replaced here, never changed in place, and raw ones decode with the source's encoding
    ds = Dataset()
    ds.update(header)
    implicit, little = header.original_encoding
    ds.set_original_encoding(implicit, little, header.original_character_set)
    # every value decoded now (VRs from the dictionary where the source had none, e.g. a file whose
    # meta says explicit VR but whose data set is implicit), so that they are encoded for the target
    ds.walk(lambda _ds, _elem: None)
    for keyword in (*_DROPPED, *attributes):
        if keyword in ds:
            delattr(ds, keyword)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = header.get("SOPClassUID", header.file_meta.get("MediaStorageSOPClassUID"))
    meta.MediaStorageSOPInstanceUID = header.get(
        "SOPInstanceUID", header.file_meta.get("MediaStorageSOPInstanceUID")
    )
    meta.TransferSyntaxUID = UID(target)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds.file_meta = meta
    out = io.BytesIO()
    try:
        dcmwrite(out, ds, enforce_file_format=True)
    except Exception as exc:  # a value pydicom cannot re-encode
        raise PixelDataError(f"the data set cannot be re-encoded ({type(exc).__name__})") from None
    return out.getvalue()


def _source_attributes(plan: Plan) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    if plan.inst.transfer_syntax_uid in _LOSSY_SOURCES:
        attributes["LossyImageCompression"] = "01"  # once lossy, always lossy (PS3.3 C.7.6.1.1.5)
    return attributes


def _element_header(target: str, vr: bytes, length: int) -> bytes:
    """The native Pixel Data element's header: explicit VR (OB/OW) or implicit VR (no VR)."""
    if target == IMPLICIT_VR_LITTLE_ENDIAN:
        return b"\xe0\x7f\x10\x00" + struct.pack("<I", length)
    return b"\xe0\x7f\x10\x00" + vr + b"\x00\x00" + struct.pack("<I", length)


def _native(store: ObjectStore, plan: Plan) -> Iterator[bytes]:
    """A native target (explicit or implicit VR little endian): the pixel data as one element of known
    length, the stored bytes when they are already little endian, else decoded frame by frame."""
    assert plan.description is not None
    d = plan.description
    vr = b"OW" if d.bits_allocated > 8 else b"OB"
    attributes = _source_attributes(plan)
    if plan.stored_bytes_pass_through:
        length, chunks = native_pixel_data(store, plan)
        yield _head(plan.header, plan.target, attributes) + _element_header(plan.target, vr, length)
        yield from chunks
        return
    length = _native_length(d)
    frames = _decoded_frames(store, plan)
    first = next(frames)  # decoded before the head is written: the photometric of its pixels
    attributes["PhotometricInterpretation"] = first[1]
    if d.samples_per_pixel == 3:
        attributes["PlanarConfiguration"] = 0
    yield _head(plan.header, plan.target, attributes) + _element_header(plan.target, vr, length)
    yield from _native_chunks(chain([first], frames), d, length)


def _encapsulated(store: ObjectStore, plan: Plan) -> Iterator[bytes]:
    """An encapsulated target: the head is written once the first frame is encoded (its attributes)."""
    assert plan.description is not None
    d = plan.description
    spec = ENCODABLE[plan.target]
    frames = _decoded_frames(store, plan)
    first = encode_frame(*next(frames), d, plan.target)
    attributes = _source_attributes(plan) | first.attributes
    if spec.lossy:
        attributes |= _lossy_attributes(plan.header, d, len(first.data), spec.method)
    yield (
        _head(plan.header, plan.target, attributes)
        + b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff"
        + _ITEM
        + b"\x00\x00\x00\x00"  # an empty Basic Offset Table: one fragment per frame makes it unneeded
        + _fragment(first.data)
    )
    for pixels, photometric in frames:
        yield _fragment(encode_frame(pixels, photometric, d, plan.target).data)
    yield _SEQUENCE_DELIMITER


def _fragment(data: bytes) -> bytes:
    padded = data + b"\x00" * (len(data) % 2)
    return _ITEM + struct.pack("<I", len(padded)) + padded


def _lossy_attributes(header: Dataset, d: ImageDescription, encoded: int, method: str) -> dict[str, Any]:
    ratio = f"{d.decoded_frame_bytes / max(encoded, 1):.2f}"[:16]
    ratios = [str(v) for v in _values(header.get("LossyImageCompressionRatio"))]
    methods = [str(v) for v in _values(header.get("LossyImageCompressionMethod"))]
    return {
        "LossyImageCompression": "01",
        "LossyImageCompressionRatio": [*ratios, ratio],
        "LossyImageCompressionMethod": [*methods, method],
    }


def _values(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, str | bytes | int | float):
        return [value]
    return list(value)


def _decoded_frames(
    store: ObjectStore, plan: Plan, numbers: Sequence[int] | None = None, *, as_rgb: bool = False
) -> Iterator[tuple[np.ndarray, str]]:
    """Frames ``numbers`` (1-based, default all; ascending for a deflated instance) decoded, with the
    photometric interpretation of their pixels, reading only those frames' bytes (one open of the stored
    object). YBR data keep their values (a transcoded file says which they are) unless ``as_rgb``."""
    assert plan.description is not None
    d = plan.description
    inst = plan.inst
    if inst.transfer_syntax_uid == EXPLICIT_VR_BIG_ENDIAN:
        frames = list(_big_endian_frames(store, plan, as_rgb))
        photometric = decoded_photometric(d.photometric_interpretation)
        if as_rgb and photometric.startswith("YBR"):
            photometric = "RGB"
        for number in numbers or range(1, len(frames) + 1):
            yield frames[number - 1], photometric
        return
    table = inst.frames
    if len(table) != d.number_of_frames:
        raise PixelDataError(
            f"the instance declares {d.number_of_frames} frame(s) but its pixel data hold {len(table)}"
        )
    numbers = numbers or range(1, len(table) + 1)
    with closing(read_frames(store, inst, numbers)) as stored:
        for data, number in zip(stored, numbers, strict=True):
            pixels, photometric = decode_frame_bytes(data, d, bit_offset(inst, number), as_rgb=as_rgb)
            yield pixels, decoded_photometric(photometric)


def frame_chunks(store: ObjectStore, plan: Plan, numbers: Sequence[int]) -> Generator[bytes]:
    """Frames ``numbers`` (1-based) in ``plan.target``, one item each: native little endian pixel bytes
    (1-bit frames packed from their first bit) or the frame's encoded bitstream."""
    assert plan.description is not None
    d = plan.description
    for pixels, photometric in _decoded_frames(store, plan, numbers, as_rgb=True):
        if plan.target == EXPLICIT_VR_LITTLE_ENDIAN:
            yield _native_bytes(pixels, d)
        else:
            yield encode_frame(pixels, photometric, d, plan.target).data


def _native_bytes(pixels: np.ndarray, d: ImageDescription) -> bytes:
    if d.bits_allocated == 1:
        return np.packbits(pixels.reshape(-1).astype(np.uint8), bitorder="little").tobytes()
    dtype = np.dtype(f"<{'i' if d.pixel_representation else 'u'}{d.bits_allocated // 8}")
    return pixels.astype(dtype, copy=False).tobytes()


def native_pixel_data(
    store: ObjectStore, plan: Plan, *, as_rgb: bool = False
) -> tuple[int, Generator[bytes]]:
    """The whole pixel data value in Explicit VR Little Endian (all frames, padded to even length): its
    length and its bytes in chunks of about a frame (``as_rgb``: YBR colour decoded to RGB)."""
    assert plan.description is not None
    d = plan.description
    inst = plan.inst
    if plan.stored_bytes_pass_through:
        offset, length = inst.bulk[PIXEL_DATA]
        return length, _stored_range(store, inst, offset, length)
    length = _native_length(d)
    return length, _native_chunks(_decoded_frames(store, plan, as_rgb=as_rgb), d, length)


def _native_length(d: ImageDescription) -> int:
    """Bytes of the whole native pixel data value, padded to even length."""
    pixels = d.rows * d.columns * d.samples_per_pixel * d.number_of_frames
    length = (pixels + 7) // 8 if d.bits_allocated == 1 else pixels * (d.bits_allocated // 8)
    return length + length % 2


def _stored_range(store: ObjectStore, inst: StoredInstance, offset: int, length: int) -> Generator[bytes]:
    ranges = open_instance_ranges(store, inst)
    try:
        yield from ranges.read(offset, length)
    finally:
        ranges.close()


def _native_chunks(
    frames: Iterator[tuple[np.ndarray, str]], d: ImageDescription, length: int
) -> Generator[bytes]:
    """Decoded frames as native little endian pixel data, ``length`` bytes in all."""
    written = 0
    carry = np.zeros(0, np.uint8)  # 1-bit frames share bytes: the bits not yet written
    for pixels, _photometric in frames:
        if d.bits_allocated == 1:
            bits = np.concatenate([carry, pixels.reshape(-1).astype(np.uint8)])
            whole = len(bits) - len(bits) % 8
            carry = bits[whole:]
            chunk = np.packbits(bits[:whole], bitorder="little").tobytes()
        else:
            chunk = _native_bytes(pixels, d)
        written += len(chunk)
        yield chunk
    tail = np.packbits(carry, bitorder="little").tobytes() if len(carry) else b""
    yield tail + b"\x00" * (length - written - len(tail))


def _big_endian_frames(store: ObjectStore, plan: Plan, as_rgb: bool) -> Iterator[np.ndarray]:
    """Explicit VR Big Endian (retired): pydicom decodes the whole pixel data (8-bit OW word swapping,
    1-bit data); plan() bounded its size."""
    with store.open_object(plan.inst.object_key) as f:
        try:
            ds = dcmread(f, force=True)
            ds.pixel_array_options(as_rgb=as_rgb)
            array = ds.pixel_array
        except Exception as exc:  # pydicom raises many types on malformed input
            raise PixelDataError(f"pixel data cannot be decoded ({type(exc).__name__})") from None
    assert plan.description is not None
    if plan.description.number_of_frames == 1:
        yield array
    else:
        yield from array


__all__ = ["EncodeError", "Plan", "frame_chunks", "native_pixel_data", "part10_chunks", "plan"]
