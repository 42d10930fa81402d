from __future__ import annotations

from tests.contract.conftest import PresenceKit
from tidings.types import ClientInfo, PresenceStats

CH = "room:1"


def info(client: str, user: str = "u1", conn_info: bytes | None = None) -> ClientInfo:
    return ClientInfo(user=user, client=client, conn_info=conn_info)


async def test_add_get_and_stats(presence: PresenceKit) -> None:
    store = presence.store
    assert await store.get(CH) == {}
    assert await store.stats(CH) == PresenceStats(num_clients=0, num_users=0)
    await store.add(CH, info("c1", "alice", b'{"x":1}'), 30.0)
    await store.add(CH, info("c2", "alice"), 30.0)
    await store.add(CH, info("c3", "bob"), 30.0)
    await store.add("room:2", info("c9", "carol"), 30.0)
    got = await store.get(CH)
    assert set(got) == {"c1", "c2", "c3"}
    assert got["c1"] == info("c1", "alice", b'{"x":1}')
    assert await store.stats(CH) == PresenceStats(num_clients=3, num_users=2)
    assert set(await store.get("room:2")) == {"c9"}


async def test_add_again_refreshes_ttl_and_info(presence: PresenceKit) -> None:
    store, clock = presence.store, presence.clock
    await store.add(CH, info("c1", conn_info=b"1"), 10.0)
    clock.advance(8)
    await store.add(CH, info("c1", conn_info=b"2"), 10.0)  # heartbeat
    clock.advance(8)
    got = await store.get(CH)
    assert got == {"c1": info("c1", conn_info=b"2")}


async def test_expired_entries_are_never_returned(presence: PresenceKit) -> None:
    store, clock = presence.store, presence.clock
    await store.add(CH, info("c1", "alice"), 10.0)
    await store.add(CH, info("c2", "bob"), 20.0)
    clock.advance(9.5)
    assert set(await store.get(CH)) == {"c1", "c2"}
    clock.advance(0.5)  # exactly the TTL: c1's gateway died without cleanup
    assert set(await store.get(CH)) == {"c2"}
    assert await store.stats(CH) == PresenceStats(num_clients=1, num_users=1)
    clock.advance(10)
    assert await store.get(CH) == {}
    assert await store.stats(CH) == PresenceStats(num_clients=0, num_users=0)


async def test_remove_one_and_remove_absent(presence: PresenceKit) -> None:
    store = presence.store
    await store.add(CH, info("c1"), 30.0)
    await store.add(CH, info("c2", "u2"), 30.0)
    await store.remove(CH, "c1")
    assert set(await store.get(CH)) == {"c2"}
    await store.remove(CH, "c1")  # absent: no-op
    await store.remove("nowhere", "c1")
    await store.remove(CH, "c2")
    assert await store.get(CH) == {}
    await store.add(CH, info("c1"), 30.0)  # the channel works again after emptying
    assert set(await store.get(CH)) == {"c1"}
