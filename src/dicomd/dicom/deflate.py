"""Deflated Explicit VR Little Endian: the data set is inflated to an unnamed temporary file and parsed
from there, memory-mapped; byte ranges of its values are offsets into the inflated data set, which
`InflatedReader` inflates again as it serves them (a deflate stream has no random access)."""

from __future__ import annotations

import mmap
import tempfile
import zlib
from collections.abc import Iterator
from typing import IO, Any

from .meta import data_set_start
from .model import InvalidDicom
from .uids import DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN

# Deflated data sets are inflated to a temporary file; refuse anything bigger (zip bombs fill disks).
MAX_INFLATED = 512 * 1024 * 1024
# The inflate reads and writes pieces of this size: memory stays flat whatever the ratio (1:1000 for zeros)
_INFLATE_PIECE = 1 << 20

_DEFLATED_TS_BYTES = DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN.encode()


def may_be_deflated(data: bytes) -> bool:
    """Whether a Part 10 file may be in the Deflated transfer syntax, whose data set is inflated (up to
    MAX_INFLATED, to a temporary file): a look before parsing (a byte search, microseconds for a small
    file) that may say yes wrongly, never no wrongly (a file the parser would inflate names the UID)."""
    return _DEFLATED_TS_BYTES in data


class InflatedDataSet:
    """The inflated data set in an unnamed temporary file, memory-mapped (context manager: yields the
    map, its length and whether the deflate stream was complete; the file is gone when it exits)."""

    def __init__(self, buf: Any, start: int, size: int, temp_dir: str | None) -> None:
        self.buf, self.start, self.size, self.temp_dir = buf, start, size, temp_dir
        self.file: IO[bytes] | None = None
        self.map: mmap.mmap | None = None

    def __enter__(self) -> tuple[Any, int, bool]:
        try:
            # next to the parsed file, not in /tmp (often RAM); O_TMPFILE where the file system has it,
            # so that a crash leaves nothing behind
            self.file = tempfile.TemporaryFile(dir=self.temp_dir)
        except OSError:  # say, a read-only object store rebuilding metadata: the default location
            self.file = tempfile.TemporaryFile()
        try:
            length, complete = _inflate_into(self.buf, self.start, self.size, self.file)
            if not length:
                return b"", 0, complete
            self.map = mmap.mmap(self.file.fileno(), length, access=mmap.ACCESS_READ)
            return self.map, length, complete
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc: object) -> None:
        if self.map is not None:
            self.map.close()
            self.map = None
        if self.file is not None:
            self.file.close()
            self.file = None


def _inflate_into(buf: Any, start: int, size: int, out: IO[bytes]) -> tuple[int, bool]:
    """Inflate the deflate stream at buf[start:size] into `out` in bounded pieces: the inflated length,
    and whether the stream was complete."""
    d = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    pos = start
    data = b""
    try:
        while not d.eof:
            if not data:
                # b"" once the input is used up: zlib may still hold output (it reads input ahead)
                data = buf[pos : min(pos + _INFLATE_PIECE, size)]
                pos += len(data)
            fed = data
            piece = d.decompress(data, _INFLATE_PIECE)
            data = d.unconsumed_tail
            if not piece:
                if not fed:
                    break  # no input left and nothing held: the stream is cut short
                continue
            total += len(piece)
            if total > MAX_INFLATED:
                raise InvalidDicom(f"deflated data set inflates to more than {MAX_INFLATED} bytes")
            out.write(piece)
        out.flush()
    except zlib.error as exc:
        raise InvalidDicom(f"cannot inflate Deflated Explicit VR Little Endian data set: {exc}") from None
    return total, d.eof


class InflatedReader:
    """Byte ranges of a stored deflated data set (offsets into the inflated data set, as the parser
    records them), inflated on the fly from the file in pieces of at most `piece` bytes: memory stays
    bounded whatever the size of the value. Ranges read in increasing order share one pass; a range
    before the current position starts the inflate again from the data set's start. Owns `f`."""

    def __init__(self, f: IO[bytes], piece: int = _INFLATE_PIECE, start: int | None = None) -> None:
        self._f = f
        self._piece = piece
        # where the deflate stream starts: after the File Meta Information, unless given
        self._start = data_set_start(f) if start is None else start
        self._restart()

    def _restart(self) -> None:
        self._f.seek(self._start)
        self._d = zlib.decompressobj(-zlib.MAX_WBITS)
        self._pos = 0  # inflated bytes produced so far
        self._pending = b""  # compressed input not yet given to the decompressor

    def _inflate(self, limit: int) -> bytes:
        """Up to `limit` more inflated bytes; b"" at the end of the stream."""
        while not self._d.eof:
            # b"" at the end of the file: zlib may still hold output (it reads input ahead)
            fed = self._pending or self._f.read(self._piece)
            out = self._d.decompress(fed, limit)
            self._pending = self._d.unconsumed_tail
            if out:
                self._pos += len(out)
                return out
            if not fed:
                return b""  # no input left and nothing held: the stream is cut short
        return b""

    def read(self, offset: int, length: int) -> Iterator[bytes]:
        """The `length` bytes at `offset` of the inflated data set, in pieces."""
        if offset < self._pos:
            self._restart()
        while self._pos < offset:
            if not self._inflate(min(self._piece, offset - self._pos)):
                raise InvalidDicom(f"deflated data set ends before offset {offset}")
        while length > 0:
            out = self._inflate(min(self._piece, length))
            if not out:
                raise InvalidDicom(f"deflated data set ends {length} bytes before the end of a value")
            length -= len(out)
            yield out

    def close(self) -> None:
        self._f.close()
