"""A do-nothing HTTP/1.1 server used to measure the load generator's own ceiling.

Answers every request (body ignored) with `size` bytes. python -m bench.nullserver PORT SIZE
"""

from __future__ import annotations

import asyncio
import sys


def make_protocol(size: int) -> type[asyncio.Protocol]:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n"
    resp = head.encode() + b"x" * size

    class Null(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t: asyncio.Transport = transport  # type: ignore[assignment]
            self.buf = b""
            self.body_left = 0

        def data_received(self, data: bytes) -> None:
            self.buf += data
            while True:
                if self.body_left:
                    take = min(self.body_left, len(self.buf))
                    self.buf = self.buf[take:]
                    self.body_left -= take
                    if self.body_left:
                        return
                    self.t.write(resp)
                    continue
                head, sep, rest = self.buf.partition(b"\r\n\r\n")
                if not sep:
                    return
                self.buf = rest
                clen = 0
                for ln in head.split(b"\r\n"):
                    if ln.lower().startswith(b"content-length:"):
                        clen = int(ln.split(b":", 1)[1])
                if clen:
                    self.body_left = clen
                else:
                    self.t.write(resp)

    return Null


async def serve(port: int, size: int) -> None:
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(make_protocol(size), "127.0.0.1", port)
    await srv.serve_forever()


def main() -> None:
    port, size = int(sys.argv[1]), int(sys.argv[2])
    try:
        import uvloop

        uvloop.run(serve(port, size))
    except ImportError:  # pragma: no cover
        asyncio.run(serve(port, size))


if __name__ == "__main__":
    main()
