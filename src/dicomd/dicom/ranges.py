"""Byte ranges of a stored DICOM file (frames, bulk data), read in bounded pieces: by ``pread`` on a local
file, by ranged GETs on a cloud object, forwards through the inflated data set of a deflated instance."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import BinaryIO, Protocol

from dicomd.dicom.parser import InflatedReader
from dicomd.storage import ObjectStore

# frames and bulk data are read (or inflated) in pieces of at most this size: a 1 GiB frame costs a
# worker about this much memory, not the frame
RANGE_READ = 1 << 20


class Ranges(Protocol):
    def read(self, offset: int, length: int) -> Iterator[bytes]: ...

    def close(self) -> None: ...


def descriptor(f: BinaryIO) -> int:
    """The file's descriptor, or -1 for a file object without one (a cloud store's remote object)."""
    try:
        return f.fileno()
    except OSError:  # io.UnsupportedOperation
        return -1


class FileRanges:
    """Byte ranges of a stored file, read in pieces of at most RANGE_READ bytes. Owns `f`."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f

    def read(self, offset: int, length: int) -> Iterator[bytes]:
        fd = descriptor(self._f)
        while length > 0:
            if fd >= 0:
                piece = os.pread(fd, min(RANGE_READ, length), offset)
            else:  # a cloud object: each read is a ranged GET
                self._f.seek(offset)
                piece = self._f.read(min(RANGE_READ, length))
            if not piece:
                raise OSError(f"stored object ends before byte {offset} of a recorded range")
            offset += len(piece)
            length -= len(piece)
            yield piece

    def close(self) -> None:
        self._f.close()


class ForwardRanges:
    """A deflated instance's ranges (an InflatedReader), with the last bytes read kept: a range that
    starts among them (bit-packed frames share a byte with their neighbour) goes on forwards instead of
    inflating again from the data set's start."""

    _KEEP = 8

    def __init__(self, reader: Ranges) -> None:
        self._reader = reader
        self._end = 0  # where the last range read ended
        self._last = b""  # the bytes just before _end

    def read(self, offset: int, length: int) -> Iterator[bytes]:
        kept = self._end - len(self._last)
        if kept <= offset < self._end and length > 0:
            head = self._last[offset - kept :][:length]
            offset, length = offset + len(head), length - len(head)
            yield head
        if length <= 0:
            return
        if offset != self._end:
            self._last = b""
        for piece in self._reader.read(offset, length):
            offset += len(piece)
            self._end = offset
            self._last = (self._last + piece[-self._KEEP :])[-self._KEEP :]
            yield piece

    def close(self) -> None:
        self._reader.close()


def open_ranges(store: ObjectStore, object_key: str, deflated: bool) -> Ranges:
    """A stored instance's byte ranges: of the file, or of the inflated data set of a deflated instance
    (whose ranges were recorded there)."""
    f = store.open_object(object_key)
    if not deflated:
        return FileRanges(f)
    try:
        return ForwardRanges(InflatedReader(f, RANGE_READ))
    except BaseException:
        f.close()
        raise
