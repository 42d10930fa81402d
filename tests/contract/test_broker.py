from __future__ import annotations

import asyncio
import random

import pytest

from tests.contract.conftest import BrokerKit
from tidings.types import ClientInfo, Publication, StreamPosition

CH = "news:1"


class Recorder:
    """Collects what the broker hands to this node, as the node's handlers."""

    def __init__(self) -> None:
        self.pubs: list[Publication] = []
        self.join_leave: list[tuple[str, str, bool]] = []

    def on_pub(self, pub: Publication) -> None:
        self.pubs.append(pub)

    def on_join_leave(self, channel: str, info: ClientInfo, joined: bool) -> None:
        self.join_leave.append((channel, info.client, joined))


async def started(kit: BrokerKit, *channels: str) -> Recorder:
    rec = Recorder()
    await kit.broker.start(rec.on_pub, rec.on_join_leave)
    for ch in channels:
        await kit.broker.subscribe(ch)
    return rec


async def publish_n(kit: BrokerKit, n: int, channel: str = CH, **kw: object) -> list[Publication]:
    opts: dict[str, object] = {"history_size": 10, "history_ttl": 300.0, **kw}
    return [await kit.broker.publish(channel, b'{"n":%d}' % i, **opts) for i in range(n)]


async def test_offsets_grow_by_one_in_one_epoch(broker_kit: BrokerKit) -> None:
    await started(broker_kit)
    pubs = await publish_n(broker_kit, 5)
    assert [p.offset for p in pubs] == [1, 2, 3, 4, 5]
    assert len({p.epoch for p in pubs}) == 1 and pubs[0].epoch
    assert pubs[2].data == b'{"n":2}' and pubs[0].time == broker_kit.clock.now()
    other = await publish_n(broker_kit, 2, channel="news:2")
    assert [p.offset for p in other] == [1, 2]  # per channel


async def test_history_position_limit_and_since(broker_kit: BrokerKit) -> None:
    await started(broker_kit)
    pubs = await publish_n(broker_kit, 5)
    pos = StreamPosition(offset=5, epoch=pubs[0].epoch)
    only_position = await broker_kit.broker.history(CH)
    assert only_position.position == pos and only_position.publications == ()
    everything = await broker_kit.broker.history(CH, limit=-1)
    assert [p.offset for p in everything.publications] == [1, 2, 3, 4, 5]
    first_two = await broker_kit.broker.history(CH, limit=2)
    assert [p.offset for p in first_two.publications] == [1, 2]
    since = StreamPosition(offset=2, epoch=pubs[0].epoch)
    after = await broker_kit.broker.history(CH, since=since, limit=-1)
    assert [p.offset for p in after.publications] == [3, 4, 5]
    assert [
        p.offset for p in (await broker_kit.broker.history(CH, since=since, limit=1)).publications
    ] == [3]
    caught_up = await broker_kit.broker.history(CH, since=pos, limit=-1)
    assert caught_up.publications == () and caught_up.position == pos


async def test_since_with_another_epoch_returns_no_publications(broker_kit: BrokerKit) -> None:
    await started(broker_kit)
    pubs = await publish_n(broker_kit, 3)
    stale = StreamPosition(offset=1, epoch="not-" + pubs[0].epoch)
    result = await broker_kit.broker.history(CH, since=stale, limit=-1)
    assert result.publications == ()
    assert result.position == StreamPosition(offset=3, epoch=pubs[0].epoch)


async def test_history_keeps_at_most_history_size(broker_kit: BrokerKit) -> None:
    await started(broker_kit)
    pubs = await publish_n(broker_kit, 7, history_size=3)
    kept = await broker_kit.broker.history(CH, limit=-1)
    assert [p.offset for p in kept.publications] == [5, 6, 7]
    # A client at offset 2 sees a gap (first offset > 3) and must treat recovery as failed.
    gap = await broker_kit.broker.history(
        CH, since=StreamPosition(offset=2, epoch=pubs[0].epoch), limit=-1
    )
    assert gap.publications[0].offset > 3


async def test_ttl_expiry_loses_the_stream_and_changes_the_epoch(broker_kit: BrokerKit) -> None:
    if broker_kit.kind == "redis":
        pytest.skip("Redis expires streams on its own clock: test_redis_broker.py uses real time")
    await started(broker_kit)
    [first] = await publish_n(broker_kit, 1, history_ttl=10.0)
    broker_kit.clock.advance(6)
    await publish_n(broker_kit, 1, history_ttl=10.0)  # each publish restarts the TTL
    broker_kit.clock.advance(6)
    alive = await broker_kit.broker.history(CH, limit=-1)
    assert alive.position == StreamPosition(offset=2, epoch=first.epoch)
    broker_kit.clock.advance(4)
    gone = await broker_kit.broker.history(CH, limit=-1)
    assert gone.publications == ()
    assert gone.position.epoch != first.epoch and gone.position.offset == 0
    [fresh] = await publish_n(broker_kit, 1, history_ttl=10.0)
    assert fresh.offset == 1 and fresh.epoch == gone.position.epoch


async def test_remove_history_starts_a_new_stream(broker_kit: BrokerKit) -> None:
    await started(broker_kit)
    [first] = await publish_n(broker_kit, 1)
    await broker_kit.broker.remove_history(CH)
    after = await broker_kit.broker.history(CH, limit=-1)
    assert after.publications == () and after.position.epoch != first.epoch


async def test_ephemeral_publish_has_offset_zero_and_no_history(broker_kit: BrokerKit) -> None:
    rec = await started(broker_kit, CH)
    await publish_n(broker_kit, 2)
    pub = await broker_kit.broker.publish(CH, b"{}")
    assert pub.offset == 0
    history = await broker_kit.broker.history(CH, limit=-1)
    assert history.position.offset == 2 and len(history.publications) == 2
    only_ephemeral = await broker_kit.broker.publish("typing:1", b"{}", history_size=0)
    assert only_ephemeral.offset == 0
    assert (await broker_kit.broker.history("typing:1", limit=-1)).publications == ()
    assert [p.offset for p in rec.pubs] == [1, 2, 0]  # still delivered to subscribers


async def test_idempotency_key_publishes_once(broker_kit: BrokerKit) -> None:
    rec = await started(broker_kit, CH)
    a = await broker_kit.broker.publish(
        CH, b"1", history_size=10, history_ttl=300.0, idempotency_key="op-1"
    )
    broker_kit.clock.advance(100)
    b = await broker_kit.broker.publish(
        CH, b"2", history_size=10, history_ttl=300.0, idempotency_key="op-1"
    )
    assert b == a
    c = await broker_kit.broker.publish(
        CH, b"3", history_size=10, history_ttl=300.0, idempotency_key="op-2"
    )
    assert c.offset == 2
    elsewhere = await broker_kit.broker.publish(
        "news:2", b"1", history_size=10, history_ttl=300.0, idempotency_key="op-1"
    )
    assert elsewhere.offset == 1 and elsewhere.channel == "news:2"
    assert [p.data for p in rec.pubs] == [b"1", b"3"]
    assert [p.offset for p in (await broker_kit.broker.history(CH, limit=-1)).publications] == [
        1,
        2,
    ]


async def test_publication_carries_info_tags_and_key(broker_kit: BrokerKit) -> None:
    rec = await started(broker_kit, CH)
    info = ClientInfo(user="u1", client="c1", conn_info=b'{"a":1}')
    pub = await broker_kit.broker.publish(
        CH, b"{}", history_size=5, history_ttl=60.0, info=info, tags={"t": "v"}, key="price"
    )
    assert (pub.info, pub.tags, pub.key, pub.channel) == (info, {"t": "v"}, "price", CH)
    assert pub.time == broker_kit.clock.now() and pub.offset == 1
    [kept] = (await broker_kit.broker.history(CH, limit=-1)).publications
    assert kept == pub == rec.pubs[0]
    # an idempotent replay gives the whole original back, however the repeat differs
    once = {"history_size": 5, "history_ttl": 60.0, "idempotency_key": "op"}
    first = await broker_kit.broker.publish(CH, b"1", info=info, tags={"a": "b"}, key="k", **once)
    again = await broker_kit.broker.publish(CH, b"2", **once)
    assert again == first and (again.info, again.tags, again.key) == (info, {"a": "b"}, "k")


async def test_only_subscribed_channels_are_delivered(broker_kit: BrokerKit) -> None:
    rec = await started(broker_kit, CH)
    await publish_n(broker_kit, 1)
    await publish_n(broker_kit, 1, channel="other")
    for _ in range(100):  # delivered before the unsubscribe, which would drop it in flight
        if rec.pubs:
            break
        await asyncio.sleep(0.01)
    await broker_kit.broker.unsubscribe(CH)
    await publish_n(broker_kit, 1)
    await asyncio.sleep(0.2)  # a Redis node would have received it by now
    assert [(p.channel, p.offset) for p in rec.pubs] == [(CH, 1)]
    info = ClientInfo(user="u", client="c")
    await broker_kit.broker.subscribe(CH)
    await broker_kit.broker.publish_join_leave(CH, info, True)
    await broker_kit.broker.publish_join_leave("other", info, True)
    await broker_kit.broker.publish_join_leave(CH, info, False)
    for _ in range(100):
        if len(rec.join_leave) == 2:
            break
        await asyncio.sleep(0.01)
    assert rec.join_leave == [(CH, "c", True), (CH, "c", False)]


async def test_subscribers_see_concurrent_publications_in_offset_order(
    broker_kit: BrokerKit,
) -> None:
    seen: list[int] = []
    rng = random.Random(7)

    async def slow_handler(pub: Publication) -> None:
        await asyncio.sleep(rng.random() / 1000)  # handlers that wait must not reorder
        seen.append(pub.offset)

    async def on_join_leave(channel: str, info: ClientInfo, joined: bool) -> None:
        return None

    await broker_kit.broker.start(slow_handler, on_join_leave)
    await broker_kit.broker.subscribe(CH)
    pubs = await asyncio.gather(
        *(
            broker_kit.broker.publish(CH, b"{}", history_size=100, history_ttl=60.0)
            for _ in range(50)
        )
    )
    assert sorted(p.offset for p in pubs) == list(range(1, 51))
    for _ in range(200):  # delivery through Redis pub/sub arrives after publish returns
        if len(seen) == 50:
            break
        await asyncio.sleep(0.01)
    assert seen == list(range(1, 51))
