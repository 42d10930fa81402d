"""The official centrifuge-python SDK against a live Tidings server."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
from centrifuge import (
    Client,
    ClientEventHandler,
    ConnectedContext,
    ConnectingContext,
    DisconnectedContext,
    JoinContext,
    LeaveContext,
    PublicationContext,
    SubscribedContext,
    SubscriptionEventHandler,
)

from tests.e2e.conftest import Live
from tidings.core.protocol.codes import Disconnect, DisconnectCode


class Recorder(SubscriptionEventHandler):
    def __init__(self) -> None:
        self.pubs: list[tuple[int, Any, str | None]] = []
        self.subscribed: list[SubscribedContext] = []
        self.joins: list[str] = []
        self.leaves: list[str] = []
        self.changed = asyncio.Event()

    async def on_publication(self, ctx: PublicationContext) -> None:
        user = ctx.pub.info.user if ctx.pub.info else None
        self.pubs.append((ctx.pub.offset, ctx.pub.data, user))
        self.changed.set()

    async def on_subscribed(self, ctx: SubscribedContext) -> None:
        self.subscribed.append(ctx)
        self.changed.set()

    async def on_join(self, ctx: JoinContext) -> None:
        self.joins.append(ctx.info.user)
        self.changed.set()

    async def on_leave(self, ctx: LeaveContext) -> None:
        self.leaves.append(ctx.info.user)
        self.changed.set()

    async def until(self, predicate: Any, timeout: float = 5.0) -> None:
        async def wait() -> None:
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(wait(), timeout)


class ConnEvents(ClientEventHandler):
    def __init__(self) -> None:
        self.connected = 0
        self.disconnects: list[int] = []
        self.connecting: list[int] = []

    async def on_connecting(self, ctx: ConnectingContext) -> None:
        self.connecting.append(ctx.code)

    async def on_connected(self, ctx: ConnectedContext) -> None:
        self.connected += 1

    async def on_disconnected(self, ctx: DisconnectedContext) -> None:
        self.disconnects.append(ctx.code)


async def test_connect_subscribe_publish_presence_history(live: Live) -> None:
    alice_events, bob_events = Recorder(), Recorder()
    alice = Client(live.ws_url, token=live.token("alice"))
    bob = Client(live.ws_url, token=live.token("bob"))
    a_sub = alice.new_subscription("chat:room", events=alice_events, join_leave=True)
    b_sub = bob.new_subscription("chat:room", events=bob_events)
    await alice.connect()
    await a_sub.subscribe()
    await alice_events.until(lambda: alice_events.subscribed)
    await bob.connect()
    await b_sub.subscribe()
    await alice_events.until(lambda: "bob" in alice_events.joins)
    try:
        await a_sub.publish({"text": "hi from alice"})
        for rec in (alice_events, bob_events):
            await rec.until(lambda rec=rec: len(rec.pubs) == 1)
            assert rec.pubs == [(1, {"text": "hi from alice"}, "alice")]

        presence = await b_sub.presence()
        users = sorted(c.user for c in presence.clients.values())
        assert users == ["alice", "bob"]
        stats = await a_sub.presence_stats()
        assert (stats.num_clients, stats.num_users) == (2, 2)

        history = await b_sub.history(limit=10)
        assert [p.data for p in history.publications] == [{"text": "hi from alice"}]
        position = alice_events.subscribed[0].stream_position
        assert history.offset == 1 and position is not None and history.epoch == position.epoch
    finally:
        await bob.disconnect()
    await alice_events.until(lambda: "bob" in alice_events.leaves)
    assert (await a_sub.presence_stats()).num_users == 1
    await alice.disconnect()


async def test_ingested_event_reaches_the_sdk(live: Live) -> None:
    rec = Recorder()
    client = Client(live.ws_url, token=live.token("u1"))
    sub = client.new_subscription("orders:u1", events=rec)
    await client.connect()
    await sub.subscribe()
    await rec.until(lambda: rec.subscribed)
    async with httpx.AsyncClient(base_url=live.http_url) as http:
        r = await http.post(
            "/v1/events",
            json={"type": "order.shipped", "channels": ["orders:u1"], "payload": {"order": 7}},
            headers={"Authorization": f"Bearer {live.api_key}"},
        )
        assert r.status_code == 202
    await rec.until(lambda: rec.pubs)
    offset, data, _ = rec.pubs[0]
    assert offset == 1
    assert data["type"] == "order.shipped" and data["payload"] == {"order": 7}
    assert data["event_id"] == r.json()["id"]
    await client.disconnect()


async def test_recovers_every_missed_publication_after_a_dropped_connection(live: Live) -> None:
    rec, conn = Recorder(), ConnEvents()
    client = Client(live.ws_url, token=live.token("carol"), events=conn, min_reconnect_delay=0.2)
    sub = client.new_subscription("chat:recover", events=rec)
    await client.connect()
    await sub.subscribe()
    await rec.until(lambda: rec.subscribed)
    hub = live.runtime.hub
    for i in range(3):
        await hub.publish("chat:recover", orjson.dumps({"n": i}))
    await rec.until(lambda: len(rec.pubs) == 3)

    # The network drops: the server sees the socket vanish, the client reconnects.
    [conn_obj] = [c for c in hub._clients.values() if c.user == "carol"]
    conn_obj.transport.transport.abort()  # type: ignore[attr-defined]
    for i in range(3, 10):
        await hub.publish("chat:recover", orjson.dumps({"n": i}))

    await rec.until(lambda: len(rec.pubs) == 10, timeout=10)
    assert [p[0] for p in rec.pubs] == list(range(1, 11))
    assert [p[1]["n"] for p in rec.pubs] == list(range(10))
    last = rec.subscribed[-1]
    assert last.was_recovering and last.recovered
    assert conn.connected == 2
    await client.disconnect()


async def test_server_disconnect_with_reconnect_code_recovers(live: Live) -> None:
    rec, conn = Recorder(), ConnEvents()
    client = Client(live.ws_url, token=live.token("dave"), events=conn, min_reconnect_delay=0.2)
    sub = client.new_subscription("chat:drain", events=rec)
    await client.connect()
    await sub.subscribe()
    await rec.until(lambda: rec.subscribed)
    hub = live.runtime.hub
    assert hub.disconnect_user("dave", Disconnect.of(DisconnectCode.FORCE_RECONNECT)) == 1
    await hub.publish("chat:drain", b'{"after":"disconnect"}')
    await rec.until(lambda: len(rec.pubs) == 1, timeout=10)
    assert rec.pubs[0][1] == {"after": "disconnect"}
    assert rec.subscribed[-1].recovered
    assert DisconnectCode.FORCE_RECONNECT in conn.disconnects or conn.connected == 2
    await client.disconnect()


async def test_private_channel_needs_a_subscription_token(live: Live) -> None:
    rec = Recorder()
    client = Client(live.ws_url, token=live.token("erin"))
    await client.connect()
    ok = client.new_subscription(
        "secret:vault", events=rec, token=live.sub_token("erin", "secret:vault")
    )
    await ok.subscribe()
    await rec.until(lambda: rec.subscribed)
    await live.runtime.hub.publish("secret:vault", b'{"k":1}')
    await rec.until(lambda: rec.pubs)
    await client.disconnect()


async def test_drain_disconnects_with_shutdown_and_refuses_new_connections(live: Live) -> None:
    conn = ConnEvents()
    client = Client(live.ws_url, token=live.token("gus"), events=conn, min_reconnect_delay=0.5)
    await client.connect()
    await live.runtime.hub.drain(spread=0)
    await asyncio.sleep(0.3)
    assert DisconnectCode.SHUTDOWN in conn.connecting  # told to reconnect, not terminal
    assert conn.disconnects == []
    assert live.runtime.hub.client_count == 0
    await client.disconnect()
