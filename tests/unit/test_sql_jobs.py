"""The SQLite job queue's claim: a poll that finds nothing takes no write lock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.unit.test_sqlite_driver import sqlite_engine
from tidings.adapters.clock import ManualClock
from tidings.adapters.sql.engine import lane_lock
from tidings.adapters.sql.jobs import SqlJobQueue
from tidings.adapters.sql.tables import metadata
from tidings.types import NewJob, Priority

LANES = (Priority.TRANSACTIONAL, Priority.BULK)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with sqlite_engine(tmp_path, metadata) as e:
        yield e


async def test_a_claim_takes_the_write_lock_only_when_a_job_is_due(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ManualClock()
    queue = SqlJobQueue(engine, clock)
    lock = lane_lock(engine)
    taken: list[Priority | None] = []
    acquire = lock.acquire

    async def counted(lane: Priority | None = None) -> None:
        taken.append(lane)
        await acquire(lane)

    monkeypatch.setattr(lock, "acquire", counted)
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
