"""RedisBroker against a real Redis: two brokers with one prefix play two nodes of a cluster."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from tidings.adapters.clock import ManualClock
from tidings.adapters.redis import RedisBroker
from tidings.adapters.redis import broker as broker_module
from tidings.types import ClientInfo, Publication, StreamPosition

pytestmark = pytest.mark.redis

ALICE = ClientInfo(user="alice", client="c-alice", conn_info=b'{"name":"Alice"}')
BOB = ClientInfo(user="bob", client="c-bob", chan_info=b"\xff\x00not-utf8")


@dataclass
class Node:
    broker: RedisBroker
    pubs: list[Publication] = field(default_factory=list)
    joins: list[tuple[str, ClientInfo, bool]] = field(default_factory=list)

    def offsets(self, channel: str | None = None) -> list[int]:
        return [p.offset for p in self.pubs if channel is None or p.channel == channel]


NodeFactory = Callable[..., Awaitable[Node]]


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


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
async def make_node(redis_url: str, prefix: str, clock: ManualClock) -> AsyncIterator[NodeFactory]:
    brokers: list[RedisBroker] = []

    async def factory(node_id: str, *, start: bool = True) -> Node:
        broker = RedisBroker(redis_url, clock, prefix=prefix, node_id=node_id)
        brokers.append(broker)
        node = Node(broker)
        if start:
            await start_node(node)
        return node

    yield factory
    for broker in brokers:
        await broker.close()


async def start_node(node: Node) -> None:
    async def on_pub(pub: Publication) -> None:
        await asyncio.sleep(0)  # an awaiting handler must still see publications in order
        node.pubs.append(pub)

    def on_join_leave(channel: str, info: ClientInfo, joined: bool) -> None:
        node.joins.append((channel, info, joined))

    await node.broker.start(on_pub, on_join_leave)


async def test_publication_reaches_subscriber_on_other_node(
    make_node: NodeFactory, clock: ManualClock
) -> None:
    a, b = await make_node("a"), await make_node("b")
    await b.broker.subscribe("chat")

    pub = await a.broker.publish(
        "chat",
        b'{"text":"hi \\u00e9","n":1}',
        history_size=10,
        history_ttl=60,
        info=BOB,
        tags={"kind": "msg"},
        key="latest",
    )

    assert pub.offset == 1 and pub.epoch
    assert pub.time == clock.now()
    assert pub.info == BOB and pub.tags == {"kind": "msg"} and pub.key == "latest"
    await eventually(lambda: len(b.pubs) == 1)
    assert b.pubs[0] == pub
    await asyncio.sleep(0.05)
    assert a.pubs == []  # node A never subscribed


async def test_concurrent_publishes_from_two_nodes_keep_offset_order(
    make_node: NodeFactory,
) -> None:
    a, b = await make_node("a"), await make_node("b")
    await a.broker.subscribe("race")
    await b.broker.subscribe("race")

    async def burst(node: Node, tag: str) -> list[Publication]:
        return list(
            await asyncio.gather(
                *(
                    node.broker.publish(
                        "race",
                        orjson.dumps({"from": tag, "i": i}),
                        history_size=500,
                        history_ttl=60,
                    )
                    for i in range(100)
                )
            )
        )

    from_a, from_b = await asyncio.gather(burst(a, "a"), burst(b, "b"))
    published = sorted(from_a + from_b, key=lambda p: p.offset)
    assert [p.offset for p in published] == list(range(1, 201))
    assert len({p.epoch for p in published}) == 1

    await eventually(lambda: len(a.pubs) == 200 and len(b.pubs) == 200)
    assert a.offsets() == list(range(1, 201))
    assert b.offsets() == list(range(1, 201))
    assert a.pubs == published and b.pubs == published

    history = await b.broker.history("race", limit=-1)
    assert list(history.publications) == published
    assert history.position == StreamPosition(offset=200, epoch=published[0].epoch)


async def test_history_semantics(make_node: NodeFactory) -> None:
    a, b = await make_node("a"), await make_node("b")
    pubs = [
        await a.broker.publish("h", orjson.dumps(i), history_size=10, history_ttl=60)
        for i in range(1, 6)
    ]
    epoch = pubs[0].epoch
    position = StreamPosition(offset=5, epoch=epoch)

    only_position = await b.broker.history("h")
    assert only_position.position == position and only_position.publications == ()

    everything = await b.broker.history("h", limit=-1)
    assert everything.publications == tuple(pubs)

    first_two = await b.broker.history("h", limit=2)
    assert [p.offset for p in first_two.publications] == [1, 2]
    assert first_two.position == position

    after_two = await b.broker.history("h", since=StreamPosition(2, epoch), limit=-1)
    assert [p.offset for p in after_two.publications] == [3, 4, 5]

    one_after_two = await b.broker.history("h", since=StreamPosition(2, epoch), limit=1)
    assert [p.offset for p in one_after_two.publications] == [3]

    up_to_date = await b.broker.history("h", since=position, limit=-1)
    assert up_to_date.publications == () and up_to_date.position == position

    since_zero = await b.broker.history("h", since=StreamPosition(0, epoch), limit=-1)
    assert since_zero.publications == tuple(pubs)

    other_epoch = await b.broker.history("h", since=StreamPosition(2, "other"), limit=-1)
    assert other_epoch.publications == () and other_epoch.position == position

    position_with_since = await b.broker.history("h", since=StreamPosition(2, epoch))
    assert position_with_since.publications == ()


async def test_history_keeps_only_history_size_and_shows_the_gap(make_node: NodeFactory) -> None:
    a = await make_node("a")
    for i in range(6):
        last = await a.broker.publish("trim", orjson.dumps(i), history_size=3, history_ttl=60)

    kept = await a.broker.history("trim", limit=-1)
    assert [p.offset for p in kept.publications] == [4, 5, 6]
    recover = await a.broker.history("trim", since=StreamPosition(1, last.epoch), limit=-1)
    assert recover.publications[0].offset > 1 + 1  # recovery must be treated as failed


async def test_history_of_unknown_channel_creates_a_stable_epoch(make_node: NodeFactory) -> None:
    a, b = await make_node("a"), await make_node("b")
    first = await a.broker.history("fresh", limit=-1)
    assert first.position.offset == 0 and first.position.epoch and first.publications == ()
    again = await b.broker.history("fresh")
    assert again.position == first.position

    pub = await b.broker.publish("fresh", b"1", history_size=5, history_ttl=60)
    assert (pub.offset, pub.epoch) == (1, first.position.epoch)


async def test_remove_history_starts_a_new_epoch(make_node: NodeFactory, redis: Redis) -> None:
    a = await make_node("a")
    old = await a.broker.publish("gone", b"1", history_size=5, history_ttl=60)
    await a.broker.remove_history("gone")

    fresh = await a.broker.history("gone", since=StreamPosition(0, old.epoch), limit=-1)
    assert fresh.position.offset == 0 and fresh.position.epoch != old.epoch
    assert fresh.publications == ()
    pub = await a.broker.publish("gone", b"2", history_size=5, history_ttl=60)
    assert (pub.offset, pub.epoch) == (1, fresh.position.epoch)


async def test_idempotency_key_returns_the_original_publication(
    make_node: NodeFactory, clock: ManualClock
) -> None:
    a, b = await make_node("a"), await make_node("b")
    await b.broker.subscribe("idem")

    original = await a.broker.publish(
        "idem", b'{"v":1}', history_size=10, history_ttl=60, idempotency_key="k1", info=ALICE
    )
    clock.advance(5)
    repeat = await b.broker.publish(
        "idem", b'{"v":2}', history_size=10, history_ttl=60, idempotency_key="k1"
    )
    assert repeat == original
    other = await a.broker.publish(
        "idem", b'{"v":3}', history_size=10, history_ttl=60, idempotency_key="k2"
    )
    assert other.offset == 2
    elsewhere = await a.broker.publish(
        "idem-2", b'{"v":1}', history_size=10, history_ttl=60, idempotency_key="k1"
    )
    assert elsewhere.offset == 1 and elsewhere.channel == "idem-2"

    await eventually(lambda: len(b.pubs) == 2)
    await asyncio.sleep(0.05)
    assert b.offsets() == [1, 2]
    history = await a.broker.history("idem", limit=-1)
    assert [p.data for p in history.publications] == [b'{"v":1}', b'{"v":3}']


async def test_ttl_expiry_loses_the_stream_and_changes_epoch(
    make_node: NodeFactory, redis: Redis, prefix: str
) -> None:
    a = await make_node("a")
    first = await a.broker.publish(
        "short", b"1", history_size=5, history_ttl=0.3, idempotency_key="once"
    )
    ttl_ms = await redis.pttl(f"{prefix}:hs:{{short}}")
    assert 0 < ttl_ms <= 300
    assert 0 < await redis.pttl(f"{prefix}:hm:{{short}}") <= 300

    await asyncio.sleep(0.5)
    after = await a.broker.history("short", since=StreamPosition(1, first.epoch), limit=-1)
    assert after.position.offset == 0
    assert after.position.epoch != first.epoch
    assert after.publications == ()

    again = await a.broker.publish(
        "short", b"2", history_size=5, history_ttl=0.3, idempotency_key="once"
    )
    assert (again.offset, again.epoch, again.data) == (1, after.position.epoch, b"2")


async def test_zero_history_ttl_keeps_the_stream(
    make_node: NodeFactory, redis: Redis, prefix: str
) -> None:
    a = await make_node("a")
    await a.broker.publish("keep", b"1", history_size=5, history_ttl=0.3)
    await a.broker.publish("keep", b"2", history_size=5)
    assert await redis.pttl(f"{prefix}:hs:{{keep}}") == -1
    assert await redis.pttl(f"{prefix}:hm:{{keep}}") == -1


async def test_ephemeral_publication(make_node: NodeFactory, redis: Redis, prefix: str) -> None:
    a, b = await make_node("a"), await make_node("b")
    await b.broker.subscribe("live")

    pub = await a.broker.publish("live", b'{"cursor":[1,2]}', info=ALICE, key="cursor")
    assert (pub.offset, pub.epoch) == (0, "")
    await eventually(lambda: len(b.pubs) == 1)
    assert b.pubs[0] == pub

    history = await b.broker.history("live", limit=-1)
    assert history.position.offset == 0 and history.publications == ()
    assert await redis.exists(f"{prefix}:hs:{{live}}") == 0


async def test_join_and_leave_reach_other_node(make_node: NodeFactory) -> None:
    a, b = await make_node("a"), await make_node("b")
    await b.broker.subscribe("room")

    await a.broker.publish_join_leave("room", ALICE, True)
    await a.broker.publish_join_leave("room", BOB, True)
    await a.broker.publish_join_leave("room", ALICE, False)
    await a.broker.publish_join_leave("elsewhere", ALICE, True)

    await eventually(lambda: len(b.joins) == 3)
    await asyncio.sleep(0.05)
    assert b.joins == [("room", ALICE, True), ("room", BOB, True), ("room", ALICE, False)]
    assert b.pubs == [] and a.joins == []


async def test_unsubscribe_stops_delivery(make_node: NodeFactory) -> None:
    a, b = await make_node("a"), await make_node("b")
    await b.broker.subscribe("x")
    await b.broker.subscribe("y")
    await a.broker.publish("x", b"1", history_size=5, history_ttl=60)
    await eventually(lambda: len(b.pubs) == 1)

    await b.broker.unsubscribe("x")
    await a.broker.publish("x", b"2", history_size=5, history_ttl=60)
    await a.broker.publish("y", b"3", history_size=5, history_ttl=60)
    await eventually(lambda: len(b.pubs) == 2)
    await asyncio.sleep(0.05)
    assert [(p.channel, p.data) for p in b.pubs] == [("x", b"1"), ("y", b"3")]

    await b.broker.subscribe("x")
    await a.broker.publish("x", b"4", history_size=5, history_ttl=60)
    await eventually(lambda: len(b.pubs) == 3)
    assert (b.pubs[-1].channel, b.pubs[-1].offset) == ("x", 3)


async def test_failing_handler_does_not_stop_delivery(
    redis_url: str, prefix: str, clock: ManualClock
) -> None:
    got: list[int] = []

    def on_pub(pub: Publication) -> None:
        if pub.offset == 1:
            raise RuntimeError("boom")
        got.append(pub.offset)

    broker = RedisBroker(redis_url, clock, prefix=prefix)
    await broker.start(on_pub, lambda channel, info, joined: None)
    try:
        await broker.subscribe("f")
        for i in range(3):
            await broker.publish("f", orjson.dumps(i), history_size=5, history_ttl=60)
        await eventually(lambda: got == [2, 3])
    finally:
        await broker.close()


async def test_subscribe_before_start(make_node: NodeFactory) -> None:
    a, b = await make_node("a"), await make_node("b", start=False)
    await b.broker.subscribe("early")
    await start_node(b)
    await a.broker.publish("early", b"1", history_size=5, history_ttl=60)
    await eventually(lambda: b.offsets() == [1])


async def test_wire_format_is_json_with_data_as_text(
    make_node: NodeFactory, redis: Redis, prefix: str
) -> None:
    a = await make_node("a")
    pub = await a.broker.publish(
        "wire", b'{"a":1}', history_size=5, history_ttl=60, info=BOB, tags={"t": "1"}
    )
    entries: list[Any] = list(await redis.xrange(f"{prefix}:hs:{{wire}}") or [])
    assert [entry_id for entry_id, _ in entries] == [b"1-0"]
    message = orjson.loads(entries[0][1][b"m"])
    assert message["o"] == 1 and message["e"] == pub.epoch
    assert message["d"] == '{"a":1}'
    assert message["i"]["u"] == "bob" and "hi64" in message["i"]
    assert message["g"] == {"t": "1"}
    meta = await redis.hgetall(f"{prefix}:hm:{{wire}}")
    assert meta == {b"e": pub.epoch.encode(), b"o": b"1"}


async def test_resubscribes_after_pubsub_connection_is_killed(
    make_node: NodeFactory, redis: Redis
) -> None:
    a, b = await make_node("a"), await make_node("b")
    await b.broker.subscribe("re")
    await a.broker.publish("re", b"1", history_size=100, history_ttl=60)
    await eventually(lambda: b.offsets() == [1])

    async def pubsub_client_id() -> str | None:
        for client in await redis.client_list():
            if client.get("name") == b.broker.pubsub_client_name:
                return str(client["id"])
        return None

    old_id = await pubsub_client_id()
    assert old_id is not None
    kill: Any = redis.execute_command
    killed = await kill("CLIENT", "KILL", "ID", old_id, "TYPE", "pubsub")
    assert killed == 1

    # A subscribe issued while the connection is down completes once it is back.
    await b.broker.subscribe("during-outage")

    deadline = time.monotonic() + 10
    while not any(p.offset > 1 for p in b.pubs):
        assert time.monotonic() < deadline, "no publication after reconnect"
        await a.broker.publish("re", b"again", history_size=100, history_ttl=60)
        await asyncio.sleep(0.05)

    new_id = await pubsub_client_id()
    assert new_id is not None and new_id != old_id
    offsets = b.offsets("re")
    assert offsets == sorted(set(offsets))

    await a.broker.publish("during-outage", b"x", history_size=5, history_ttl=60)
    await eventually(lambda: [p.data for p in b.pubs if p.channel == "during-outage"] == [b"x"])


async def test_close_is_clean_and_idempotent(redis_url: str, prefix: str) -> None:
    broker = RedisBroker(redis_url, ManualClock(), prefix=prefix)
    await broker.start(lambda pub: None, lambda channel, info, joined: None)
    await broker.subscribe("c")
    await broker.close()
    await broker.close()
    leftovers = [
        t for t in asyncio.all_tasks() if t.get_name() in {"redis-pubsub", "redis-dispatch"}
    ]
    assert leftovers == []


async def test_non_utf8_data_round_trips(make_node: NodeFactory) -> None:
    a, b = await make_node("a"), await make_node("b")
    await b.broker.subscribe("bin")
    pub = await a.broker.publish("bin", b"\xff\xfe\x00{", history_size=5, history_ttl=60)
    await eventually(lambda: len(b.pubs) == 1)
    assert b.pubs[0].data == b"\xff\xfe\x00{" == pub.data
    history = await b.broker.history("bin", limit=-1)
    assert history.publications == (pub,)


async def test_idle_connection_is_kept_alive_by_pings(
    make_node: NodeFactory, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broker_module, "PING_INTERVAL", 0.05)
    a, b = await make_node("a"), await make_node("b")
    await b.broker.subscribe("quiet")

    async def pubsub_client_ids() -> set[str]:
        return {
            str(client["id"])
            for client in await redis.client_list()
            if client.get("name") == b.broker.pubsub_client_name
        }

    before = await pubsub_client_ids()
    await asyncio.sleep(0.5)  # ten ping intervals without traffic
    assert await pubsub_client_ids() == before and len(before) == 1
    await a.broker.publish("quiet", b"1", history_size=5, history_ttl=60)
    await eventually(lambda: b.offsets() == [1])
