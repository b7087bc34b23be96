"""The associations in progress across the DICOM listener processes, for ``dicom_max_associations``.

The supervisor starts several listener processes on one listening socket (one per core: a listener's
Python threads share one core), and the kernel hands each new connection to one of them. pynetdicom's
own limit counts one process's associations; the limit is on the archive's, so each process counts its
own in a slot of memory shared with the others and an association request is refused when the sum
is over the limit. One slot per process: a listener that dies takes nothing with it, since the
supervisor clears its slot for the listener that replaces it.
"""

from __future__ import annotations

import threading
from collections.abc import MutableSequence


class AssociationCount:
    """This process's slot of the shared counts (``slots``, one int per listener process)."""

    def __init__(self, slots: MutableSequence[int], own: int) -> None:
        self._slots = slots
        self._own = own
        self._lock = threading.Lock()  # this process's threads; no other process writes the slot

    @classmethod
    def single(cls) -> AssociationCount:
        """For a listener alone (in-process, tests)."""
        return cls([0], 0)

    def opened(self) -> None:
        with self._lock:
            self._slots[self._own] += 1

    def closed(self) -> None:
        with self._lock:
            self._slots[self._own] -= 1

    def total(self) -> int:
        """Associations in progress in all listener processes (the others' slots read as they are now)."""
        return sum(self._slots[:])
