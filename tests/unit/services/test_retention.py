"""Retention of done jobs: old ones are deleted in bounded transactions, everything else
stays, and the background loop survives a failing store."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tidings.adapters.clock import ManualClock
from tidings.adapters.memory.jobs import MemoryJobQueue
from tidings.services.retention import JobRetention
from tidings.types import JobState, NewJob, Priority

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
