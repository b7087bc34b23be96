"""Streaming multipart/related (RFC 2046 / RFC 2387) reader and writer.

The reader is built for STOW-RS bodies of several GB: it never holds more than one
incoming chunk plus a small tail in memory, searches for the delimiter with
``bytes.find`` and hands out large slices, so a part can be written to disk as it
arrives.  Errors that concern one part (bad headers, stream ending inside it) are
reported on that part so the caller can fail it and carry on with the others.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import AsyncIterable, AsyncIterator

__all__ = [
    "MAX_HEADER_BYTES",
    "MultipartError",
    "Part",
    "closing",
    "iter_parts",
    "multipart_stream",
    "new_boundary",
    "parse_content_type",
    "part_header",
    "split_header_list",
]

CRLF = b"\r\n"
#: Limit on the header block of a single part (all header lines together).
MAX_HEADER_BYTES = 16 * 1024
# Transport padding after a boundary is normally empty; cap it so a hostile client
# cannot make us buffer an endless line.
_MAX_PADDING = 1024
# Epilogue after the close delimiter is discarded; stop reading after this much so a
# client cannot keep the handler busy forever.
_MAX_EPILOGUE = 1024 * 1024


class MultipartError(Exception):
    """Malformed or truncated multipart body."""


class _EndOfStream(MultipartError):
    """The stream ended before the next delimiter (internal)."""


# --------------------------------------------------------------------------- header values


def split_header_list(value: str, sep: str) -> list[str]:
    """Split ``value`` on ``sep`` outside double-quoted strings (backslash escapes honoured)."""
    if '"' not in value:  # no quoted string (escapes count only inside one): a plain split
        return value.split(sep)
    items: list[str] = []
    current: list[str] = []
    in_quotes = False
    escaped = False
    for ch in value:
        if escaped:
            current.append(ch)
            escaped = False
        elif in_quotes and ch == "\\":
            current.append(ch)
            escaped = True
        elif ch == '"':
            current.append(ch)
            in_quotes = not in_quotes
        elif ch == sep and not in_quotes:
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    items.append("".join(current))
    return items


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        out: list[str] = []
        escaped = False
        for ch in value[1:-1]:
            if escaped:
                out.append(ch)
                escaped = False
            elif ch == "\\":
                escaped = True
            else:
                out.append(ch)
        return "".join(out)
    # Unbalanced quote as some clients send (e.g. `type="application/dicom`): drop it.
    return value.strip('"')


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """Parse a Content-Type (or one Accept element) into ``(media_type, params)``.

    The media type and parameter names are lower-cased; values are unquoted but keep
    their case (boundaries are case-sensitive).  Parameters without ``=`` are ignored
    and the first occurrence of a duplicated parameter wins.
    """
    if len(value) > _CACHED_VALUE_MAX:
        return _parse_content_type(value)
    media_type, params = _parse_content_type_cached(value)
    return media_type, dict(params)  # a copy: callers may change theirs


# A client sends the same few header values request after request: each is parsed once (a bounded
# cache of short values; a hostile variety of values only evicts).
_CACHED_VALUE_MAX = 512


@functools.lru_cache(maxsize=256)
def _parse_content_type_cached(value: str) -> tuple[str, dict[str, str]]:
    return _parse_content_type(value)  # its dict never leaves: parse_content_type copies it


def _parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    pieces = split_header_list(value, ";")
    media_type = pieces[0].strip().lower()
    params: dict[str, str] = {}
    for piece in pieces[1:]:
        name, eq, raw = piece.partition("=")
        name = name.strip().lower()
        if not eq or not name:
            continue
        params.setdefault(name, _unquote(raw))
    return media_type, params


# --------------------------------------------------------------------------- reader


class Part:
    """One body part.  Consume it with :meth:`stream` or :meth:`read`.

    ``error`` is set when the part's headers were unusable; consuming the body then
    raises it (the reader still skips to the next part).
    """

    def __init__(
        self, reader: _Reader, index: int, headers: dict[str, str], error: MultipartError | None
    ) -> None:
        self._reader = reader
        self.index = index
        self.headers = headers
        self.error = error
        self._started = False

    @property
    def content_type(self) -> str | None:
        """The raw Content-Type header value of the part, if any."""
        return self.headers.get("content-type")

    @property
    def media_type(self) -> str | None:
        """Lower-cased media type of the part without parameters, if any."""
        ct = self.content_type
        return parse_content_type(ct)[0] if ct is not None else None

    async def stream(self) -> AsyncIterator[bytes]:
        """Yield the body in chunks; raises :class:`MultipartError` if it is truncated."""
        if self._started:
            raise MultipartError(f"part {self.index}: body already consumed")
        self._started = True
        if self.error is not None:
            raise self.error
        async for chunk in self._reader.body(self):
            yield chunk

    async def read(self, max_size: int | None = None) -> bytes:
        """Read the whole body into memory (for small parts only)."""
        buf = bytearray()
        async for chunk in self.stream():
            buf += chunk
            if max_size is not None and len(buf) > max_size:
                raise MultipartError(f"part {self.index}: larger than {max_size} bytes")
        return bytes(buf)


class _Reader:
    """Parser state shared between the part iterator and the body of the current part.

    Invariant: ``self._buf`` holds the received-but-unconsumed bytes, and is up to date
    at every ``yield`` so an abandoned body generator leaves a consistent state that
    :meth:`_skip` can continue from.
    """

    def __init__(self, chunks: AsyncIterable[bytes], boundary: str) -> None:
        if not boundary or "\r" in boundary or "\n" in boundary:
            raise MultipartError("invalid multipart boundary")
        self._chunks = aiter(chunks)
        self._delim = b"\r\n--" + boundary.encode("latin-1")
        # Keep this many bytes back when no delimiter was found: a delimiter may start there.
        self._keep = len(self._delim) - 1
        # A virtual CRLF lets the first boundary line (which needs no CRLF) match the same
        # delimiter pattern as the others; the preamble it prefixes is discarded anyway.
        self._buf = CRLF
        self._eof = False
        self._current: Part | None = None
        self._current_done = True
        self._truncation_reported = False

    async def _fill(self) -> bool:
        """Append the next non-empty chunk to the buffer; False at end of stream."""
        if self._eof:
            return False
        async for chunk in self._chunks:
            if chunk:
                self._buf = self._buf + bytes(chunk) if self._buf else bytes(chunk)
                return True
        self._eof = True
        return False

    async def _scan(self) -> AsyncIterator[bytes]:
        """Yield data up to the next delimiter and leave the buffer at the delimiter.

        Raises MultipartError if the stream ends first.
        """
        delim, keep = self._delim, self._keep
        while True:
            buf = self._buf
            idx = buf.find(delim)
            if idx >= 0:
                self._buf = buf[idx:]
                if idx:
                    yield buf[:idx]
                return
            if len(buf) > keep:
                # Everything but the last `keep` bytes can not be part of a delimiter.
                self._buf = buf[len(buf) - keep :]
                yield buf[: len(buf) - keep]
            if not await self._fill():
                raise _EndOfStream("stream ended before the next boundary")

    async def body(self, part: Part) -> AsyncIterator[bytes]:
        if self._current is not part:
            raise MultipartError(f"part {part.index}: read after the next part was requested")
        try:
            async for chunk in self._scan():
                yield chunk
                # Checked on resumption: the reader may have moved on while we were suspended.
                if self._current is not part:
                    raise MultipartError(f"part {part.index}: read after the next part was requested")
        except _EndOfStream:
            self._truncation_reported = True
            raise MultipartError(f"truncated part {part.index}: stream ended inside the part") from None
        self._current_done = True

    async def _skip(self) -> None:
        async for _ in self._scan():
            pass

    async def _need(self, n: int) -> bool:
        while len(self._buf) < n:
            if not await self._fill():
                return False
        return True

    async def _after_delimiter(self) -> bool:
        """Consume the delimiter line at the buffer start; False if it was the close one."""
        pos = len(self._delim)
        if not await self._need(pos + 2):
            # Delimiter at the very end without "--": the last part is complete, accept it.
            self._buf = b""
            return False
        if self._buf[pos : pos + 2] == b"--":
            self._buf = b""
            return False
        # Transport padding (LWSP) then CRLF; a bare LF is tolerated.
        while True:
            buf = self._buf
            i = pos
            while i < len(buf) and buf[i] in b" \t":
                i += 1
            if i - pos > _MAX_PADDING:
                raise MultipartError("malformed multipart boundary line")
            if i < len(buf):
                if buf.startswith(CRLF, i):
                    self._buf = buf[i + 2 :]
                    return True
                if buf[i] == 0x0A:
                    self._buf = buf[i + 1 :]
                    return True
                if buf[i] != 0x0D or i + 1 < len(buf):
                    raise MultipartError("malformed multipart boundary line")
            if not await self._fill():
                # Padding then end of stream: same leniency as above.
                self._buf = b""
                return False

    async def _read_headers(self, index: int) -> tuple[dict[str, str], MultipartError | None]:
        """Parse the part's header block; on error the buffer is left at the part start."""
        while True:
            buf = self._buf
            if buf.startswith(CRLF):
                self._buf = buf[2:]
                return {}, None
            end = buf.find(b"\r\n\r\n", 0, MAX_HEADER_BYTES + 4)
            if end >= 0:
                break
            if buf.find(self._delim, 0, MAX_HEADER_BYTES + 4) >= 0:
                return {}, MultipartError(f"part {index}: headers not terminated by an empty line")
            if len(buf) > MAX_HEADER_BYTES + 4:
                return {}, MultipartError(f"part {index}: headers longer than {MAX_HEADER_BYTES} bytes")
            if not await self._fill():
                self._truncation_reported = True
                return {}, MultipartError(f"truncated part {index}: stream ended inside the headers")
        block = buf[:end]
        if self._delim in block:
            return {}, MultipartError(f"part {index}: headers not terminated by an empty line")
        headers: dict[str, str] = {}
        last: str | None = None
        for raw in block.split(CRLF):
            line = raw.decode("utf-8", "replace")
            if line[:1] in (" ", "\t") and last is not None:
                # Obsolete line folding (RFC 5322): continuation of the previous header.
                headers[last] += " " + line.strip()
                continue
            name, colon, value = line.partition(":")
            name = name.strip().lower()
            if not colon or not name or " " in name or "\t" in name:
                return {}, MultipartError(f"part {index}: malformed header line {line[:80]!r}")
            headers[name] = value.strip()
            last = name
        self._buf = buf[end + 4 :]
        return headers, None

    async def _drain_epilogue(self) -> None:
        seen = len(self._buf)
        self._buf = b""
        while seen <= _MAX_EPILOGUE and await self._fill():
            seen += len(self._buf)
            self._buf = b""

    async def parts(self) -> AsyncIterator[Part]:
        # Preamble: everything before the first delimiter is discarded.
        try:
            await self._skip()
        except _EndOfStream:
            raise MultipartError("no multipart boundary found in body") from None
        index = 0
        while True:
            if not await self._after_delimiter():
                await self._drain_epilogue()
                return
            headers, error = await self._read_headers(index)
            part = Part(self, index, headers, error)
            self._current, self._current_done = part, False
            yield part
            self._current = None
            if not self._current_done:
                try:
                    await self._skip()
                except _EndOfStream:
                    if self._truncation_reported:
                        return  # the caller has already been told about this part
                    raise MultipartError(f"truncated part {index}: stream ended inside the part") from None
            index += 1


async def iter_parts(chunks: AsyncIterable[bytes], boundary: str) -> AsyncIterator[Part]:
    """Iterate over the parts of a multipart body delivered as ``chunks``.

    Each part must be consumed (or ignored: it is skipped) before the next is requested.
    Raises :class:`MultipartError` when no boundary is found or the boundary line is
    malformed; per-part problems are raised when that part's body is consumed.
    """
    async for part in _Reader(chunks, boundary).parts():
        yield part


# --------------------------------------------------------------------------- writer


def new_boundary() -> str:
    """A random boundary that will not occur in binary DICOM data in practice."""
    return secrets.token_hex(16)


def _check_header_value(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError(f"header value contains a line break: {value!r}")
    return value


def part_header(
    boundary: str, content_type: str, extra: dict[str, str] | None = None, *, first: bool = False
) -> bytes:
    """Boundary line and headers opening a part.

    All parts except the first are preceded by CRLF because that CRLF belongs to the
    delimiter (RFC 2046 5.1.1), not to the previous part's body.
    """
    lines = [f"--{boundary}", f"Content-Type: {_check_header_value(content_type)}"]
    for name, value in (extra or {}).items():
        lines.append(f"{_check_header_value(name)}: {_check_header_value(value)}")
    head = "\r\n".join(lines).encode("utf-8") + b"\r\n\r\n"
    return head if first else CRLF + head


def closing(boundary: str) -> bytes:
    """The close delimiter that ends a multipart body (after at least one part)."""
    return f"\r\n--{boundary}--\r\n".encode()


async def multipart_stream(
    parts: AsyncIterable[tuple[str, AsyncIterable[bytes] | bytes]], boundary: str
) -> AsyncIterator[bytes]:
    """Stream a multipart/related body from ``(content_type, body)`` pairs."""
    first = True
    async for content_type, body in parts:
        yield part_header(boundary, content_type, first=first)
        first = False
        if isinstance(body, bytes | bytearray | memoryview):
            if body:
                yield bytes(body)
        else:
            async for chunk in body:
                if chunk:
                    yield chunk
    if first:
        # No parts: a lone close delimiter still parses as an empty multipart body.
        yield f"--{boundary}--\r\n".encode()
    else:
        yield closing(boundary)
