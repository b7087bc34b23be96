"""The File Meta Information (group 0002) of a Part 10 file: where it ends and the data set starts."""

from __future__ import annotations

import mmap
import os
import struct
from typing import IO, Any

from .model import InvalidDicom
from .values import LONG_VRS, VR_FROM_BYTES

# group 0002 is explicit VR little endian (PS3.10 7.1)
# bytes read from the start of a remote object to find its File Meta Information's end (real ones are
# a few hundred bytes)
_REMOTE_META_READ = 1 << 16
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
    starts: after the File Meta Information. A local file is mapped; a cloud store's object (no file
    descriptor) is read by one ranged GET of its first bytes."""
    try:
        descriptor = f.fileno()
    except OSError:  # io.UnsupportedOperation
        return _remote_data_set_start(f)
    size = os.fstat(descriptor).st_size
    if size < 132:
        raise InvalidDicom("not a DICOM Part 10 file: shorter than preamble + 'DICM'")
    with mmap.mmap(descriptor, 0, access=mmap.ACCESS_READ) as mm:
        try:
            return meta_end(mm, size)
        except struct.error as exc:
            raise InvalidDicom(f"malformed File Meta Information: {exc}") from None


def _remote_data_set_start(f: IO[bytes]) -> int:
    size = f.seek(0, os.SEEK_END)
    f.seek(0)
    head = f.read(min(size, _REMOTE_META_READ))
    if len(head) < 132:
        raise InvalidDicom("not a DICOM Part 10 file: shorter than preamble + 'DICM'")
    too_long = InvalidDicom(f"File Meta Information longer than {_REMOTE_META_READ} bytes")
    try:
        end = meta_end(head, len(head))
    except struct.error as exc:
        raise InvalidDicom(f"malformed File Meta Information: {exc}") from None
    except InvalidDicom:
        if len(head) < size:  # an element runs past what was read
            raise too_long from None
        raise
    if end + 8 > len(head) and len(head) < size:  # group 0002 may go on beyond what was read
        raise too_long
    return end
