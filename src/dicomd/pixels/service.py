"""Where pixel work runs: a bounded pool of threads per worker process, never the event loop, with a bound
on the decoded pixel data one request may hold; codec calls run in codec processes
(pixels/codec_processes.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

from dicomd.pixels import codec_processes

_T = TypeVar("_T")


class PixelLimitError(ValueError):
    """The representation would need more decoded pixel data at once than `pixel_memory_limit` allows."""


def check_pixel_memory(nbytes: int, limit: int, what: str) -> None:
    """Raise PixelLimitError, naming the setting, when `what` (e.g. "a frame of 512x512x3 pixels") needs
    more than `limit` bytes at once."""
    if nbytes > limit:
        raise PixelLimitError(
            f"{what} needs {nbytes / 2**20:.0f} MiB, more than the server's limit of "
            f"{limit / 2**20:.0f} MiB (pixel_memory_limit)"
        )


class PixelService:
    """Runs decode/encode/render work in `workers` threads (reads, numpy and Pillow release the GIL) and
    the codec calls in as many processes, so searches and stores go on while frames are
    transcoded."""

    def __init__(self, *, workers: int, memory_limit: int) -> None:
        self.memory_limit = memory_limit
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="dicomd-pixels")
        # codec calls, which hold the GIL (and are not all thread-safe), go on to processes of their own
        self._codecs = codec_processes.CodecProcesses(workers)
        codec_processes.use(self._codecs)

    async def run(self, fn: Callable[..., _T], *args: object) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, partial(fn, *args))

    def check_memory(self, nbytes: int, what: str) -> None:
        check_pixel_memory(nbytes, self.memory_limit, what)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        codec_processes.use(None)
        self._codecs.close()
