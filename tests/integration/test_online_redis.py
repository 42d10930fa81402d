"""Two gateways on one Redis agree on a user's presence, and a user whose gateway died
without cleanup is taken offline by the other one, once."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from tidings.adapters.clock import ManualClock
from tidings.adapters.memory.online import MemoryPresenceRecords
from tidings.adapters.redis.online import RedisDeviceStore
from tidings.core.online import Device, PresenceConfig, Status
from tidings.services.online import OnlineService

pytestmark = pytest.mark.redis


@pytest.fixture
async def prefix(redis_url: str) -> AsyncIterator[str]:
    value = f"tidings-test-{uuid.uuid4().hex[:12]}"
    yield value
    client = Redis.from_url(redis_url)
    keys = [key async for key in client.scan_iter(match=f"{value}:*", count=500)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def test_two_gateways_agree_and_one_takes_the_dead_ones_users_offline(
    redis_url: str, prefix: str
) -> None:
    clock = ManualClock()
    records = MemoryPresenceRecords()
    emitted: list[tuple[str, str]] = []

    async def emit(kind: str, key: str, _payload: dict[str, Any]) -> None:
        emitted.append((kind, key))

    def gateway() -> OnlineService:
        store = RedisDeviceStore(redis_url, clock, prefix=prefix)
        return OnlineService(store, records, clock, PresenceConfig(update_interval=0), emit=emit)

    a, b = gateway(), gateway()
    try:
        now = clock.now()
        await a.report("alice", Device("desk", now, now, kind="desktop"))
        await b.report("alice", Device("phone", now, now, foreground=False, kind="ios"))
        seen_a, seen_b = await a.get("alice"), await b.get("alice")
        assert seen_a.status is seen_b.status is Status.ACTIVE
        assert (
            {d.id for d, _ in seen_a.devices}
            == {d.id for d, _ in seen_b.devices}
            == {
                "desk",
                "phone",
            }
        )
        assert emitted == [("user.online", "presence:alice:1")]  # one gateway, once

        # Gateway a dies; only the phone on b keeps its heartbeat going.
        for _ in range(5):
            clock.advance(20)
            t = clock.now()
            await b.report("alice", Device("phone", t, now, foreground=False, kind="ios"))
            assert await b.sweep() == 0
        assert (await b.get("alice")).status is Status.IDLE
        assert [d.id for d, _ in (await b.get("alice")).devices] == ["phone"]

        # Then b loses the phone too: both sweep, exactly one takes alice offline.
        clock.advance(91)
        gone = await a.sweep() + await b.sweep()
        assert gone == 1
        assert emitted[-1] == ("user.offline", "presence:alice:2")
        assert (await a.get("alice")).status is (await b.get("alice")).status is Status.OFFLINE
    finally:
        await a.devices.close()
        await b.devices.close()
