"""The File Meta Information (group 0002) of a Part 10 file: where it ends and the data set starts."""

from __future__ import annotations

import mmap
import os
import struct
from typing import IO, Any

from .model import InvalidDicom
from .values import LONG_VRS, VR_FROM_BYTES

# group 0002 is explicit VR little endian (PS3.10 7.1)
_U16 = struct.Struct("<H").unpack_from
_U32 = struct.Struct("<L").unpack_from


def meta_end(buf: Any, size: int) -> int:
    """Offset of the data set: the File Meta Information ends at the first other group."""
    pos = end = 132
    while end + 8 <= size and _U16(buf, end)[0] == 0x0002:
        end = _skip_element(buf, end, size)
    if end == pos:
        raise InvalidDicom("no File Meta Information (group 0002) after the 'DICM' prefix")
    return end


def _skip_element(buf: Any, pos: int, size: int) -> int:
    vrb = bytes(buf[pos + 4 : pos + 6])
    if vrb in VR_FROM_BYTES:
        if VR_FROM_BYTES[vrb] in LONG_VRS:
            if pos + 12 > size:
                raise InvalidDicom("truncated File Meta Information")
            nxt = pos + 12 + _U32(buf, pos + 8)[0]
        else:
            nxt = pos + 8 + _U16(buf, pos + 6)[0]
    else:
        nxt = pos + 8 + _U32(buf, pos + 4)[0]  # implicit VR meta (non-conformant writers)
    if nxt > size:
        raise InvalidDicom("File Meta Information element runs past the end of the file")
    return nxt


def data_set_start(f: IO[bytes]) -> int:
    """Offset in a stored Part 10 file where its data set (for a deflated file, the deflate stream)
    starts: after the File Meta Information."""
    size = os.fstat(f.fileno()).st_size
    if size < 132:
        raise InvalidDicom("not a DICOM Part 10 file: shorter than preamble + 'DICM'")
    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        try:
            return meta_end(mm, size)
        except struct.error as exc:
            raise InvalidDicom(f"malformed File Meta Information: {exc}") from None
