"""Retention of done jobs and of notification history: old rows are deleted in bounded
transactions, everything else stays, and the background loop survives a failing store."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any

import pytest

from tidings.adapters.clock import ManualClock
from tidings.adapters.memory.events import MemoryEventStore
from tidings.adapters.memory.jobs import MemoryJobQueue
from tidings.adapters.memory.notify import MemoryRunStore
from tidings.ports.notify import Message, Run, RunState, RunWrite
from tidings.services.retention import (
    HistoryRetention,
    JobRetention,
    Retention,
    history_steps,
    job_steps,
)
from tidings.types import EventState, JobState, NewEvent, NewJob, Priority

DAY = 86400.0


async def finish(jobs: MemoryJobQueue, n: int) -> list[str]:
    ids = [await jobs.enqueue(NewJob(kind="k", payload={"n": i})) for i in range(n)]
    for job in await jobs.claim("w", [Priority.TRANSACTIONAL], n, 30.0):
        await jobs.complete(job.id, job.lease_token or "")
    return ids


def watch_prune(jobs: MemoryJobQueue, *, fail_first: bool = False) -> list[float]:
    """Wrap `jobs.prune`; the list returned gets each call's cutoff. With `fail_first`, the
    first call raises, as a store that went away would."""
    calls: list[float] = []
    prune = jobs.prune

    async def watched(before: float, limit: int) -> Any:
        calls.append(before)
        if fail_first and len(calls) == 1:
            raise ConnectionError("database went away")
        return await prune(before, limit)

    jobs.prune = watched  # type: ignore[method-assign]
    return calls


async def test_prune_deletes_old_done_jobs_in_bounded_batches() -> None:
    clock = ManualClock(1_000_000.0)
    jobs = MemoryJobQueue(clock)
    old = await finish(jobs, 25)
    dead = await jobs.enqueue(NewJob(kind="poison", payload={}))
    [job] = await jobs.claim("w", [Priority.TRANSACTIONAL], 1, 30.0)
    await jobs.dead_letter(job.id, job.lease_token or "", "always fails")
    clock.advance(8 * DAY)
    recent = await finish(jobs, 3)
    calls: list[int] = []
    prune = jobs.prune

    async def counted(before: float, limit: int) -> int:
        deleted = await prune(before, limit)
        calls.append(deleted)
        return deleted

    jobs.prune = counted  # type: ignore[method-assign]
    retention = JobRetention(jobs, clock, 7 * DAY, batch=10)
    assert await retention.prune() == 25
    assert calls == [10, 10, 5]  # one transaction per batch, until a short one
    assert [await jobs.get(i) for i in old] == [None] * 25
    assert None not in [await jobs.get(i) for i in recent]
    kept = await jobs.get(dead)
    assert kept is not None and kept.state is JobState.DEAD
    assert await retention.prune() == 0 and retention.pruned == 25


async def test_zero_retention_keeps_everything_and_starts_nothing() -> None:
    clock = ManualClock(1_000_000.0)
    jobs = MemoryJobQueue(clock)
    old = await finish(jobs, 3)
    clock.advance(30 * DAY)
    calls = watch_prune(jobs)
    retention = JobRetention(jobs, clock, 0, every=0.01)
    retention.start()
    try:
        # A loop, had it started, would have pruned at once and then every 10 ms.
        await asyncio.sleep(0.1)
    finally:
        await retention.stop()
    assert calls == [] and retention.pruned == 0
    kept = [await jobs.get(i) for i in old]
    assert [j.state if j else None for j in kept] == [JobState.DONE] * 3


async def test_the_loop_goes_on_after_a_failing_prune(caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock(1_000_000.0)
    jobs = MemoryJobQueue(clock)
    await finish(jobs, 2)
    clock.advance(2 * DAY)
    attempts = watch_prune(jobs, fail_first=True)
    retention = JobRetention(jobs, clock, DAY, every=0.01)
    retention.start()
    try:
        for _ in range(100):
            if retention.pruned == 2:
                break
            await asyncio.sleep(0.01)
    finally:
        await retention.stop()
    assert retention.pruned == 2 and len(attempts) >= 2
    assert "done jobs not pruned" in caplog.text


# -- notification history ---------------------------------------------------------------------


class History:
    """Memory run and event stores, the event store seeing the runs."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.runs = MemoryRunStore(clock)
        self.events = MemoryEventStore(clock, referenced=self._referenced)

    async def _referenced(self, event_id: str) -> bool:
        return bool(await self.runs.count_runs(event_id))

    async def event(self, state: RunState = RunState.DONE) -> str:
        """A dispatched event with one run in `state`, that run's message; the event id."""
        event_id = str(uuid.uuid4())
        await self.events.append(
            NewEvent(
                id=event_id,
                type="order.shipped",
                idempotency_key=f"key-{event_id}",
                body_hash="h",
                actor=None,
                recipients=("alice",),
                topic=None,
                channels=(),
                payload={},
                priority=Priority.TRANSACTIONAL,
                send_at=None,
            )
        )
        await self.events.set_state(event_id, EventState.DISPATCHED)
        now = self.clock.now()
        run = Run(f"r-{event_id}", event_id, "wf", "alice", Priority.TRANSACTIONAL, now)
        message = Message(
            id=f"m-{event_id}",
            run_id=run.id,
            event_id=event_id,
            recipient="alice",
            workflow="wf",
            step_id="email",
            channel="email",
            template=None,
            template_version="inline-1",
            lane=Priority.TRANSACTIONAL,
            status="sent",
            release_at=now,
            created_at=now,
            updated_at=now,
        )
        written = dataclasses.replace(run, state=state, outcome="completed")
        await self.runs.commit([RunWrite(written, messages=[message])])
        return event_id

    async def kept(self, event_ids: list[str]) -> list[str]:
        """The events among these that are still stored with their run and message."""
        found = []
        for event_id in event_ids:
            runs = await self.runs.get_runs([f"r-{event_id}"])
            message = await self.runs.message(f"m-{event_id}")
            if await self.events.get(event_id) is not None and runs and message is not None:
                found.append(event_id)
        return found


def count_prunes(store: Any, *, fail_first: bool = False) -> list[int]:
    """Wrap `store.prune`; the list returned gets each call's count (-1 for a failed one).
    With `fail_first`, the first call raises, as a store that went away would."""
    calls: list[int] = []
    prune = store.prune

    async def counted(before: float, limit: int) -> int:
        if fail_first and not calls:
            calls.append(-1)
            raise ConnectionError("database went away")
        deleted: int = await prune(before, limit)
        calls.append(deleted)
        return deleted

    store.prune = counted
    return calls


async def test_history_retention_deletes_old_done_runs_then_their_events() -> None:
    clock = ManualClock(1_000_000.0)
    h = History(clock)
    old = [await h.event() for _ in range(5)]
    waiting = await h.event(RunState.WAITING)
    clock.advance(31 * DAY)
    recent = await h.event()
    runs, events = count_prunes(h.runs), count_prunes(h.events)
    retention = HistoryRetention(h.runs, h.events, clock, 30 * DAY, batch=2)
    assert await retention.prune() == 10  # five runs, then their five events
    assert runs == [2, 2, 1] and events == [2, 2, 1]  # one transaction per batch
    assert await h.kept([*old, waiting, recent]) == [waiting, recent]
    assert await retention.prune() == 0 and retention.pruned == 10


async def test_zero_history_retention_keeps_everything_and_starts_nothing() -> None:
    clock = ManualClock(1_000_000.0)
    h = History(clock)
    old = [await h.event() for _ in range(3)]
    clock.advance(400 * DAY)
    runs, events = count_prunes(h.runs), count_prunes(h.events)
    retention = HistoryRetention(h.runs, h.events, clock, 0, every=0.01)
    retention.start()
    try:
        await asyncio.sleep(0.1)
    finally:
        await retention.stop()
    assert runs == [] and events == [] and retention.pruned == 0
    assert await h.kept(old) == old


async def test_the_history_loop_goes_on_after_a_failing_store(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock(1_000_000.0)
    h = History(clock)
    old = [await h.event() for _ in range(2)]
    clock.advance(2 * DAY)
    runs = count_prunes(h.runs, fail_first=True)
    events = count_prunes(h.events)
    retention = HistoryRetention(h.runs, h.events, clock, DAY, every=0.01)
    retention.start()
    try:
        for _ in range(100):
            if retention.pruned == 4:
                break
            await asyncio.sleep(0.01)
    finally:
        await retention.stop()
    assert retention.pruned == 4 and await h.kept(old) == []
    assert runs[:2] == [-1, 2]  # failed, then tried again at the next round
    assert events[:2] == [0, 2]  # the events step ran in the failed round: nothing to do
    assert "notification runs not pruned; trying again later" in caplog.text


async def test_one_loop_runs_each_step_with_its_own_retention() -> None:
    clock = ManualClock(1_000_000.0)
    jobs = MemoryJobQueue(clock)
    h = History(clock)
    await finish(jobs, 3)
    old = await h.event()
    clock.advance(10 * DAY)
    retention = Retention(
        clock,
        [*job_steps(jobs, 30 * DAY), *history_steps(h.runs, h.events, 7 * DAY)],
    )
    assert await retention.prune() == 2  # the history is old enough, the jobs are not
    assert await h.kept([old]) == []
    assert await jobs.prune(clock.now(), 10) == 3
    kept = Retention(clock, [*job_steps(jobs, 0), *history_steps(h.runs, h.events, 0)])
    assert kept.steps == []
