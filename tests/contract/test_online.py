"""Contract of the user-presence ports: `DeviceStore` on memory and Redis, `PresenceRecords`
on memory, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.contract.conftest import sql_url
from tidings.adapters import sql
from tidings.adapters.clock import ManualClock
from tidings.adapters.memory.online import MemoryDeviceStore, MemoryPresenceRecords
from tidings.adapters.redis.online import RedisDeviceStore
from tidings.adapters.sql.online import SqlPresenceRecords
from tidings.core.online import Device, Privacy


@dataclass
class DeviceKit:
    clock: ManualClock
    store: Any


@pytest.fixture(params=["memory", "redis"])
async def devices(request: pytest.FixtureRequest) -> AsyncIterator[DeviceKit]:
    clock = ManualClock()
    store: Any
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        store = RedisDeviceStore(url, clock, prefix=f"contract-{uuid.uuid4().hex[:10]}")
    else:
        store = MemoryDeviceStore(clock)
    try:
        yield DeviceKit(clock, store)
    finally:
        await store.close()


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def records(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield MemoryPresenceRecords()
        return
    url = await sql_url(request, request.param, tmp_path)
    engine = sql.create_engine(url)
    try:
        yield SqlPresenceRecords(engine)
    finally:
        await engine.dispose()


def device(id: str, at: float, **kw: Any) -> Device:
    return Device(id=id, heartbeat_at=at, active_at=at, **kw)


async def test_put_get_replace_and_expire(devices: DeviceKit) -> None:
    store, clock = devices.store, devices.clock
    now = clock.now()
    assert await store.get("alice") == []
    await store.put("alice", device("d1", now, kind="web", channels=("chat:1",)), 30.0)
    await store.put("alice", device("d2", now, foreground=False, kind="ios"), 10.0)
    await store.put("bob", device("d9", now), 30.0)
    got = {d.id: d for d in await store.get("alice")}
    assert got["d1"] == device("d1", now, kind="web", channels=("chat:1",))
    assert got["d2"].foreground is False and got["d2"].kind == "ios"
    await store.put("alice", device("d1", now + 1, connected=False), 30.0)  # replaces
    assert {d.id: d.connected for d in await store.get("alice")} == {"d1": False, "d2": True}
    clock.advance(11)
    assert [d.id for d in await store.get("alice")] == ["d1"]  # d2's ttl ran out
    assert [d.id for d in await store.get("bob")] == ["d9"]


async def test_mark_flips_once_and_numbers_transitions(devices: DeviceKit) -> None:
    store = devices.store
    assert await store.mark("alice", False) is None  # not online: nothing to flip
    assert await store.mark("alice", True) == 1
    assert await store.mark("alice", True) is None
    results = await asyncio.gather(*(store.mark("alice", False) for _ in range(10)))
    assert sorted(r for r in results if r is not None) == [2]  # exactly one wins
    assert await store.mark("alice", True) == 3


async def test_going_offline_only_while_still_silent(devices: DeviceKit) -> None:
    """A device that reported between a sweep's read and its flip keeps the user online."""
    store, clock = devices.store, devices.clock
    t0 = clock.now()
    await store.put("alice", device("d1", t0), 300.0)
    assert await store.mark("alice", True) == 1
    await store.put("alice", device("d2", t0 + 50), 300.0)  # the late report
    assert await store.mark("alice", False, silent_before=t0 + 10) is None
    assert {d.id for d in await store.get("alice")} == {"d1", "d2"}  # nothing dropped
    assert await store.silent_users(t0 + 100, 10) == ["alice"]
    assert await store.mark("alice", False, silent_before=t0 + 50) == 2
    assert await store.get("alice") == []


async def test_going_offline_drops_devices_and_heartbeat(devices: DeviceKit) -> None:
    store, clock = devices.store, devices.clock
    await store.put("alice", device("d1", clock.now()), 300.0)
    await store.mark("alice", True)
    await store.mark("alice", False)
    assert await store.get("alice") == []
    assert await store.silent_users(clock.now() + 1000, 10) == []


async def test_silent_users_are_online_users_with_old_heartbeats(devices: DeviceKit) -> None:
    store, clock = devices.store, devices.clock
    t0 = clock.now()
    for i, user in enumerate(["u1", "u2", "u3", "u4"]):
        await store.put(user, device("d", t0 + i * 10), 300.0)
        await store.mark(user, True)
    await store.put("u5", device("d", t0), 300.0)  # never marked online
    await store.put("u1", device("d2", t0 + 35), 300.0)  # a newer heartbeat on another device
    await store.put("u1", device("d3", t0 + 5), 300.0)  # an older one does not move it back
    assert await store.silent_users(t0 + 25, 10) == ["u2", "u3"]
    assert await store.silent_users(t0 + 100, 1) == ["u2"]


async def test_last_seen_keeps_the_newest(records: Any) -> None:
    assert await records.last_seen("alice") is None
    await records.save_last_seen("alice", 1000.5)
    await records.save_last_seen("alice", 900.0)  # older: kept as is
    assert await records.last_seen("alice") == 1000.5
    await records.save_last_seen("alice", 1200.25)
    assert await records.last_seen("alice") == 1200.25
    assert await records.last_seen("bob") is None


async def test_privacy_defaults_and_round_trips(records: Any) -> None:
    assert await records.privacy("alice") == Privacy()
    await records.set_privacy("alice", Privacy(hide_online=True))
    assert await records.privacy("alice") == Privacy(hide_online=True)
    await records.save_last_seen("alice", 5.0)  # does not reset privacy
    await records.set_privacy("alice", Privacy(hide_online=True, hide_last_seen=True))
    assert await records.privacy("alice") == Privacy(hide_online=True, hide_last_seen=True)
    assert await records.last_seen("alice") == 5.0
    await records.set_privacy("bob", Privacy(hide_last_seen=True))
    assert await records.hidden_users() == {"alice"}


async def test_contact_lists_are_replaced_whole(records: Any) -> None:
    assert await records.contacts("alice") == []
    await records.set_contacts("alice", ["carol", "bob"])
    await records.set_contacts("dave", ["alice"])
    assert await records.contacts("alice") == ["bob", "carol"]
    await records.set_contacts("alice", ["erin", "bob"])
    assert await records.contacts("alice") == ["bob", "erin"]
    await records.set_privacy("alice", Privacy(hide_online=True))  # independent records
    await records.save_last_seen("alice", 7.0)
    assert await records.contacts("alice") == ["bob", "erin"]
    await records.set_contacts("alice", [])
    assert await records.contacts("alice") == []
    assert await records.contacts("dave") == ["alice"]
    assert await records.privacy("alice") == Privacy(hide_online=True)


async def test_concurrent_replacements_leave_one_whole_list(records: Any) -> None:
    lists = [[f"c{i}-{j}" for j in range(20)] for i in range(6)]
    await asyncio.gather(*(records.set_contacts("alice", one) for one in lists))
    assert await records.contacts("alice") in [sorted(one) for one in lists]
