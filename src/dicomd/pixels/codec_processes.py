"""Codec calls in processes of their own.

The codec wheels (openjpeg, libjpeg, CharLS, RLE) hold the GIL while they decode or encode: a 512x512
JPEG 2000 frame keeps it for 10-40 ms. Run in a thread of the worker, that stalls the worker's event loop
(its searches and stores) for as long; run in a process, it costs one copy of the frame each way. Some
are not safe to call from several threads at once either (openjpeg's encoder crashed a worker under 4
concurrent requests): each codec process codes one frame at a time. A codec that crashes on a hostile
bitstream takes down only its process: that frame fails, the worker goes on.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

_T = TypeVar("_T")

log = logging.getLogger(__name__)


class CodecCrashed(RuntimeError):
    """The codec process died while coding a frame (a crash on a malformed bitstream)."""


class CodecProcesses:
    """A pool of `processes` codec processes, started on first use (spawned: a fork of a worker that runs
    an event loop and threads would copy their locks)."""

    def __init__(self, processes: int) -> None:
        self._processes = processes
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                context = multiprocessing.get_context("spawn")
                self._executor = ProcessPoolExecutor(
                    self._processes, mp_context=context, initializer=_follow_parent, initargs=(os.getpid(),)
                )
            return self._executor

    def call(self, fn: Callable[..., _T], *args: object) -> _T:
        pool = self._pool()
        try:
            return pool.submit(fn, *args).result()
        except BrokenProcessPool:
            with self._lock:  # the next call starts a new pool
                if self._executor is pool:
                    self._executor = None
            log.warning("a codec process died while coding a frame; the pool is restarted")
            pool.shutdown(wait=False, cancel_futures=True)
            raise CodecCrashed("the codec crashed on this frame") from None

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


_PARENT_CHECK_SECONDS = 1.0


def _follow_parent(parent: int) -> None:
    """In a codec process: leave Ctrl-C to the worker (it stops the pool), and exit when the worker is gone
    (killed: nothing else would end this process, which waits on its task queue)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_CHECK_SECONDS)
        os._exit(0)

    threading.Thread(target=watch, name="follow-parent", daemon=True).start()


_processes: CodecProcesses | None = None  # set in a server worker (PixelService); None: all inline


def use(processes: CodecProcesses | None) -> None:
    global _processes
    _processes = processes


def run(fn: Callable[..., _T], *args: object) -> _T:
    """``fn(*args)``: in a codec process when this process has them (a server worker), else here (the
    command line, tests)."""
    processes = _processes
    if processes is None:
        return fn(*args)
    return processes.call(fn, *args)
