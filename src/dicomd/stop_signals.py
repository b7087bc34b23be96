"""Turning SIGTERM / SIGINT into a ``threading.Event``, safely.

A Python signal handler runs in the main thread between any two bytecodes, including inside another run of
the same handler. ``Event.set()`` takes a plain (non-reentrant) lock, so a handler that calls it deadlocks
when a second signal lands while the first handler holds that lock. It happens: a process started by a
supervisor thread gets SIGTERM from the supervisor and, at the same moment, from PR_SET_PDEATHSIG when that
thread exits. So handlers only put the signal number on a ``queue.SimpleQueue`` (whose ``put`` is
documented reentrant) and a thread of ours sets the event.
"""

from __future__ import annotations

import queue
import signal
import threading
from collections.abc import Callable, Iterable
from types import FrameType

_STOP_WATCHING = -1


class StopSignals:
    """Sets ``stop`` (and calls ``on_signal``, off the handler) when one of ``signums`` arrives. Install
    from the main thread; ``restore()`` puts the previous handlers back."""

    def __init__(
        self,
        stop: threading.Event,
        signums: Iterable[int] = (signal.SIGTERM, signal.SIGINT),
        on_signal: Callable[[int], None] | None = None,
        *,
        second_interrupts: bool = False,
    ) -> None:
        self.stop = stop
        self.on_signal = on_signal
        self.second_interrupts = second_interrupts  # a second signal raises KeyboardInterrupt (Ctrl-C twice)
        self._count = 0
        self._received: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._watcher = threading.Thread(target=self._watch, name="stop-signals", daemon=True)
        self._watcher.start()
        self._previous = {signum: signal.signal(signum, self._handler) for signum in signums}

    def _handler(self, signum: int, _frame: FrameType | None) -> None:
        if self._count and self.second_interrupts:
            raise KeyboardInterrupt
        self._count += 1
        self._received.put(signum)  # nothing that takes a lock here: see the module docstring

    def _watch(self) -> None:
        while (signum := self._received.get()) != _STOP_WATCHING:
            self.stop.set()
            if self.on_signal is not None:
                self.on_signal(signum)

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._received.put(_STOP_WATCHING)
