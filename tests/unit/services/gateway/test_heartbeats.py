"""The hub's heartbeat wheel: each client is visited when its session's deadline comes, not
on every tick, and pings, pong timeouts and stale connections still happen on time."""

from __future__ import annotations

import asyncio

from tidings.adapters.clock import ManualClock
from tidings.adapters.memory import MemoryBroker, MemoryPresenceStore
from tidings.core.channels import ChannelResolver
from tidings.core.protocol.limits import SessionConfig
from tidings.services.gateway import ClientConnection, GatewayOptions, Hub

from .fakes import FakeTransport


def make_hub(clock: ManualClock) -> Hub:
    session = SessionConfig(ping_interval=5.0, pong_timeout=2.0, stale_timeout=3.0)
    return Hub(
        MemoryBroker(clock),
        MemoryPresenceStore(clock),
        ChannelResolver.from_config({}),
        clock,
        GatewayOptions(session=session, allow_anonymous=True),
    )


async def connect(hub: Hub) -> tuple[ClientConnection, FakeTransport]:
    t = FakeTransport()
    client = ClientConnection(hub, t)
    client.receive(b'{"id":1,"connect":{}}')
    for _ in range(20):
        await asyncio.sleep(0)
    assert t.sent and b'"connect"' in t.sent[0]
    return client, t


async def test_pings_go_out_at_the_interval_and_a_missing_pong_closes_3012() -> None:
    clock = ManualClock()
    hub = make_hub(clock)
    _client, t = await connect(hub)
    sent = len(t.sent)
    clock.advance(4.0)
    hub._heartbeats(clock.monotonic())
    assert len(t.sent) == sent  # not due yet
    clock.advance(1.0)
    hub._heartbeats(clock.monotonic())
    assert t.sent[-1] == b"{}"  # the ping
    clock.advance(2.0)
    hub._heartbeats(clock.monotonic())
    assert t.closed is not None and t.closed.code == 3012  # no pong


async def test_a_pong_keeps_the_connection_and_moves_the_next_ping() -> None:
    clock = ManualClock()
    hub = make_hub(clock)
    client, t = await connect(hub)
    clock.advance(5.0)
    hub._heartbeats(clock.monotonic())
    assert t.sent[-1] == b"{}"
    clock.advance(1.0)
    client.receive(b"{}")  # pong
    pings = 1
    for step in range(10):
        clock.advance(1.0)
        hub._heartbeats(clock.monotonic())
        assert t.closed is None, step
        if t.sent.count(b"{}") > pings:
            pings += 1
            client.receive(b"{}")
    assert pings == 3  # at 5, 10 and 15 s


async def test_a_client_that_never_connects_is_closed_as_stale() -> None:
    clock = ManualClock()
    hub = make_hub(clock)
    t = FakeTransport()
    ClientConnection(hub, t)
    clock.advance(3.0)
    hub._heartbeats(clock.monotonic())
    assert t.closed is not None and t.closed.code == 3502  # stale


async def test_only_due_clients_are_visited() -> None:
    clock = ManualClock()
    hub = make_hub(clock)
    clients = [await connect(hub) for _ in range(50)]
    clock.advance(3.0)  # each is visited once at the connect deadline set before it connected
    hub._heartbeats(clock.monotonic())
    visits = 0
    original = ClientConnection.tick

    def counting(self: ClientConnection, now: float) -> None:
        nonlocal visits
        visits += 1
        original(self, now)

    ClientConnection.tick = counting  # type: ignore[method-assign]
    try:
        clock.advance(1.0)  # nothing due at 4 s
        hub._heartbeats(clock.monotonic())
        assert visits == 0
        clock.advance(1.0)
        hub._heartbeats(clock.monotonic())
        assert visits == 50
    finally:
        ClientConnection.tick = original  # type: ignore[method-assign]
    assert all(t.sent[-1] == b"{}" for _c, t in clients)
