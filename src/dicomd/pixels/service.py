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
        """Raise PixelLimitError when `what` (e.g. "frame 3 (512x512x3, 16 bits)") needs more than the
        limit."""
        if nbytes > self.memory_limit:
            raise PixelLimitError(
                f"{what} needs {nbytes / 2**20:.0f} MiB of decoded pixel data, more than the server's "
                f"limit of {self.memory_limit / 2**20:.0f} MiB (pixel_memory_limit)"
            )

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        codec_processes.use(None)
        self._codecs.close()
