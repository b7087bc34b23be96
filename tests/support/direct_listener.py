"""A DICOM listener (``dimse.listener.serve_dicom``) in a process of its own that counts the requests its
direct path (dicomd/dimse/direct.py) answered, for tests that check which path a request took. The
listener makes pynetdicom event-driven in that process only; ``answer_delay`` slows each C-FIND match
(a cancel or an abort then arrives while matches are still pending); ``timeout`` is its dicom_timeout and
``send_buffer`` the send buffer of each accepted connection (small: a peer that stops reading blocks the
listener's writes soon); ``peers`` its dicom_peers (C-MOVE destinations)."""

from __future__ import annotations

import contextlib
import multiprocessing
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dicomd.config import Settings
from dicomd.dimse.direct import DirectPath
from dicomd.dimse.listener import serve_dicom
from dicomd.startup import prepare

from support.dicomweb import wait_for
from support.dimse import echo


class Listener:
    def __init__(self, port: int, taken: Any, data_dir: Path) -> None:
        self.port = port
        self._taken = taken
        self.data_dir = data_dir

    @property
    def taken(self) -> int:
        """Requests the direct path answered so far."""
        return int(self._taken.value)


def _serve_counting(
    data_dir: Path,
    max_pdu: int,
    answer_delay: float,
    timeout: int,
    send_buffer: int,
    peers: str,
    ports: Any,
    taken: Any,
    stop: Any,
) -> None:
    answer = DirectPath._answer

    def counted(self: DirectPath, dul: Any, message: Any) -> None:
        with taken.get_lock():
            taken.value += 1
        answer(self, dul, message)

    DirectPath._answer = counted  # type: ignore[method-assign]
    if answer_delay:
        from dicomd.dimse import query
        from dicomd.dimse.direct_find import DirectFind

        real_answer, direct_answer = query.answer, DirectFind._answer

        def slow_answer(*args: Any) -> Any:  # (pynetdicom's path)
            time.sleep(answer_delay)
            return real_answer(*args)

        def slow_direct_answer(*args: Any) -> Any:  # (the direct path's)
            time.sleep(answer_delay)
            return direct_answer(*args)

        query.answer = slow_answer  # type: ignore[assignment]
        DirectFind._answer = slow_direct_answer  # type: ignore[method-assign]
    if send_buffer:
        from dicomd.dimse import transport

        no_delay = transport.set_no_delay

        def small_send_buffer(conn: socket.socket) -> None:
            no_delay(conn)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)

        transport.set_no_delay = small_send_buffer  # type: ignore[assignment]
    settings = Settings(
        data_dir=data_dir,
        dicom_allowed_callers="*",
        dicom_max_pdu=max_pdu,
        dicom_timeout=timeout,
        dicom_peers=peers,
    )
    prepare(settings)  # the index's schema, as `dicomd serve` makes it before its listener starts
    sock = socket.create_server(("127.0.0.1", 0))
    ports.put(sock.getsockname()[1])
    serve_dicom(sock, settings, stop)


@contextlib.contextmanager
def direct_listener(
    data_dir: Path,
    *,
    max_pdu: int = 16384,
    answer_delay: float = 0.0,
    timeout: int = 5,
    send_buffer: int = 0,
    peers: str = "",
) -> Iterator[Listener]:
    context = multiprocessing.get_context("spawn")
    ports, taken, stop = context.Queue(), context.Value("i", 0), context.Event()
    process = context.Process(
        target=_serve_counting,
        args=(data_dir, max_pdu, answer_delay, timeout, send_buffer, peers, ports, taken, stop),
    )
    process.start()
    try:
        served = Listener(ports.get(timeout=60), taken, data_dir)
        assert wait_for(lambda: echo(served.port, timeout=2) == 0x0000, timeout=30)
        yield served
    finally:
        stop.set()
        process.join(30)
        if process.is_alive():
            process.kill()
