"""Backpressure per delivery class, driven through a fake transport whose buffer the test
controls: ephemeral drops, latest coalesces, durable disconnects with 3008."""

from __future__ import annotations

import asyncio

import orjson

from tidings.adapters.clock import ManualClock
from tidings.adapters.memory import MemoryBroker, MemoryPresenceStore
from tidings.core.channels import ChannelResolver
from tidings.core.protocol import requests as r
from tidings.services.gateway import ClientConnection, EncodedPush, GatewayOptions, Hub

CHANNELS = {
    "namespaces": {
        "durable": {"history_size": 10, "history_ttl": "1m"},
        "typing": {},
        "cursor": {"delivery": "latest", "history_size": 1, "history_ttl": "1m"},
    }
}


class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.backlog = 0
        self.closed: r.Close | None = None

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def write_push(self, push: EncodedPush) -> None:
        self.sent.append(push.json)

    def buffered(self) -> int:
        return self.backlog

    def close(self, close: r.Close) -> None:
        self.closed = close

    def pushes(self) -> list[dict]:
        out = []
        for raw in self.sent:
            msg = orjson.loads(raw)
            if "push" in msg and "pub" in msg["push"]:
                out.append(msg["push"])
        return out


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


async def test_ephemeral_publications_are_dropped_when_the_buffer_is_full() -> None:
    hub, _client, t = await setup("typing:room")
    await hub.publish("typing:room", b'{"n":1}')
    t.backlog = 5000
    await hub.publish("typing:room", b'{"n":2}')
    t.backlog = 0
    await hub.publish("typing:room", b'{"n":3}')
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
    assert t.pushes() == []
    t.backlog = 0
    client.writable()
    got = sorted(p["pub"]["data"]["n"] for p in t.pushes())
    assert got == [3, 4]  # newest per key: alice -> 3, bob -> 4
    assert t.closed is None
    await hub.stop()


async def test_durable_publication_over_the_limit_disconnects_slow_3008() -> None:
    hub, _client, t = await setup("durable:feed")
    await hub.publish("durable:feed", b'{"n":1}')
    t.backlog = 5000
    await hub.publish("durable:feed", b'{"n":2}')
    assert t.closed is not None and t.closed.code == 3008 and t.closed.reconnect
    assert [p["pub"]["data"]["n"] for p in t.pushes()] == [1]
    await asyncio.sleep(0.01)
    assert hub.local_subscribers("durable:feed") == 0
    assert hub.client_count == 0
    await hub.stop()
