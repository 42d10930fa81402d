"""SQLite's one writer: a claim that finds nothing, and a prune that finds nothing to delete,
take no write lock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.unit.test_sqlite_driver import sqlite_engine
from tidings.adapters.clock import ManualClock
from tidings.adapters.sql.engine import lane_lock
from tidings.adapters.sql.events import SqlEventStore
from tidings.adapters.sql.jobs import SqlJobQueue
from tidings.adapters.sql.notify import SqlRunStore
from tidings.adapters.sql.tables import metadata
from tidings.types import NewJob, Priority

LANES = (Priority.TRANSACTIONAL, Priority.BULK)


def count_locks(engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> list[Priority | None]:
    """The lanes of the writer lock's acquisitions, from now on."""
    lock = lane_lock(engine)
    taken: list[Priority | None] = []
    acquire = lock.acquire

    async def counted(lane: Priority | None = None) -> None:
        taken.append(lane)
        await acquire(lane)

    monkeypatch.setattr(lock, "acquire", counted)
    return taken


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with sqlite_engine(tmp_path, metadata) as e:
        yield e


async def test_a_claim_takes_the_write_lock_only_when_a_job_is_due(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ManualClock()
    queue = SqlJobQueue(engine, clock)
    taken = count_locks(engine, monkeypatch)
    assert await queue.claim("w", LANES, 5, 30.0) == []
    assert taken == []  # an empty queue: no write transaction
    await queue.enqueue(NewJob(kind="k", payload={}, run_at=clock.now() + 10))
    writes = len(taken)  # the enqueue's
    assert await queue.claim("w", LANES, 5, 30.0) == []  # not due yet
    assert len(taken) == writes
    clock.advance(10)
    (job,) = await queue.claim("w", LANES, 5, 30.0)
    assert job.kind == "k" and len(taken) == writes + 1
    clock.advance(60)  # its lease ran out: claimable again
    (again,) = await queue.claim("w", LANES, 5, 30.0)
    assert again.id == job.id and again.attempts == 2
    assert len(taken) == writes + 2


async def test_a_prune_with_nothing_to_delete_takes_no_write_lock(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ManualClock()
    queue = SqlJobQueue(engine, clock)
    events, runs = SqlEventStore(engine, clock), SqlRunStore(engine, clock)
    await queue.enqueue(NewJob(kind="k", payload={}))
    (job,) = await queue.claim("w", LANES, 5, 30.0)
    await queue.complete(job.id, job.lease_token)
    taken = count_locks(engine, monkeypatch)
    before = clock.now() - 60
    assert [await queue.prune(before, 10), await events.prune(before, 10)] == [0, 0]
    assert await runs.prune(before, 10) == 0
    assert taken == []
    clock.advance(120)
    assert await queue.prune(clock.now() - 60, 10) == 1  # the done job, old enough now
    assert len(taken) == 1
