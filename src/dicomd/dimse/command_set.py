"""Command sets (group 0000, always implicit VR little endian: PS3.7 6.3.1): dicomd's own codec.

pynetdicom encodes every DIMSE message's command set with pydicom's ``write_dataset``, twice: once to
compute Command Group Length and once to send it. For a C-FIND answer or a C-MOVE sub-operation that is
~15% of the listener's CPU per message (profiled). ``install()``, called once in the listener process,
gives pynetdicom's ``dimse_messages`` module an ``encode`` that writes the elements of a command set
itself and hands anything else (another syntax, a VR or value it does not know) to pydicom's, the
reference it is tested against byte for byte. Only command sets go through that module's ``encode``
(identifiers and data sets are encoded elsewhere in pynetdicom). ``encode_command`` (with ``uid_value``,
``text_value``, ``us_value``) and ``decode_command`` are the codec of the direct paths (dimse/direct*.py).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import Any

import pynetdicom.dimse_messages as _dimse_messages
from pydicom.dataset import Dataset

ELEMENT = struct.Struct("<HHL")  # implicit VR little endian: group, element, value length
UID_PAD, TEXT_PAD = b"\x00", b" "
_US = struct.Struct("<H")
_UL = struct.Struct("<L")
_TEXT_PAD = {"UI": UID_PAD, "AE": TEXT_PAD, "CS": TEXT_PAD, "LO": TEXT_PAD, "SH": TEXT_PAD, "ST": TEXT_PAD}
_NUMBER_FORMAT = {"US": "H", "UL": "L", "SS": "h", "SL": "l"}


def element(number: int, value: bytes) -> bytes:
    """One command set element (group 0000) with its encoded value."""
    return ELEMENT.pack(0x0000, number, len(value)) + value


def padded(value: bytes, pad: bytes) -> bytes:
    """A text value padded to even length (UID_PAD for UI, TEXT_PAD for the other text VRs)."""
    return value + pad if len(value) % 2 else value


def uid_value(text: str) -> bytes:
    """A UI value of a command set (non-ASCII replaced, padded with NUL)."""
    return padded(text.encode("ascii", "replace"), UID_PAD)


def text_value(text: str) -> bytes:
    """An AE, CS or LO value of a command set (non-ASCII replaced, padded with a space)."""
    return padded(text.encode("ascii", "replace"), TEXT_PAD)


def us_value(number: int) -> bytes:
    return _US.pack(number)


def encode_command(elements: list[tuple[int, bytes]]) -> bytes:
    """A command set of (element number, encoded value) in ascending order, Command Group Length first."""
    body = b"".join(element(number, value) for number, value in elements)
    return element(0x0000, _UL.pack(len(body))) + body


def decode_command(data: bytes | memoryview) -> dict[int, bytes] | None:
    """A command set (implicit VR little endian, group 0000 only) as element number -> value; None when
    it does not decode."""
    fields: dict[int, bytes] = {}
    position, end = 0, len(data)
    while position < end:
        if position + ELEMENT.size > end:
            return None
        group, number, length = ELEMENT.unpack_from(data, position)
        position += ELEMENT.size
        if group != 0x0000 or position + length > end:
            return None
        fields[number] = bytes(data[position : position + length])
        position += length
    return fields


def _values(value: Any) -> list[Any] | None:
    if value is None or value == "":
        return []
    if isinstance(value, str | int):
        return [value]
    if isinstance(value, Iterable) and not isinstance(value, bytes):
        return list(value)
    return None


def _encode_value(vr: str, value: Any) -> bytes | None:
    values = _values(value)
    if values is None:
        return None
    if not values:
        return b""
    pad = _TEXT_PAD.get(vr)
    if pad is not None:
        if not all(isinstance(v, str) for v in values):
            return None
        try:
            return padded("\\".join(values).encode("ascii"), pad)
        except UnicodeEncodeError:
            return None  # pydicom's character set handling decides
    number = _NUMBER_FORMAT.get(vr)
    if number is not None:
        if not all(type(v) is int for v in values):  # (bool, IntEnum and others: pydicom decides)
            return None
        try:
            return struct.pack(f"<{len(values)}{number}", *values)
        except struct.error:
            return None  # out of range: pydicom raises its own error
    if vr == "AT":
        if not all(isinstance(v, int) and 0 <= v <= 0xFFFFFFFF for v in values):
            return None
        return b"".join(struct.pack("<HH", v >> 16, v & 0xFFFF) for v in values)
    return None


def encode_command_set(ds: Dataset) -> bytes | None:
    """A command set as implicit VR little endian, as pydicom writes it; None when it is not one this
    encoder knows (pydicom then encodes it)."""
    parts = []
    for elem in ds:  # in ascending tag order, as pydicom writes them
        if elem.tag >> 16 != 0x0000:
            return None
        encoded = _encode_value(elem.VR, elem.value)
        if encoded is None:
            return None
        parts.append(element(elem.tag & 0xFFFF, encoded))
    return b"".join(parts)


def _with_fast_command_sets(
    original: Callable[..., bytes | None],
) -> Callable[..., bytes | None]:
    def encode(
        ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False
    ) -> bytes | None:
        if is_implicit_vr and is_little_endian and not deflated:
            encoded = encode_command_set(ds)
            if encoded is not None:
                return encoded
        return original(ds, is_implicit_vr, is_little_endian, deflated)

    encode.fast_command_sets = True  # type: ignore[attr-defined]
    return encode


def install() -> None:
    """Use the fast command set encoder in pynetdicom's DIMSE messages (once per process)."""
    if not getattr(_dimse_messages.encode, "fast_command_sets", False):
        _dimse_messages.encode = _with_fast_command_sets(_dimse_messages.encode)  # type: ignore[assignment]
