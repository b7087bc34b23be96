"""The orphan sweep: removal of stored objects that no index row names.

An object without a row is left by a process that died between uploading (``sync``) and committing, by a
commit that failed after the upload, or by a restore of an older index. Staged files of dead processes
are ``recover``'s; this sweep is for what reached the store itself, which on a cloud store outlives the
process that wrote it. With many replicas there is no start-up of the whole system, so every worker of
every replica runs this loop, and a pass runs only under the index's job lease (``Index.job_lease``: one
holder across all replicas; a replica that dies loses it).

A pass lists the objects older than ``orphan_grace_period`` (an upload that is about to be committed is
younger), asks the index in batches which keys it names (objects queued for removal count as named: the
cleanup job removes them after the delete grace period) and deletes the rest. Logs carry counts only.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from dataclasses import dataclass

from dicomd.index.store import Index
from dicomd.jobs.schedule import next_delay
from dicomd.storage import ObjectStore

log = logging.getLogger(__name__)

LEASE = "orphan-sweep"


@dataclass(frozen=True, slots=True)
class SweepResult:
    checked: int  # objects older than the grace period
    removed: int  # of those, the ones no index row named


class OrphanSweep:
    def __init__(
        self,
        index: Index,
        store: ObjectStore,
        *,
        grace_period: float,
        interval: float = 600.0,
        batch: int = 500,
        first_delay: float = 60.0,
    ) -> None:
        self.index = index
        self.store = store
        self.grace_period = grace_period
        self.interval = interval
        self.batch = batch
        self.first_delay = first_delay  # not in the rush of a start-up (the interval's jitter spreads it)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="orphan-sweep")

    async def stop(self) -> None:
        """Stop after the pass in progress (its thread uses the index, which is closed next)."""
        if self._task is not None:
            self._stop.set()
            await self._task

    def run_once(self) -> SweepResult | None:
        """One pass, when this process gets the lease; None when another one holds it."""
        with self.index.job_lease(LEASE) as held:
            if not held:
                return None
            checked = removed = 0
            stored = self.store.iter_stored(older_than=self.grace_period)
            while keys := list(itertools.islice(stored, self.batch)):
                known = self.index.known_objects(keys)
                for key in keys:
                    if key not in known and not self._stop.is_set():
                        self.store.delete(key)
                        removed += 1
                checked += len(keys)
                if self._stop.is_set():
                    break
        if removed:
            log.warning(
                "orphan sweep removed %d of %d stored objects that no index row named", removed, checked
            )
        else:
            log.info("orphan sweep checked %d stored objects: none orphaned", checked)
        return SweepResult(checked, removed)

    async def _run(self) -> None:
        failures = 0
        delay = next_delay(self.first_delay, 0)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            if self._stop.is_set():
                return
            try:
                await asyncio.to_thread(self.run_once)
                failures = 0
            except Exception as exc:
                failures += 1
                # no traceback: it may name objects; the type says whether the index or the store failed
                log.warning("orphan sweep pass failed (%s); retrying with back-off", type(exc).__name__)
            delay = next_delay(self.interval, failures)
