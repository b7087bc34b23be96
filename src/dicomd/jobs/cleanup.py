"""Background removal of stored objects whose index rows were deleted or replaced.

The queue lives in the index (table deleted_object, filled in the same transaction that removed the
rows), so pending removals survive restarts. Object keys are unique per stored version and never reused,
so removing one can never take away something still referenced. Every worker of every replica runs the
loop; claiming a row pushes its next attempt into the future (PostgreSQL: under ``FOR UPDATE SKIP
LOCKED``, so concurrent claims get disjoint rows), so workers rarely collide and a collision is harmless
(deletion is idempotent). A worker killed mid-pass leaves its claims to be retried by any other once
their back-off has passed. Failing passes are retried with growing pauses (jobs/schedule.py). An
object becomes due ``Index.delete_grace_ms`` after its delete, so a reader that found it before the
delete (a study retrieve opens its files one after another) still reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from dicomd.index.store import Index
from dicomd.jobs.schedule import next_delay
from dicomd.storage import ObjectStore

log = logging.getLogger(__name__)


class CleanupJob:
    def __init__(self, index: Index, store: ObjectStore, *, interval: float = 10.0, batch: int = 200) -> None:
        self.index = index
        self.store = store
        self.interval = interval
        self.batch = batch
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="object-cleanup")

    async def stop(self) -> None:
        """Stop after the pass in progress (its thread uses the index, which is closed next)."""
        if self._task is not None:
            self._stopping = True
            self._wake.set()
            await self._task

    def wake(self) -> None:
        """Something was deleted: its objects are due once the grace period is over."""
        grace = self.index.delete_grace_ms / 1000
        if grace <= 0:
            self._wake.set()
        elif grace < self.interval:  # otherwise the periodic pass finds it in time
            asyncio.get_running_loop().call_later(grace + 0.05, self._wake.set)

    def run_once(self) -> int:
        """Remove one batch of due objects; returns how many were removed."""
        claimed = self.index.claim_deleted_objects(self.batch)
        done: list[int] = []
        for row_id, key in claimed:
            try:
                self.store.delete(key)
            except Exception as exc:
                # the store is likely down or full: stop here; this batch's other claims come back after
                # their back-off, as this one does
                log.warning("removing a deleted object failed (%s); it will be retried", type(exc).__name__)
                break
            done.append(row_id)
        if done:
            self.index.forget_deleted_objects(done)
        return len(done)

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                while await asyncio.to_thread(self.run_once) >= self.batch and not self._stopping:
                    pass
                failures = 0
            except Exception as exc:
                failures += 1
                log.warning("object cleanup pass failed (%s); retrying with back-off", type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), next_delay(self.interval, failures))
            self._wake.clear()
