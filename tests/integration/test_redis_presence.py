"""RedisPresenceStore against a real Redis, with expiry driven by a ManualClock."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from tidings.adapters.clock import ManualClock
from tidings.adapters.redis import RedisPresenceStore
from tidings.types import ClientInfo, PresenceStats

pytestmark = pytest.mark.redis

ALICE_1 = ClientInfo(user="alice", client="a1", conn_info=b'{"device":"phone"}')
ALICE_2 = ClientInfo(user="alice", client="a2", chan_info=b"\x80\x81binary")
BOB = ClientInfo(user="bob", client="b1")

StoreFactory = Callable[[], RedisPresenceStore]


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(redis: Redis) -> AsyncIterator[str]:
    value = f"tidings-test-{uuid.uuid4().hex[:12]}"
    yield value
    keys = [key async for key in redis.scan_iter(match=f"{value}:*", count=500)]
    if keys:
        await redis.delete(*keys)


@pytest.fixture
async def make_store(
    redis_url: str, prefix: str, clock: ManualClock
) -> AsyncIterator[StoreFactory]:
    stores: list[RedisPresenceStore] = []

    def factory() -> RedisPresenceStore:
        store = RedisPresenceStore(redis_url, clock, prefix=prefix)
        stores.append(store)
        return store

    yield factory
    for store in stores:
        await store.close()


async def test_add_get_refresh_remove(make_store: StoreFactory) -> None:
    store = make_store()
    assert await store.get("room") == {}

    await store.add("room", ALICE_1, ttl=30)
    await store.add("room", BOB, ttl=30)
    assert await store.get("room") == {"a1": ALICE_1, "b1": BOB}

    updated = ClientInfo(user="alice", client="a1", conn_info=b'{"device":"laptop"}')
    await store.add("room", updated, ttl=30)
    assert await store.get("room") == {"a1": updated, "b1": BOB}

    await store.remove("room", "a1")
    assert await store.get("room") == {"b1": BOB}
    await store.remove("room", "a1")
    await store.remove("nowhere", "a1")
    assert await store.get("room") == {"b1": BOB}
    assert await store.get("other-room") == {}


async def test_entries_expire_by_the_injected_clock(
    make_store: StoreFactory, clock: ManualClock, redis: Redis, prefix: str
) -> None:
    store = make_store()
    await store.add("room", ALICE_1, ttl=10)
    await store.add("room", BOB, ttl=20)

    clock.advance(5)
    assert set(await store.get("room")) == {"a1", "b1"}
    await store.add("room", ALICE_1, ttl=10)  # heartbeat: valid until t+15

    clock.advance(9)  # t+14
    assert set(await store.get("room")) == {"a1", "b1"}

    clock.advance(1)  # t+15: a1's entry ends exactly now
    assert set(await store.get("room")) == {"b1"}
    assert await redis.hkeys(f"{prefix}:ph:{{room}}") == [b"b1"]
    assert await redis.zrange(f"{prefix}:pz:{{room}}", 0, -1) == [b"b1"]

    clock.advance(5)
    assert await store.get("room") == {}
    assert await store.stats("room") == PresenceStats(num_clients=0, num_users=0)


async def test_keys_carry_a_redis_ttl_covering_the_longest_entry(
    make_store: StoreFactory, redis: Redis, prefix: str
) -> None:
    store = make_store()
    await store.add("room", ALICE_1, ttl=600)
    await store.add("room", BOB, ttl=5)  # must not shorten the keys' lifetime
    for kind in ("ph", "pz"):
        ttl_ms = await redis.pttl(f"{prefix}:{kind}:{{room}}")
        assert 600_000 < ttl_ms <= 660_000


async def test_stats_count_clients_and_distinct_users(
    make_store: StoreFactory, clock: ManualClock
) -> None:
    store = make_store()
    await store.add("room", ALICE_1, ttl=10)
    await store.add("room", ALICE_2, ttl=30)
    await store.add("room", BOB, ttl=30)
    assert await store.stats("room") == PresenceStats(num_clients=3, num_users=2)

    clock.advance(15)
    assert await store.stats("room") == PresenceStats(num_clients=2, num_users=2)
    await store.remove("room", "b1")
    assert await store.stats("room") == PresenceStats(num_clients=1, num_users=1)


async def test_two_store_instances_agree(make_store: StoreFactory, clock: ManualClock) -> None:
    node_a, node_b = make_store(), make_store()
    await node_a.add("room", ALICE_1, ttl=10)
    await node_b.add("room", BOB, ttl=30)
    await node_b.add("room", ALICE_2, ttl=30)

    expected = {"a1": ALICE_1, "a2": ALICE_2, "b1": BOB}
    assert await node_a.get("room") == expected
    assert await node_b.get("room") == expected

    await node_a.remove("room", "a2")
    clock.advance(10)
    assert await node_b.get("room") == {"b1": BOB}
    assert await node_a.stats("room") == PresenceStats(num_clients=1, num_users=1)


async def test_many_expired_entries_are_pruned_at_once(
    make_store: StoreFactory, clock: ManualClock, redis: Redis, prefix: str
) -> None:
    store = make_store()
    for i in range(1200):
        await store.add("big", ClientInfo(user=f"u{i % 7}", client=f"c{i}"), ttl=1)
    await store.add("big", BOB, ttl=60)
    assert await store.stats("big") == PresenceStats(num_clients=1201, num_users=8)

    clock.advance(2)
    assert await store.get("big") == {"b1": BOB}
    assert await redis.hlen(f"{prefix}:ph:{{big}}") == 1
