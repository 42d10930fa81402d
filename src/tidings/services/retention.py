"""Retention of finished jobs.

Every delivery, dispatch, batch and wake is a row of the job queue, and a finished one is
kept as `done`: without pruning the table grows by several rows per message sent, for ever.
`JobRetention` deletes done jobs due longer than `retention` seconds ago, a bounded number
per transaction (a short write that transactional work never waits long behind), until
none is left, then sleeps `every` seconds. Dead jobs stay: the dead-letter queue is for an
operator to replay or discard.

A deleted job frees its dedupe key. Every job kind's handler is idempotent (a job runs at
least once), so a key enqueued again after its job was pruned repeats no effect: a delivery
finds its message sent, a wake finds its run moved on.
"""

from __future__ import annotations

import asyncio
import logging

from tidings.ports.clock import Clock
from tidings.ports.jobs import JobQueue
from tidings.tasks import cancel
from tidings.types import CURRENT_LANE, Priority

log = logging.getLogger(__name__)

PRUNE_BATCH = 1000  # done jobs deleted per transaction


class JobRetention:
    def __init__(
        self,
        jobs: JobQueue,
        clock: Clock,
        retention: float,
        *,
        every: float = 60.0,
        batch: int = PRUNE_BATCH,
    ) -> None:
        self.jobs = jobs
        self.clock = clock
        self.retention = retention
        self.every = every
        self.batch = batch
        self.pruned = 0  # jobs deleted since start
        self._task: asyncio.Task[None] | None = None

    async def prune(self) -> int:
        """Delete every done job due before `now - retention`, `batch` per transaction;
        returns how many."""
        before = self.clock.now() - self.retention
        total = 0
        while True:
            deleted = await self.jobs.prune(before, self.batch)
            total += deleted
            if deleted < self.batch:
                break
            await asyncio.sleep(0)  # other work between transactions
        self.pruned += total
        return total

    def start(self) -> None:
        if self.retention > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="retention")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None

    async def _loop(self) -> None:
        CURRENT_LANE.set(Priority.BULK)  # background work: transactional writers go first
        while True:
            try:
                deleted = await self.prune()
                if deleted:
                    log.info("done jobs pruned", extra={"count": deleted})
            except Exception:
                log.warning("done jobs not pruned; trying again later", exc_info=True)
            await asyncio.sleep(self.every)
