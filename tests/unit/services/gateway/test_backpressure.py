"""Backpressure per delivery class, driven through a fake transport whose buffer the test
controls: ephemeral drops, latest coalesces, durable disconnects with 3008."""

from __future__ import annotations

import asyncio

import orjson

from tidings.adapters.clock import ManualClock
from tidings.adapters.memory import MemoryBroker, MemoryPresenceStore
from tidings.core.channels import ChannelResolver
from tidings.services.gateway import ClientConnection, EncodedBatch, GatewayOptions, Hub

from .fakes import FakeTransport

CHANNELS = {
    "namespaces": {
        "durable": {"history_size": 10, "history_ttl": "1m"},
        "typing": {},
        "cursor": {"delivery": "latest", "history_size": 1, "history_ttl": "1m"},
    }
}


async def setup(channel: str) -> tuple[Hub, ClientConnection, FakeTransport]:
    clock = ManualClock()
    hub = Hub(
        MemoryBroker(clock),
        MemoryPresenceStore(clock),
        ChannelResolver.from_config(CHANNELS),
        clock,
        GatewayOptions(max_buffer_bytes=1000, allow_anonymous=True),
    )
    await hub.start()
    transport = FakeTransport()
    client = ClientConnection(hub, transport)
    client.receive(
        b'{"id":1,"connect":{}}\n' + f'{{"id":2,"subscribe":{{"channel":"{channel}"}}}}'.encode()
    )
    for _ in range(50):
        await asyncio.sleep(0)
        if hub.local_subscribers(channel):
            break
    await asyncio.sleep(0.01)
    return hub, client, transport


def text_of(frame: bytes) -> bytes:
    """The payload of one unmasked WebSocket text frame."""
    assert frame[0] == 0x81
    size, start = frame[1], 2
    if size == 126:
        size, start = int.from_bytes(frame[2:4], "big"), 4
    elif size == 127:
        size, start = int.from_bytes(frame[2:10], "big"), 10
    assert len(frame) == start + size
    return frame[start:]


async def publish(hub: Hub, channel: str, data: bytes) -> None:
    """Publish and write out at once (the hub gathers a loop pass's publications)."""
    await hub.publish(channel, data)
    hub.flush()


async def test_ephemeral_publications_are_dropped_when_the_buffer_is_full() -> None:
    hub, _client, t = await setup("typing:room")
    await publish(hub, "typing:room", b'{"n":1}')
    t.backlog = 5000
    await publish(hub, "typing:room", b'{"n":2}')
    t.backlog = 0
    await publish(hub, "typing:room", b'{"n":3}')
    assert [p["pub"]["data"]["n"] for p in t.pushes()] == [1, 3]
    assert t.closed is None
    await hub.stop()


async def test_latest_publications_are_coalesced_by_key_and_flushed_when_writable() -> None:
    hub, client, t = await setup("cursor:doc")
    t.backlog = 5000
    for n in range(5):
        await hub.broker.publish(
            "cursor:doc",
            orjson.dumps({"n": n}),
            history_size=1,
            history_ttl=60,
            key="alice" if n % 2 else "bob",
        )
    hub.flush()
    assert t.pushes() == []
    t.backlog = 0
    client.writable()
    got = sorted(p["pub"]["data"]["n"] for p in t.pushes())
    assert got == [3, 4]  # newest per key: alice -> 3, bob -> 4
    assert t.closed is None
    await hub.stop()


async def test_durable_publication_over_the_limit_disconnects_slow_3008() -> None:
    hub, _client, t = await setup("durable:feed")
    await publish(hub, "durable:feed", b'{"n":1}')
    t.backlog = 5000
    await publish(hub, "durable:feed", b'{"n":2}')
    assert t.closed is not None and t.closed.code == 3008 and t.closed.reconnect
    assert [p["pub"]["data"]["n"] for p in t.pushes()] == [1]
    await asyncio.sleep(0.01)
    assert hub.local_subscribers("durable:feed") == 0
    assert hub.client_count == 0
    await hub.stop()


async def test_publications_of_one_loop_pass_go_out_as_batches_in_order() -> None:
    hub, _client, t = await setup("durable:feed")
    batches: list[EncodedBatch] = []
    t.write_batch = batches.append  # type: ignore[method-assign]
    for n in range(20):  # the memory broker does not yield: all in one pass
        await hub.publish("durable:feed", orjson.dumps({"n": n}))
    assert batches == []  # nothing written before the pass ends
    await asyncio.sleep(0)
    assert [len(b.pubs) for b in batches] == [16, 4]  # max_messages_in_frame
    assert [(b.first, b.last) for b in batches] == [(1, 16), (17, 20)]
    lines = [orjson.loads(line) for b in batches for line in text_of(b.ws_frame).split(b"\n")]
    assert [m["push"]["pub"]["data"]["n"] for m in lines] == list(range(20))
    await hub.stop()


async def test_a_batch_that_does_not_follow_on_takes_the_careful_path() -> None:
    hub, _client, t = await setup("durable:feed")
    await publish(hub, "durable:feed", b'{"n":1}')
    pubs = [
        await hub.broker.publish("durable:feed", b'{"n":2}', history_size=10, history_ttl=60),
        await hub.broker.publish("durable:feed", b'{"n":3}', history_size=10, history_ttl=60),
    ]
    hub.flush()  # both went to the hub already: the client is now at offset 3
    assert [p["pub"]["data"]["n"] for p in t.pushes()] == [1, 2, 3]
    hub._gathered["durable:feed"] = list(pubs)  # the same two again: duplicates
    hub.flush()
    assert [p["pub"]["data"]["n"] for p in t.pushes()] == [1, 2, 3]  # dropped one by one
    assert t.closed is None
    await hub.stop()


async def test_latest_coalescing_over_the_sse_and_long_poll_bridge() -> None:
    from tidings.transports.sse import Bridge

    clock = ManualClock()
    hub = Hub(
        MemoryBroker(clock),
        MemoryPresenceStore(clock),
        ChannelResolver.from_config(CHANNELS),
        clock,
        GatewayOptions(max_buffer_bytes=1024, allow_anonymous=True),
    )
    await hub.start()
    bridge = Bridge(hub, "test")
    await bridge.open("", ["cursor:doc"], {})
    pad = "x" * 100
    for n in range(30):  # nobody reads meanwhile: ~4 KB for a 1 KB buffer
        key = f"k{n % 3}"
        data = orjson.dumps({"n": n, "pad": pad})
        await hub.broker.publish("cursor:doc", data, history_size=1, history_ttl=60, key=key)
    hub.flush()
    got = [e for e in await bridge.next() if e.kind == "publication"]
    got += [e for e in await bridge.next() if e.kind == "publication"]  # the coalesced rest
    ns = [e.data["data"]["n"] for e in got]
    assert len(ns) < 30  # some were coalesced
    assert ns[-3:] == [27, 28, 29]  # the newest of each key comes last, in offset order
    assert ns == sorted(ns)
    assert bridge.closed is None  # a latest channel never disconnects a slow reader
    await hub.stop()
