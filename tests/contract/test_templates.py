"""Contract of the template store on memory, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.contract.conftest import sql_url
from tidings.adapters import sql
from tidings.adapters.clock import ManualClock
from tidings.adapters.memory.templates import MemoryTemplateStore
from tidings.adapters.sql.templates import SqlTemplateStore
from tidings.errors import Conflict, NotFound
from tidings.ports.templates import VersionState


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    clock = ManualClock()
    if request.param == "memory":
        yield MemoryTemplateStore(clock)
        return
    url = await sql_url(request, request.param, tmp_path)
    engine = sql.create_engine(url)
    try:
        yield SqlTemplateStore(engine, clock)
    finally:
        await engine.dispose()


BODY = {"locales": {"en": {"text": "hi {{ payload.name }}"}}}


async def test_create_get_and_conflict(store: Any) -> None:
    t = await store.create("welcome", "Welcome", "sms")
    assert (t.id, t.name, t.channel, t.published_version) == ("welcome", "Welcome", "sms", None)
    assert await store.get("welcome") == t
    with pytest.raises(Conflict):
        await store.create("welcome", "Again", "sms")
    await store.create("alpha", "A", "email")
    assert [x.id for x in await store.all()] == ["alpha", "welcome"]
    with pytest.raises(NotFound):
        await store.get("nope")


async def test_versions_are_numbered_and_concurrent_adds_never_collide(store: Any) -> None:
    await store.create("t", "T", "sms")
    versions = await asyncio.gather(*(store.add_version("t", {**BODY, "n": i}) for i in range(12)))
    assert sorted(v.version for v in versions) == list(range(1, 13))
    assert all(v.state is VersionState.DRAFT for v in versions)
    listed = await store.versions("t")
    assert [v.version for v in listed] == list(range(1, 13))
    assert {v.body["n"] for v in listed} == set(range(12))
    with pytest.raises(NotFound):
        await store.add_version("nope", BODY)
    with pytest.raises(NotFound):
        await store.version("t", 13)


async def test_publish_archives_the_previous_and_rollback_republishes(store: Any) -> None:
    await store.create("t", "T", "sms")
    for _ in range(3):
        await store.add_version("t", BODY)
    await store.publish("t", 1)
    await store.publish("t", 2)
    states = {v.version: v.state for v in await store.versions("t")}
    assert states == {1: VersionState.ARCHIVED, 2: VersionState.PUBLISHED, 3: VersionState.DRAFT}
    assert (await store.get("t")).published_version == 2
    back = await store.publish("t", 1)  # roll back
    assert back.state is VersionState.PUBLISHED and back.published_at is not None
    states = {v.version: v.state for v in await store.versions("t")}
    assert states == {1: VersionState.PUBLISHED, 2: VersionState.ARCHIVED, 3: VersionState.DRAFT}
    again = await store.publish("t", 1)  # publishing the published one is harmless
    assert again.state is VersionState.PUBLISHED
    with pytest.raises(NotFound):
        await store.publish("t", 9)
    assert (await store.get("t")).published_version == 1
