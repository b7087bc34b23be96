"""A response's head and body leave in one write (http/connections._CoalescingTransport); the real
socket path is exercised by every end-to-end test."""

from __future__ import annotations

import asyncio

from dicomd.http.connections import _CoalescingTransport


class _Transport(asyncio.Transport):
    """Records the writes; what a uvloop or asyncio transport would send, each in one piece."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = self.aborted = self.eof = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def writelines(self, list_of_data: object) -> None:
        self.writes.append(b"".join(list_of_data))  # type: ignore[arg-type]

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def write_eof(self) -> None:
        self.eof = True

    def get_write_buffer_size(self) -> int:
        return 0


async def _round() -> None:
    await asyncio.sleep(0)


async def test_a_head_and_its_body_leave_together() -> None:
    raw = _Transport()
    transport = _CoalescingTransport(raw, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    assert raw.writes == []
    assert transport.get_write_buffer_size() == 19  # flow control sees what is held
    transport.write(b"{}")
    assert raw.writes == [b"HTTP/1.1 200 OK\r\n\r\n{}"]
    big = b"x" * (1 << 20)  # a large body goes as it is, after the held head
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(big)
    assert raw.writes[1] == b"HTTP/1.1 200 OK\r\n\r\n" + big
    transport.write(big)  # nothing held: written at once
    assert len(raw.writes) == 3


async def test_nothing_is_held_past_the_loops_round_or_a_close() -> None:
    raw = _Transport()
    transport = _CoalescingTransport(raw, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    await _round()
    assert raw.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    transport.write(b"HTTP/1.1 503 Service Unavailable\r\n\r\n")
    transport.write_eof()
    assert raw.writes[-1] == b"HTTP/1.1 503 Service Unavailable\r\n\r\n" and raw.eof
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.close()
    assert raw.writes[-1] == b"HTTP/1.1 200 OK\r\n\r\n" and raw.closed
    await _round()
    assert len(raw.writes) == 3  # flushed once, not again at the end of the round


async def test_an_abort_drops_what_is_held() -> None:
    raw = _Transport()
    transport = _CoalescingTransport(raw, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.abort()
    await _round()
    assert raw.writes == [] and raw.aborted
