"""Retention: finished jobs and notification history are deleted once old enough.

Every delivery, dispatch, batch and wake is a row of the job queue, and a finished one is
kept as `done`; every notification leaves a run with its step results, messages and trail,
and its event with its outcomes. Without pruning these tables grow by several rows per
message sent, for ever.

`Retention` runs prune steps in the background. Each step deletes rows older than its own
retention (`now - retention`), a bounded number per transaction (a short write that
transactional work never waits long behind), until a transaction deletes fewer than that;
then the loop sleeps `every` seconds. A step with retention 0 keeps everything. A failing
step is logged and tried again at the next round; the other steps go on.

- Done jobs (`JobRetention`, `worker.done_job_retention`): those due longer ago than the
  retention. Dead jobs stay: the dead-letter queue is for an operator to replay or discard.
  A deleted job frees its dedupe key. Every job kind's handler is idempotent (a job runs at
  least once), so a key enqueued again after its job was pruned repeats no effect: a
  delivery finds its message sent, a wake finds its run moved on.
- Notification history (`HistoryRetention`, `notify.history_retention`): done runs last
  written longer ago than the retention, with their step rows, messages, trail and digest
  rows (see `RunStore.prune`), then events created longer ago that are settled and that no
  run or campaign refers to any more, with their outcomes (`EventStore.prune`). Runs go
  first, so an event whose last runs went goes in the same round. A deleted event frees its
  idempotency key: the idempotency window is the history retention. A job that still names
  a deleted event or message fails permanently, as for any unknown one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from tidings.ports.clock import Clock
from tidings.ports.events import EventStore
from tidings.ports.jobs import JobQueue
from tidings.ports.notify import RunStore
from tidings.records import record
from tidings.tasks import cancel
from tidings.types import CURRENT_LANE, Priority

log = logging.getLogger(__name__)

PRUNE_BATCH = 1000  # rows (jobs, runs, events) deleted per transaction


@record
class PruneStep:
    """One kind of row to prune. `prune(before, limit)` deletes up to `limit` of them older
    than `before` in one transaction and returns how many; `what` names them in the logs."""

    what: str
    retention: float  # seconds kept; 0 keeps everything
    prune: Callable[[float, int], Awaitable[int]]


def job_steps(jobs: JobQueue, retention: float) -> list[PruneStep]:
    return [PruneStep("done jobs", retention, lambda before, n: jobs.prune(before, n))]


def history_steps(runs: RunStore, events: EventStore, retention: float) -> list[PruneStep]:
    return [
        PruneStep("notification runs", retention, lambda before, n: runs.prune(before, n)),
        PruneStep("events", retention, lambda before, n: events.prune(before, n)),
    ]


class Retention:
    def __init__(
        self,
        clock: Clock,
        steps: Sequence[PruneStep],
        *,
        every: float = 60.0,
        batch: int = PRUNE_BATCH,
        name: str = "retention",
    ) -> None:
        self.clock = clock
        self.steps = [s for s in steps if s.retention > 0]
        self.every = every
        self.batch = batch
        self.name = name
        self.pruned = 0  # rows deleted since start, every step together
        self._task: asyncio.Task[None] | None = None

    async def prune(self) -> int:
        """Run every step to its end, in order; returns how many rows they deleted. A
        failing step raises and the steps after it are not run."""
        total = 0
        for step in self.steps:
            total += await self.prune_step(step)
        return total

    async def prune_step(self, step: PruneStep) -> int:
        """Delete every row of the step older than `now - retention`, `batch` per
        transaction; returns how many."""
        before = self.clock.now() - step.retention
        total = 0
        while True:
            deleted = await step.prune(before, self.batch)
            total += deleted
            self.pruned += deleted
            if deleted < self.batch:
                return total
            await asyncio.sleep(0)  # other work between transactions

    def start(self) -> None:
        if self.steps and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None

    async def _loop(self) -> None:
        CURRENT_LANE.set(Priority.BULK)  # background work: transactional writers go first
        while True:
            for step in self.steps:
                try:
                    deleted = await self.prune_step(step)
                    if deleted:
                        log.info(f"{step.what} pruned", extra={"count": deleted})
                except Exception:
                    log.warning(f"{step.what} not pruned; trying again later", exc_info=True)
            await asyncio.sleep(self.every)


class JobRetention(Retention):
    """Deletes done jobs due more than `retention` seconds ago."""

    def __init__(
        self,
        jobs: JobQueue,
        clock: Clock,
        retention: float,
        *,
        every: float = 60.0,
        batch: int = PRUNE_BATCH,
    ) -> None:
        super().__init__(clock, job_steps(jobs, retention), every=every, batch=batch)
        self.jobs = jobs
        self.retention = retention


class HistoryRetention(Retention):
    """Deletes the notification history older than `retention` seconds: done runs with their
    rows, then the events left without runs."""

    def __init__(
        self,
        runs: RunStore,
        events: EventStore,
        clock: Clock,
        retention: float,
        *,
        every: float = 60.0,
        batch: int = PRUNE_BATCH,
    ) -> None:
        super().__init__(
            clock,
            history_steps(runs, events, retention),
            every=every,
            batch=batch,
            name="history-retention",
        )
        self.runs = runs
        self.events = events
        self.retention = retention
