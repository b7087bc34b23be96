"""Runs the web workers: one uvicorn server per process, each on its own SO_REUSEPORT socket.

uvicorn's own multi-worker mode shares one listening socket, and asyncio accepts every pending
connection in one go: with keep-alive clients the first worker to wake up takes them all and the
other cores idle (measured in bench/: one worker at 100%, the other at 0%). With a socket per worker
the kernel spreads new connections over the workers by hash.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import logging.config
import multiprocessing
import signal
import socket
import time
from multiprocessing.process import BaseProcess
from typing import Any

log = logging.getLogger("dicomd.server")

APP = "dicomd.app:app_from_environment"


def _uvicorn_config(log_config: dict[str, Any]) -> Any:
    import uvicorn

    return uvicorn.Config(
        APP,
        factory=True,
        log_config=log_config,
        access_log=False,  # request lines carry UIDs and patient names in query strings (PHI)
        timeout_graceful_shutdown=10,
        server_header=False,
    )


def _listen(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _exit_with_parent() -> None:
    """Linux: get SIGTERM when the supervisor dies (even by SIGKILL), so no worker keeps the port."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _worker(host: str, port: int, log_config: dict[str, Any], environ: dict[str, str]) -> None:
    import os

    import uvicorn

    _exit_with_parent()
    os.environ.update(environ)  # settings travel in the environment (spawned process)
    logging.config.dictConfig(log_config)
    server = uvicorn.Server(_uvicorn_config(log_config))
    server.run(sockets=[_listen(host, port, reuse_port=True)])


def serve(host: str, port: int, workers: int, log_config: dict[str, Any], environ: dict[str, str]) -> None:
    """Serve until SIGINT/SIGTERM; a worker that dies is restarted."""
    import uvicorn

    if workers == 1:
        uvicorn.Server(_uvicorn_config(log_config)).run(sockets=[_listen(host, port, reuse_port=False)])
        return
    # bind once in the parent so a taken port fails fast, with a clear message, before workers start
    # (closed at once: connections routed to a socket nobody accepts on would hang)
    _listen(host, port, reuse_port=True).close()
    context = multiprocessing.get_context("spawn")
    stopping = False

    def start() -> BaseProcess:
        process = context.Process(target=_worker, args=(host, port, log_config, environ), daemon=False)
        process.start()
        return process

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    processes = [start() for _ in range(workers)]
    log.info("started %d worker processes", workers)
    try:
        while not stopping:
            time.sleep(0.2)
            for i, process in enumerate(processes):
                if not process.is_alive() and not stopping:
                    log.warning("worker %s exited with %s; restarting it", process.pid, process.exitcode)
                    processes[i] = start()
    finally:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()  # SIGTERM: uvicorn shuts down gracefully
        for process in processes:
            process.join(15)
            if process.is_alive():
                process.kill()
                process.join()
