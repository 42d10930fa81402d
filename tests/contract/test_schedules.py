"""Contract of the schedule store on memory, SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.contract.conftest import sql_url
from tidings.adapters import sql
from tidings.adapters.memory.schedules import MemoryScheduleStore
from tidings.adapters.sql.schedules import SqlScheduleStore
from tidings.errors import Conflict, NotFound
from tidings.ports.schedules import Schedule, ScheduleState


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield MemoryScheduleStore()
        return
    url = await sql_url(request, request.param, tmp_path)
    engine = sql.create_engine(url)
    try:
        yield SqlScheduleStore(engine)
    finally:
        await engine.dispose()


def schedule(sid: str = "s1", subscriber: str = "alice", created: float = 1.0) -> Schedule:
    return Schedule(
        id=sid,
        subscriber=subscriber,
        timezone="Europe/Berlin",
        recurrence={"frequency": "daily", "at": "18:00"},
        event_type="digest.daily",
        payload={"kind": "daily", "n": [1, 2]},
        state=ScheduleState.ACTIVE,
        created_at=created,
        next_at=100.0,
    )


async def test_create_get_list_and_conflict(store: Any) -> None:
    created = await store.create(schedule())
    assert await store.get("s1") == created
    await store.create(schedule("s2", created=2.0))
    await store.create(schedule("s3", "bob"))
    assert [s.id for s in await store.for_subscriber("alice")] == ["s1", "s2"]
    with pytest.raises(Conflict):
        await store.create(schedule())
    with pytest.raises(NotFound):
        await store.get("nope")


async def test_update_and_fired_once_per_occurrence(store: Any) -> None:
    await store.create(schedule())
    s = await store.update("s1", state=ScheduleState.PAUSED, timezone="Asia/Tokyo")
    assert (s.state, s.timezone, s.next_at) == (ScheduleState.PAUSED, "Asia/Tokyo", 100.0)
    s = await store.fired("s1", 100.0, 200.0)
    assert (s.fired, s.last_fired_at, s.next_at) == (1, 100.0, 200.0)
    s = await store.fired("s1", 100.0, 200.0)  # a re-run after a crash
    assert s.fired == 1
    s = await store.fired("s1", 200.0, 300.0)
    assert (s.fired, s.next_at) == (2, 300.0)
    with pytest.raises(NotFound):
        await store.fired("nope", 1.0, 2.0)
    with pytest.raises(NotFound):
        await store.update("nope", state=ScheduleState.CANCELLED)
