"""Connection limits of a worker: header, body, keep-alive and send deadlines; a bound on connections.

Without them a client that opens connections and sends nothing (or trickles bytes) holds a descriptor each
for ever, until the descriptors run out and every normal request fails (docs/decisions.md). Each
connection's uvicorn protocol (a subclass of uvicorn's httptools protocol) records its phase; one sweep
per second per worker closes the connections past their deadline:

- waiting for a request (new, or after a response on keep-alive) or receiving its headers: closed
  ``header_timeout`` after the connection was made or the previous response ended (a total deadline:
  trickled bytes do not extend it); idle after a response: ``keep_alive_timeout`` (uvicorn's timer);
- receiving a body: closed when it delivers less than 1 KiB within ``body_timeout`` (a slow but steady
  upload of any size goes on); the clock stands still while the server itself does not read (the
  application has not asked for more, or waits to send ``100 Continue``);
- sending a response to a client that does not read it (the send buffer full): closed when less than 1 KiB
  of it leaves within ``body_timeout``.

A request head (request line and headers) larger than ``MAX_HEAD`` bytes is answered ``431`` and the
connection closed: uvicorn's httptools protocol bounds neither the URL nor a header, and a head that grows
without end within ``header_timeout`` would grow the worker with it (the bytes are counted as they arrive,
to within one read of the transport).

At its share of the connection bound, a worker closes the connection that has waited longest for a request
(no request in progress) to make room for a new one; when every connection has a request in progress,
the new one is answered ``503`` with ``Retry-After`` and closed.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from dicomd.api.common import SUPPORTED_VERSIONS_HEADER

log = logging.getLogger("dicomd.http.connections")

PROGRESS = 1024  # bytes a body (or a response) must move within each body_timeout
SWEEP_INTERVAL = 1.0  # seconds between sweeps: deadlines are kept to within this
FD_RESERVE = 64  # descriptors of a worker besides its connections: index, logs, pipes, channel
LINGER = 2.0  # seconds a refused connection stays open to read the request (a close before that resets it)
MAX_LINGERING = 64  # refused connections lingering at once; more are closed at once
RETRY_AFTER = 1  # seconds (the Retry-After of a refused connection)
MAX_HEAD = 64 << 10  # bytes of a request's line and headers; beyond: 431
RECENT_RESPONSE = 0.005  # seconds: a connection answered this recently is not idle for lone_request


def _answer(status: bytes, message: bytes, extra: bytes = b"") -> bytes:
    """A whole error answer that closes the connection, in the form of the application's errors (JSON,
    api-supported-versions)."""
    code = status.split(b" ", 1)[0]
    body = b'{"status":%s,"message":"%s"}' % (code, message)
    return (
        b"HTTP/1.1 %s\r\n"
        b"content-type: application/json\r\n"
        b"content-length: %d\r\n"
        b"%s"
        b"api-supported-versions: %s\r\n"
        b"connection: close\r\n"
        b"\r\n%s"
    ) % (status, len(body), extra, SUPPORTED_VERSIONS_HEADER.encode(), body)


_REFUSAL = _answer(
    b"503 Service Unavailable", b"too many connections; try again later", b"retry-after: %d\r\n" % RETRY_AFTER
)
_HEAD_TOO_LARGE = _answer(
    b"431 Request Header Fields Too Large",
    b"the request line and headers exceed %d KiB" % (MAX_HEAD >> 10),
)


@dataclass(frozen=True)
class Limits:
    header_timeout: float
    body_timeout: float
    keep_alive_timeout: float
    max_connections: int  # this worker's share


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit where allowed; returns the soft limit.

    Child processes inherit it. Linux refuses more than fs.nr_open (an unlimited hard limit is above it).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = [hard] if hard != resource.RLIM_INFINITY else []
    try:
        with open("/proc/sys/fs/nr_open") as f:
            wanted.append(int(f.read()))
    except (OSError, ValueError):
        wanted.append(65536)
    for target in sorted(set(wanted)):
        if soft < target <= hard or (hard == resource.RLIM_INFINITY and target > soft):
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            except (OSError, ValueError):
                break
            soft = target
    return soft


def worker_share(max_connections: int, workers: int) -> int:
    """This worker's part of the connection bound, kept within its descriptor limit.

    Half of the descriptors (beyond a fixed reserve) are for connections, the other half for what their
    requests open (stored objects streamed, staged uploads).
    """
    share = -(-max_connections // max(1, workers))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY:
        share = min(share, (soft - FD_RESERVE) // 2)
    return max(1, share)


# phases of a connection
_WAITING = 0  # for a request's first byte, or receiving its headers: no request in progress
_BODY = 1  # receiving a request body
_BUSY = 2  # the request is complete, its response is being produced or sent


class Guard:
    """The connections of one worker process, their deadlines and the bound."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.open: set[GuardedProtocol] = set()
        # connections without a request in progress, in the order they began waiting (oldest first)
        self.waiting: dict[GuardedProtocol, None] = {}
        self.receiving: set[GuardedProtocol] = set()  # bodies being received
        self.stalled: set[GuardedProtocol] = set()  # responses waiting for the client to read
        self.lingering: dict[asyncio.Transport, float] = {}  # refused: close at this time
        self._sweeping: asyncio.TimerHandle | None = None
        self.evicted = 0  # since the last sweep's log line
        self.refused = 0

    def admit(self, protocol: GuardedProtocol) -> bool:
        """Make room for a new connection if needed; False when there is none (refuse it)."""
        self._ensure_sweep(protocol.loop)
        while len(self.open) >= self.limits.max_connections:
            if not self.waiting:
                self.refused += 1
                return False
            oldest = next(iter(self.waiting))
            log.debug("closed the longest-waiting connection to make room for a new one")
            oldest.close()
            self.evicted += 1
        self.open.add(protocol)
        return True

    def refuse(
        self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop, answer: bytes = _REFUSAL
    ) -> None:
        """Send `answer` (an error that closes the connection) and close, reading for a moment first."""
        transport.write(answer)
        if len(self.lingering) >= MAX_LINGERING or not transport.can_write_eof():
            transport.close()
            return
        # half-close and read the request for a moment: closing with it unread would reset the
        # connection, and the client might lose the 503
        transport.write_eof()
        self.lingering[transport] = loop.time() + LINGER

    def _ensure_sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._sweeping is None:
            self._sweeping = loop.call_later(SWEEP_INTERVAL, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweeping = None
        try:
            self.sweep(loop.time())
        finally:
            if self.open or self.lingering:
                self._ensure_sweep(loop)

    def sweep(self, now: float) -> None:
        """Close the connections past their deadline."""
        limits = self.limits
        closed: Counter[str] = Counter()
        for protocol in list(self.waiting):
            if now - protocol.since < limits.header_timeout:
                break  # in order of waiting: the others are younger
            log.debug("closed a connection: no complete request headers within %g s", limits.header_timeout)
            protocol.close()
            closed["headers"] += 1
        for protocol in list(self.receiving):
            if protocol.reading_held():
                protocol.since = now  # the server holds the body back, not the client
            elif now - protocol.since >= limits.body_timeout:
                log.debug(
                    "closed a connection: its request body gave less than 1 KiB in %g s", limits.body_timeout
                )
                protocol.close()
                closed["body"] += 1
        for protocol in list(self.stalled):
            unsent = protocol.transport.get_write_buffer_size()
            if unsent <= protocol.unsent - PROGRESS:
                protocol.unsent, protocol.stalled_since = unsent, now
            elif now - protocol.stalled_since >= limits.body_timeout:
                log.debug("closed a connection: its client read less than 1 KiB in %g s", limits.body_timeout)
                protocol.close()
                closed["response unread"] += 1
            else:
                protocol.unsent = max(protocol.unsent, unsent)  # more written is no progress
        for transport, until in list(self.lingering.items()):
            if until <= now or transport.is_closing():
                del self.lingering[transport]
                transport.close()
        if closed or self.evicted or self.refused:
            # one line a second at most, however many connections (a flood would flood the log)
            log.info(
                "connections: closed %d past their deadline (%s), %d to make room, refused %d (%d open)",
                closed.total(),
                ", ".join(f"{reason} {n}" for reason, n in closed.items()) or "none",
                self.evicted,
                self.refused,
                len(self.open),
            )
            self.evicted = self.refused = 0


class _CoalescingTransport:
    """A connection's transport as uvicorn writes to it. uvicorn writes a response's head as soon as the
    application starts the response and its body right after: two writes, two TCP segments, and a client
    that reads the head often wakes up a second time for the body. A small first write is held until
    the next write (sent with it) or the end of the loop's round, whichever comes first: one write for
    a head and a body sent together, nothing held longer than the round."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is None:
            if len(data) <= _HOLD_MAX and not self._transport.is_closing():
                self._held = bytes(data)
                self._loop.call_soon(self.flush)
            else:
                self._transport.write(data)
        else:
            self._held = None
            if len(data) <= _JOIN_MAX:
                self._transport.write(held + bytes(data))
            else:
                self._transport.writelines((held, data))

    def flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + (len(self._held) if self._held else 0)

    def __getattr__(self, name: str) -> Any:  # is_closing, set_protocol, get_extra_info, ...
        return getattr(self._transport, name)


_HOLD_MAX = 8 << 10  # a response head (dicomd's are well under 1 KiB)
_JOIN_MAX = 64 << 10  # a head and a body up to this are joined into one buffer; larger: writelines


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the phase of its connection kept for the Guard."""

    guard: ClassVar[Guard]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.phase = _WAITING
        self.since = 0.0  # _WAITING: since when; _BODY: last progress
        self.received = 0  # body bytes since the last progress
        self.unsent = 0  # response bytes buffered at the last send progress
        self.stalled_since = 0.0
        self.refused = False
        # the request head is incomplete (its first byte may not have come yet): its bytes so far
        self.in_head = True
        self.head_bytes = 0

    # ---- the guard's view --------------------------------------------------------------------------
    def _wait(self) -> None:
        guard = self.guard
        guard.receiving.discard(self)
        guard.waiting.pop(self, None)
        guard.waiting[self] = None  # at the end: the youngest
        self.phase, self.since = _WAITING, self.loop.time()

    def drop(self) -> None:
        """Forget this connection (it is being closed)."""
        guard = self.guard
        guard.open.discard(self)
        guard.waiting.pop(self, None)
        guard.receiving.discard(self)
        guard.stalled.discard(self)

    def close(self) -> None:
        """Close this connection for the Guard, at once: what its client has not read is dropped (a
        graceful close would wait for a client that may never read, and hold the descriptor)."""
        self.drop()
        if self.transport.get_write_buffer_size():
            self.transport.abort()
        else:
            self.transport.close()

    def reading_held(self) -> bool:
        """The server, not the client, holds the body back: paused reading, or 100 Continue not sent."""
        return self.flow.read_paused or bool(self.cycle and self.cycle.waiting_for_100_continue)

    # ---- uvicorn's callbacks -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.guard.admit(self):
            self.refused = True
            self.guard.refuse(transport, self.loop)
            return
        self.transport = _CoalescingTransport(transport, self.loop)  # type: ignore[assignment]
        self._wait()

    def connection_lost(self, exc: Exception | None) -> None:
        self.drop()
        self.guard.lingering.pop(self.transport, None)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return  # read and dropped until the lingering close
        if self.in_head:
            self.head_bytes += len(data)
        super().data_received(data)
        if self.in_head and self.head_bytes > MAX_HEAD and not self.transport.is_closing():
            self._head_too_large()

    def _head_too_large(self) -> None:
        """Answer 431 and close: the request head goes beyond MAX_HEAD (uvicorn would keep it all)."""
        log.debug("closed a connection: its request head exceeds %d bytes", MAX_HEAD)
        self.drop()
        self.refused = True  # what else comes is dropped
        self.in_head = False
        if self.cycle and not self.cycle.response_complete:
            # a pipelined head behind a response in progress: no room for an answer in that stream
            self.transport.abort()
            return
        self.guard.refuse(self.transport, self.loop, _HEAD_TOO_LARGE)

    def eof_received(self) -> None:  # None: the transport closes itself
        if self.refused:
            self.guard.lingering.pop(self.transport, None)
        super().eof_received()

    def on_headers_complete(self) -> None:
        self.in_head, self.head_bytes = False, 0
        if self.phase == _WAITING:
            self.guard.waiting.pop(self, None)
            self.guard.receiving.add(self)
            self.phase, self.since, self.received = _BODY, self.loop.time(), 0
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self.phase == _BODY:
            self.received += len(body)
            if self.received >= PROGRESS:
                self.since, self.received = self.loop.time(), 0
        super().on_body(body)

    def on_message_complete(self) -> None:
        self.in_head, self.head_bytes = True, 0  # the next request's head (bytes after this read)
        if self.phase == _BODY:
            self.guard.receiving.discard(self)
            self.phase = _BUSY
        super().on_message_complete()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        if pipelined or self.transport.is_closing():
            return  # the next request runs, or the connection closes
        if self.flow.write_paused:  # held up by its client: busy (the send deadline) until it leaves
            self.guard.receiving.discard(self)  # answered before its whole body came
            self.phase = _BUSY
        else:
            self._wait()

    def pause_writing(self) -> None:
        super().pause_writing()
        self.unsent, self.stalled_since = self.transport.get_write_buffer_size(), self.loop.time()
        self.guard.stalled.add(self)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self in self.guard.stalled:
            self.guard.stalled.discard(self)
            if self.phase == _BUSY and self.cycle.response_complete and not self.pipeline:
                self._wait()  # the previous response has left: waiting for the next request

    def handle_websocket_upgrade(self) -> None:
        self.drop()  # another protocol takes the transport over
        super().handle_websocket_upgrade()

    def timeout_keep_alive_handler(self) -> None:
        log.debug("closed an idle keep-alive connection")
        super().timeout_keep_alive_handler()


_guard: Guard | None = None  # this process's (protocol_class makes one per worker)


def protocol_class(limits: Limits) -> type[asyncio.Protocol]:
    """The protocol class for uvicorn.Config(http=...): one Guard for this process's connections."""
    global _guard
    _guard = Guard(limits)
    return type("GuardedHttpToolsProtocol", (GuardedProtocol,), {"guard": _guard})


def lone_request() -> bool:
    """Whether this worker has exactly one request in progress, no request body still coming in and no
    connection that ended a response within the last ``RECENT_RESPONSE`` seconds (its client is likely
    to send the next request at once): then nothing else of the worker is expected to wait on its event
    loop but what that request does next. False where the connections are not guarded (the app served
    otherwise, as in some tests)."""
    guard = _guard
    if guard is None or guard.receiving or len(guard.open) - len(guard.waiting) != 1:
        return False
    if not guard.waiting:
        return True
    youngest = next(reversed(guard.waiting))  # in the order they began waiting
    return youngest.loop.time() - youngest.since >= RECENT_RESPONSE
