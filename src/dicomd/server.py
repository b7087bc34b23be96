"""Runs the web workers: one uvicorn server per process, fed connections by the supervisor.

The supervisor owns the listening socket, accepts each connection and hands it to the next worker in
turn (round robin, over a Unix socket pair per worker): a shared listening socket or SO_REUSEPORT
sockets spread a client's keep-alive connections unevenly and left a core idle (docs/decisions.md).

Each worker keeps its connections' deadlines and its share of the connection bound
(``dicomd.http.connections``); the supervisor raises the descriptor limit the workers inherit. TLS, when
configured, is done by the workers, which make each connection themselves (``dicomd.http.tls``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import itertools
import logging
import logging.config
import multiprocessing
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import MutableSequence
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dicomd.config import Settings
    from dicomd.http.tls import CertificateFiles

log = logging.getLogger("dicomd.server")

APP = "dicomd.app:app_from_environment"
_READY = b"r"  # a worker's word on its channel: its application has started
_CONNECTION = b"c"  # the supervisor's byte on a channel, carrying one connection's descriptor
# Send buffer of the supervisor's end of a channel: room for about ten handed-over connections. A
# worker that has not taken those in yet (busy or stuck) is passed over for new ones.
_CHANNEL_SNDBUF = 4 << 10  # the kernel doubles it: about 10 connections
# accept() errors that mean "out of descriptors or memory": the connection waits in the backlog meanwhile
_ACCEPT_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def _settings(environ: dict[str, str]) -> Settings:
    from dicomd.app import SETTINGS_ENV
    from dicomd.config import Settings

    text = environ.get(SETTINGS_ENV)
    return Settings.from_json(text) if text else Settings()


def _uvicorn_config(log_config: dict[str, Any], settings: Settings, workers: int) -> Any:
    import uvicorn

    from dicomd.http.connections import Limits, protocol_class, worker_share

    limits = Limits(
        header_timeout=settings.header_timeout,
        body_timeout=settings.body_timeout,
        keep_alive_timeout=settings.keep_alive_timeout,
        max_connections=worker_share(settings.max_connections, workers),
    )
    return uvicorn.Config(
        APP,
        factory=True,
        log_config=log_config,
        access_log=False,  # request lines carry UIDs and patient names in query strings (PHI)
        timeout_graceful_shutdown=10,
        server_header=False,
        http=protocol_class(limits),  # deadlines and the connection bound (dicomd.http.connections)
        timeout_keep_alive=settings.keep_alive_timeout,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips.split(","),
    )


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def _exit_with_parent() -> None:
    """Linux: get SIGTERM when the supervisor dies (even by SIGKILL), so no worker lingers."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _handed_server(
    config: Any,
    channel: socket.socket | None,
    tls: CertificateFiles | None,
    handshake_timeout: float,
    listener: socket.socket | None = None,
) -> Any:
    """A uvicorn server that serves the connections arriving on ``channel`` (or accepted on ``listener``).

    Once its application has started it writes one byte to ``channel``: only then does the supervisor
    hand it connections. Each connection arrives as one byte carrying its descriptor (SCM_RIGHTS). With
    a single worker there is no supervisor: the server accepts on ``listener`` itself.

    Connections are made here (not by uvicorn's own listener), with TLS when ``tls`` is given: each new
    connection gets its current context, so a renewed certificate needs no restart (dicomd.http.tls).
    """
    import uvicorn

    class HandedServer(uvicorn.Server):
        _connecting: set[asyncio.Task[None]]
        _accept_pause = 0.0  # while accept() finds no descriptor: waits growing up to 0.1 s

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            self._connecting = set()
            await super().startup(sockets=[])  # lifespan, no listener of uvicorn's own
            if self.should_exit:
                return
            loop = asyncio.get_running_loop()
            if listener is not None:
                listener.setblocking(False)
                loop.add_reader(listener.fileno(), self._accept, loop)
            if channel is not None:
                channel.setblocking(False)
                loop.add_reader(channel.fileno(), self._receive, loop)
                channel.send(_READY)

        def _protocol(self) -> asyncio.Protocol:
            # what uvicorn's own startup builds per connection
            make: Any = self.config.http_protocol_class
            protocol: asyncio.Protocol = make(
                config=self.config, server_state=self.server_state, app_state=self.lifespan.state
            )
            return protocol

        def _receive(self, loop: asyncio.AbstractEventLoop) -> None:
            assert channel is not None
            try:
                message, fds, flags, _ = socket.recv_fds(channel, 1, 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.error("connection channel failed (%s); this worker stops", exc)
                message, fds, flags = b"", [], 0
            if flags & socket.MSG_CTRUNC:  # e.g. out of file descriptors: the kernel dropped one
                log.warning("a connection was lost in hand-over (descriptor limit?)")
            if not message:  # the supervisor is gone
                loop.remove_reader(channel.fileno())
                self.should_exit = True
                return
            for fd in fds:
                self._start(loop, socket.socket(fileno=fd))

        def _accept(self, loop: asyncio.AbstractEventLoop) -> None:
            assert listener is not None
            while True:  # all that wait: the reader is called once per readiness
                try:
                    conn, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    if exc.errno in _ACCEPT_EXHAUSTED:
                        # the connection waits in the backlog; stop watching the listener for a moment
                        # (it stays readable: watching it would spin)
                        if not self._accept_pause:
                            log.warning("cannot accept connections: %s; retrying", exc.strerror)
                        self._accept_pause = min(max(2 * self._accept_pause, 0.005), 0.1)
                        loop.remove_reader(listener.fileno())
                        loop.call_later(self._accept_pause, self._resume_accepting, loop)
                        return
                    continue  # ECONNABORTED and the like: that client left before we took it
                if self._accept_pause:
                    log.info("accepting connections again")
                    self._accept_pause = 0.0
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._start(loop, conn)

        def _resume_accepting(self, loop: asyncio.AbstractEventLoop) -> None:
            if listener is not None and listener.fileno() != -1 and not self.should_exit:
                loop.add_reader(listener.fileno(), self._accept, loop)

        def _start(self, loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
            conn.setblocking(False)
            task = loop.create_task(self._connect(loop, conn))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)

        async def _connect(self, loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
            try:
                if tls is None:
                    await loop.connect_accepted_socket(self._protocol, conn)
                else:
                    # the handshake comes before the protocol (and its header deadline) sees the
                    # connection: it gets the header deadline of its own
                    await loop.connect_accepted_socket(
                        self._protocol, conn, ssl=tls.context(), ssl_handshake_timeout=handshake_timeout
                    )
            except OSError:  # the client left already, or its TLS handshake failed or timed out
                conn.close()

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            loop = asyncio.get_running_loop()
            if listener is not None:
                with contextlib.suppress(Exception):
                    loop.remove_reader(listener.fileno())
                listener.close()
            if channel is not None:
                with contextlib.suppress(Exception):
                    loop.remove_reader(channel.fileno())
                # connections handed over but not yet taken: close them, their clients retry elsewhere
                with contextlib.suppress(OSError):
                    while True:
                        message, fds, _, _ = socket.recv_fds(channel, 1, 1)
                        for fd in fds:
                            os.close(fd)
                        if not message:
                            break
            await super().shutdown(sockets)

    return HandedServer(config)


def _worker(
    channel: socket.socket, log_config: dict[str, Any], environ: dict[str, str], workers: int
) -> None:
    from dicomd.http.tls import certificate_files

    _exit_with_parent()  # (its interpreter is tuned by app_from_environment)
    os.environ.update(environ)  # settings travel in the environment (spawned process)
    logging.config.dictConfig(log_config)
    settings = _settings(environ)
    config = _uvicorn_config(log_config, settings, workers)
    _handed_server(config, channel, certificate_files(settings), settings.header_timeout).run()


def _dicom_listener(
    listener: socket.socket,
    log_config: dict[str, Any],
    environ: dict[str, str],
    slots: MutableSequence[int],
    own: int,
) -> None:
    from dicomd.dimse.association_count import AssociationCount
    from dicomd.dimse.listener import run
    from dicomd.process_tuning import tune_for_throughput

    _exit_with_parent()
    tune_for_throughput()  # its association threads parse while the committer waits
    os.environ.update(environ)
    logging.config.dictConfig(log_config)
    run(listener, _settings(environ), AssociationCount(slots, own))


class _DicomListener:
    """The DICOM listener processes (dimse/listener.py), serving on a socket the supervisor bound (so a taken
    port fails the start-up, and connections wait in the backlog while a listener restarts): started with
    the workers, each restarted when it dies (after a growing pause when it dies young), stopped with them.
    They count their associations in shared memory, one slot each (dimse/association_count.py)."""

    def __init__(
        self, listener: socket.socket, log_config: dict[str, Any], environ: dict[str, str], processes: int
    ) -> None:
        self.listener = listener
        self.log_config = log_config
        self.environ = environ
        self._context = multiprocessing.get_context("spawn")
        self._slots = self._context.RawArray("i", processes)  # written by its own process only
        self._processes: list[BaseProcess | None] = [None] * processes
        self._started = [0.0] * processes
        self._pauses = [0.0] * processes
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watcher = threading.Thread(target=self._watch, name="dicom-listener-watch", daemon=True)

    def start(self) -> None:
        with self._lock:
            for own in range(len(self._processes)):
                self._processes[own] = self._spawn(own)
        self._watcher.start()

    def _spawn(self, own: int) -> BaseProcess:
        self._slots[own] = 0  # what a dead listener counted died with it
        process = self._context.Process(
            target=_dicom_listener,
            args=(self.listener, self.log_config, self.environ, self._slots, own),
            daemon=False,
        )
        process.start()
        self._started[own] = time.monotonic()
        return process

    def _watch(self) -> None:
        while not self._stopping.wait(0.2):
            for own, process in enumerate(self._processes):
                if process is not None and not process.is_alive() and not self._restart(own, process):
                    return

    def _restart(self, own: int, dead: BaseProcess) -> bool:
        """Start a successor to a listener that died; False when the server stops meanwhile."""
        log.warning("the DICOM listener %s exited with %s; restarting it", dead.pid, dead.exitcode)
        young = time.monotonic() - self._started[own] < 5
        self._pauses[own] = pause = min(max(2 * self._pauses[own], 0.5), 30.0) if young else 0.0
        if pause and self._stopping.wait(pause):
            return False
        with self._lock:
            if self._stopping.is_set():
                return False
            self._processes[own] = self._spawn(own)
        return True

    def terminate(self) -> None:
        """Stop restarting the listeners and ask them to stop (``join`` waits for them)."""
        with self._lock:
            self._stopping.set()
            processes = list(self._processes)
        for process in processes:
            if process is not None and process.is_alive() and process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()  # SIGTERM: open associations get a few seconds to finish

    def join(self) -> None:
        for process in self._processes:
            if process is not None:
                process.join(15)
                if process.is_alive():
                    process.kill()
                    process.join()
        self.listener.close()


def _open_dicom_listener(
    host: str, settings: Settings, log_config: dict[str, Any], environ: dict[str, str]
) -> _DicomListener | None:
    """The DICOM listener when ``dicom_port`` is set (not started yet); exits with a message when its
    settings are wrong (2) or its port cannot be taken (1)."""
    from dicomd.config import ConfigError
    from dicomd.dimse.listener import check_dimse_settings

    if not settings.dicom_port:
        return None
    try:
        check_dimse_settings(settings)
    except ConfigError as exc:
        print(f"dicomd: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    try:
        listener = _listen(host, settings.dicom_port)
    except OSError as exc:
        print(
            f"dicomd: cannot listen for DICOM on {host}:{settings.dicom_port}: {exc.strerror}",
            file=sys.stderr,
        )
        sys.exit(1)
    return _DicomListener(listener, log_config, environ, settings.effective_dicom_listeners)


class _Dispatcher:
    """Accepts connections on the listening socket and hands each to the next ready worker.

    A worker is ready once it has said so on its channel (its application started). Channels are
    non-blocking with a small send buffer: a worker that has not yet taken in the few connections
    already handed to it is passed over; when no worker can take a connection, the dispatcher waits
    (new connections queue in the listen backlog meanwhile).
    """

    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self.channels: list[socket.socket | None] = []  # ready workers' channels, by worker index
        self._changed = threading.Condition()
        self._turn = itertools.count()
        self._thread = threading.Thread(target=self._run, name="dispatcher", daemon=True)

    def set_channel(self, index: int, channel: socket.socket | None) -> None:
        with self._changed:
            while len(self.channels) <= index:
                self.channels.append(None)
            old, self.channels[index] = self.channels[index], channel
            self._changed.notify_all()
        if old is not None and old is not channel:
            old.close()

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        pause = 0.0  # while accept() finds no descriptor: waits growing up to 0.1 s, not a busy loop
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError as exc:
                if self.listener.fileno() == -1:
                    return  # closed: stopping
                if exc.errno in _ACCEPT_EXHAUSTED:
                    if not pause:
                        log.warning("cannot accept connections: %s; retrying", exc.strerror)
                    pause = min(max(2 * pause, 0.005), 0.1)
                    time.sleep(pause)
                elif exc.errno not in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR, errno.EAGAIN):
                    time.sleep(0.01)  # unexpected (e.g. the listener being shut down): not a busy loop
                continue  # ECONNABORTED and the like: that client left before we took it
            if pause:
                log.info("accepting connections again")
                pause = 0.0
            with conn:
                if conn.family != socket.AF_UNIX:
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._hand(conn)

    def _hand(self, conn: socket.socket) -> None:
        while self.listener.fileno() != -1:
            with self._changed:
                channels = list(self.channels)
            full = select.poll()
            waiting = False
            for _ in range(len(channels)):
                channel = channels[next(self._turn) % len(channels)]
                if channel is None:
                    continue
                try:
                    socket.send_fds(channel, [_CONNECTION], [conn.fileno()])
                    return
                except BlockingIOError:  # that worker is not keeping up: the next one
                    with contextlib.suppress(ValueError, OSError):  # closed meanwhile
                        full.register(channel, select.POLLOUT)
                        waiting = True
                except OSError:  # that worker is gone: the supervisor restarts it
                    continue
            if waiting:
                # every worker has connections still to take in: wait until one has taken some (a fixed
                # sleep made a burst of connections wait seconds in the listen backlog)
                full.poll(50)
            else:
                with self._changed:  # no worker ready: wait for one
                    self._changed.wait(0.05)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for index in range(len(self.channels)):
            self.set_channel(index, None)


def serve(host: str, port: int, workers: int, log_config: dict[str, Any], environ: dict[str, str]) -> None:
    """Serve until SIGINT/SIGTERM; a worker that dies is restarted."""
    from dicomd.http.connections import raise_fd_limit, worker_share
    from dicomd.http.tls import certificate_files, check_tls_settings

    settings = _settings(environ)
    check_tls_settings(settings)  # ConfigError: before the port is taken and workers start
    descriptors = raise_fd_limit()  # the workers inherit it
    log.info(
        "descriptor limit %d per process: up to %d connections per worker",
        descriptors,
        worker_share(settings.max_connections, workers),
    )
    dicom = _open_dicom_listener(host, settings, log_config, environ)
    if workers == 1:  # (app_from_environment tunes this process's interpreter)
        listener = _listen(host, port)
        config = _uvicorn_config(log_config, settings, 1)
        tls = certificate_files(settings)
        if dicom is not None:
            dicom.start()
        try:
            _handed_server(config, None, tls, settings.header_timeout, listener=listener).run()
        finally:
            if dicom is not None:
                dicom.terminate()
                dicom.join()
        return
    listener = _listen(host, port)  # a taken port fails here, with a clear message, before workers start
    dispatcher = _Dispatcher(listener)
    context = multiprocessing.get_context("spawn")
    stopping = False

    pending: dict[int, socket.socket] = {}  # channels of workers still starting

    def start(index: int) -> BaseProcess:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _CHANNEL_SNDBUF)
        process = context.Process(target=_worker, args=(theirs, log_config, environ, workers), daemon=False)
        process.start()
        theirs.close()
        ours.setblocking(False)
        if index in pending:  # its predecessor died before it was ready
            pending.pop(index).close()
        pending[index] = ours
        return process

    def admit_ready() -> None:
        for index, channel in list(pending.items()):
            try:
                said = channel.recv(1)
            except BlockingIOError:
                continue
            except OSError:
                said = b""
            del pending[index]
            if said == _READY:
                dispatcher.set_channel(index, channel)
            else:  # exited before it was ready: the loop below restarts it
                channel.close()

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    processes = [start(i) for i in range(workers)]
    dispatcher.start()
    log.info("started %d worker processes", workers)
    if dicom is not None:
        dicom.start()
    try:
        while not stopping:
            time.sleep(0.05 if pending else 0.2)
            admit_ready()
            for i, process in enumerate(processes):
                if not process.is_alive() and not stopping:
                    log.warning("worker %s exited with %s; restarting it", process.pid, process.exitcode)
                    dispatcher.set_channel(i, None)
                    processes[i] = start(i)
    finally:
        dispatcher.close()  # no new connections; the workers finish the ones they have
        if dicom is not None:
            dicom.terminate()
        for process in processes:
            if process.is_alive() and process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()  # SIGTERM: uvicorn shuts down gracefully
        if dicom is not None:
            dicom.join()  # all stop at once: the graceful pauses overlap
        for process in processes:
            process.join(15)
            if process.is_alive():
                process.kill()
                process.join()
