"""The presence service with a controllable clock: transitions after the grace period and
only once, last-seen writes bounded, typing throttled and expired, privacy honoured."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.adapters.clock import ManualClock
from tidings.adapters.memory import MemoryBroker, MemoryPresenceStore
from tidings.adapters.memory.online import MemoryDeviceStore, MemoryPresenceRecords
from tidings.core.channels import ChannelResolver
from tidings.core.online import Device, PresenceConfig, Privacy, Status
from tidings.core.protocol.codes import Disconnect, DisconnectCode
from tidings.core.tokens import TokenKeys, connection_claims, encode_token
from tidings.errors import Forbidden, InvalidInput
from tidings.services.gateway import ClientConnection, GatewayOptions, Hub
from tidings.services.online import GatewayPresence, OnlineService

from .gateway.fakes import FakeTransport


class Sink:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self.published: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self.keys: set[str] = set()

    async def emit(self, kind: str, key: str, payload: dict[str, Any]) -> None:
        if key in self.keys:  # the event store's idempotency
            return
        self.keys.add(key)
        self.events.append((kind, key, payload))

    async def publish(self, channel: str, data: bytes, tags: dict[str, str]) -> None:
        self.published.append((channel, orjson.loads(data), tags))


def service(
    clock: ManualClock,
    sink: Sink,
    devices: MemoryDeviceStore | None = None,
    records: MemoryPresenceRecords | None = None,
    members: int = 2,
    **cfg: Any,
) -> OnlineService:
    async def count(_channel: str) -> int:
        return members

    return OnlineService(
        devices or MemoryDeviceStore(clock),
        records or MemoryPresenceRecords(),
        clock,
        PresenceConfig(**{"update_interval": 0, **cfg}),
        emit=sink.emit,
        publish=sink.publish,
        members=count,
    )


def dev(clock: ManualClock, id: str = "d1", **kw: Any) -> Device:
    now = clock.now()
    return Device(id=id, heartbeat_at=now, active_at=now, **kw)


async def test_online_then_offline_only_after_the_grace_period() -> None:
    clock, sink = ManualClock(), Sink()
    svc = service(clock, sink)
    await svc.report("alice", dev(clock, channels=("chat:1",)))
    assert [e[0] for e in sink.events] == ["user.online"]
    assert sink.events[0][1] == "presence:alice:1"
    assert sink.published[-1] == (
        "chat:1",
        {"type": "presence", "user": "alice", "status": "active"},
        {"tidings": "presence"},
    )
    clock.advance(60)  # silent 60 s: probably offline, not offline
    assert await svc.sweep() == 0
    assert (await svc.get("alice")).status is Status.PROBABLY_OFFLINE
    clock.advance(30)  # 90 s: offline
    assert await svc.sweep() == 1
    assert [e[0] for e in sink.events] == ["user.online", "user.offline"]
    assert sink.published[-1][1]["status"] == "offline"
    assert (await svc.get("alice")).status is Status.OFFLINE
    assert await svc.sweep() == 0  # once


async def test_a_reload_within_the_grace_period_is_no_offline() -> None:
    clock, sink = ManualClock(), Sink()
    svc = service(clock, sink)
    await svc.report("alice", dev(clock))
    await svc.report("alice", Device("d1", clock.now(), clock.now(), connected=False))
    clock.advance(3)
    await svc.report("alice", dev(clock, "d2"))  # the new connection after the reload
    for _ in range(10):
        clock.advance(20)
        await svc.report("alice", dev(clock, "d2"))
        await svc.sweep()
    assert [e[0] for e in sink.events] == ["user.online"]


async def test_a_gateway_killed_without_cleanup_leaves_no_ghost() -> None:
    clock = ManualClock()
    store, records = MemoryDeviceStore(clock), MemoryPresenceRecords()
    dead_sink, live_sink = Sink(), Sink()
    dead = service(clock, dead_sink, store, records)
    live = service(clock, live_sink, store, records)
    await dead.report("alice", dev(clock))  # then the gateway dies: no gone(), no sweep
    clock.advance(89)
    assert await live.sweep() == 0
    clock.advance(1)
    assert await live.sweep() == 1
    assert (await live.get("alice")).status is Status.OFFLINE
    assert [e[0] for e in live_sink.events] == ["user.offline"]
    assert await dead.sweep() == 0  # had it come back, it would find nothing to do


async def test_multi_device_desktop_active_and_phone_background_is_active() -> None:
    clock, sink = ManualClock(), Sink()
    svc = service(clock, sink)
    await svc.report("alice", dev(clock, "phone", foreground=False, kind="ios"))
    assert (await svc.get("alice")).status is Status.IDLE
    await svc.report("alice", dev(clock, "desk", kind="desktop"))
    p = await svc.get("alice")
    assert p.status is Status.ACTIVE
    assert {d.id for d in await svc.reachable("alice")} == {"phone", "desk"}
    assert await svc.active("alice")


async def test_active_needs_a_device_in_the_foreground_and_recently_active() -> None:
    """What the orchestrator's "user active right now" reads: reachable is not enough."""
    clock, sink = ManualClock(), Sink()
    svc = service(clock, sink)
    assert not await svc.active("alice")  # no device
    await svc.report("alice", dev(clock, "tab", foreground=False))
    assert await svc.reachable("alice") and not await svc.active("alice")  # backgrounded
    await svc.report("alice", dev(clock, "tab"))
    assert await svc.active("alice")
    idle = svc.config.idle_after  # connected and heartbeating, but no activity since:
    quiet = Device(id="tab", heartbeat_at=clock.now(), active_at=clock.now() - 1 - idle)
    await svc.report("alice", quiet)
    assert await svc.reachable("alice") and not await svc.active("alice")
    # a device that disconnected while active: its presence lingers, but it is not in the app
    await svc.report("alice", dev(clock, "tab"))
    assert await svc.active("alice")
    await svc.report("alice", dev(clock, "tab", connected=False))
    assert (await svc.get("alice")).status is Status.ACTIVE  # until the sweep
    assert not await svc.reachable("alice") and not await svc.active("alice")


async def test_last_seen_writes_are_bounded_by_the_interval() -> None:
    clock, sink = ManualClock(), Sink()
    records = MemoryPresenceRecords()
    svc = service(clock, sink, records=records, last_seen_interval=60)
    users = [f"u{i}" for i in range(50)]
    for _ in range(30):  # 10 minutes of heartbeats every 20 s, a sweep after each round
        for u in users:
            await svc.report(u, dev(clock))
        await svc.sweep()
        clock.advance(20)
    # 600 s / 60 s = 10 intervals (+1 for the first) per user, never once per heartbeat
    assert records.writes <= len(users) * 11
    assert svc.counters().reports == 1500
    assert await records.last_seen("u0") == pytest.approx(clock.now() - 20, abs=60)


async def test_status_updates_are_coalesced_per_user() -> None:
    clock, sink = ManualClock(), Sink()
    svc = service(clock, sink, update_interval=10)  # one push per user per 10 s
    await svc.report("alice", dev(clock, channels=("chat:1",)))
    await svc.report("alice", dev(clock, foreground=False, channels=("chat:1",)))
    await svc.report("alice", dev(clock, channels=("chat:1",)))  # active again ...
    clock.advance(4)
    await svc.report("alice", dev(clock, foreground=False, channels=("chat:1",)))  # ... idle
    await svc.sweep()
    statuses = [p[1]["status"] for p in sink.published]
    assert statuses == ["active"]  # the changes wait for the interval
    clock.advance(6)
    await svc.sweep()  # no report came: the sweep sends the newest state, once
    await svc.sweep()
    assert [p[1]["status"] for p in sink.published] == ["active", "idle"]
    clock.advance(2)
    await svc.sweep()
    assert len(sink.published) == 2


async def test_a_change_undone_within_the_interval_is_not_pushed() -> None:
    clock, sink = ManualClock(), Sink()
    svc = service(clock, sink, update_interval=10)
    await svc.report("alice", dev(clock, channels=("chat:1",)))
    await svc.report("alice", dev(clock, foreground=False, channels=("chat:1",)))
    await svc.report("alice", dev(clock, channels=("chat:1",)))  # back to active
    clock.advance(10)
    await svc.report("alice", dev(clock, channels=("chat:1",)))
    await svc.sweep()
    assert [p[1]["status"] for p in sink.published] == ["active"]


async def test_contacts_hear_of_changes_on_their_personal_channels() -> None:
    clock, sink = ManualClock(), Sink()
    records = MemoryPresenceRecords()
    svc = service(clock, sink, records=records)
    svc.contacts_namespace = "presence"
    assert await svc.set_contacts("alice", ["bob", "carol", "alice"]) == ("bob", "carol")
    await svc.report("alice", dev(clock, channels=("chat:1",)))
    assert [(c, d["status"]) for c, d, _ in sink.published] == [
        ("chat:1", "active"),
        ("presence:#bob", "active"),
        ("presence:#carol", "active"),
    ]
    await svc.set_contacts("alice", ["dave"])  # applies at once on this gateway
    clock.advance(90)
    assert await svc.sweep() == 1
    assert [(c, d["status"]) for c, d, _ in sink.published[3:]] == [
        ("chat:1", "offline"),
        ("presence:#dave", "offline"),
    ]
    await svc.set_privacy("alice", Privacy(hide_online=True))
    await svc.report("alice", dev(clock, channels=("chat:1",)))
    assert len(sink.published) == 5  # hidden: no contact hears anything
    assert await svc.contacts("alice") == ["dave"]


async def test_contact_lists_are_checked() -> None:
    clock, sink = ManualClock(), Sink()
    svc = service(clock, sink, max_contacts=2)
    with pytest.raises(InvalidInput, match="at most 2"):
        await svc.set_contacts("alice", ["a", "b", "c"])
    with pytest.raises(InvalidInput, match="must be"):
        await svc.set_contacts("alice", ["a#b"])
    assert await svc.set_contacts("alice", ["b", "a", "b"]) == ("a", "b")


async def test_a_failed_push_never_fails_the_report() -> None:
    clock, sink = ManualClock(), Sink()
    svc = service(clock, sink)

    async def broken(channel: str, data: bytes, tags: dict[str, str]) -> None:
        raise RuntimeError("broker down")

    svc._publish = broken
    p = await svc.report("alice", dev(clock, channels=("chat:1",)))
    assert p.status is Status.ACTIVE and [e[0] for e in sink.events] == ["user.online"]


async def test_typing_start_stop_throttle_and_ttl() -> None:
    clock, sink = ManualClock(), Sink()
    svc = service(clock, sink, typing_ttl=6, typing_throttle=3)
    assert await svc.typing("alice", "chat:1", True) is True
    assert await svc.typing("alice", "chat:1", True) is False  # throttled
    assert svc.typing_now("chat:1") == ["alice"]
    clock.advance(7)  # the client vanished: no stop came
    await svc.sweep()
    assert svc.typing_now("chat:1") == []
    typing = [(p[1]["typing"], p[2]) for p in sink.published]
    assert typing == [(True, {"tidings": "typing"}), (False, {"tidings": "typing"})]
    assert await svc.typing("alice", "chat:1", False) is False  # nothing to stop


async def test_typing_is_off_in_large_channels() -> None:
    clock, sink = ManualClock(), Sink()
    svc = service(clock, sink, members=500, typing_max_members=200)
    with pytest.raises(Forbidden, match="200"):
        await svc.typing("alice", "big:1", True)
    assert sink.published == []


async def test_privacy_is_honoured_for_others_and_in_fanout() -> None:
    clock, sink = ManualClock(), Sink()
    svc = service(clock, sink)
    await svc.set_privacy("alice", Privacy(hide_online=True, hide_last_seen=True))
    await svc.report("alice", dev(clock, channels=("chat:1",)))
    assert sink.published == []  # no presence push for a hidden user
    other = await svc.get("alice", viewer="bob")
    assert other.status is Status.OFFLINE and other.last_seen is None and other.devices == ()
    assert (await svc.get("alice", viewer="alice")).status is Status.ACTIVE
    assert (await svc.get("alice")).status is Status.ACTIVE  # the server sees all
    assert [e[0] for e in sink.events] == ["user.online"]  # the orchestrator still knows


async def test_a_user_with_many_connections_counts_at_most_max_devices() -> None:
    clock, sink = ManualClock(), Sink()
    secret = "s" * 64
    hub = Hub(
        MemoryBroker(clock),
        MemoryPresenceStore(clock),
        ChannelResolver.from_config({}),
        clock,
        GatewayOptions(keys=TokenKeys(hmac_secret=secret)),
    )
    svc = service(clock, sink, max_devices=4)
    hub.observer = GatewayPresence(svc, hub)
    token = encode_token(connection_claims("svc", now=clock.now()), secret)
    clients = []
    for _ in range(10):
        client = ClientConnection(hub, FakeTransport())
        client.receive(f'{{"id":1,"connect":{{"token":"{token}"}}}}'.encode())
        clients.append(client)
    for _ in range(50):
        await asyncio.sleep(0)
    assert len(await svc.devices.get("svc")) == 4  # the other six are served, not tracked
    tracked = {d.id for d in await svc.devices.get("svc")}
    first = next(c for c in clients if c.id in tracked)
    first.disconnect(Disconnect.of(DisconnectCode.FORCE_RECONNECT))
    spare = next(c for c in clients if c.id not in tracked)
    assert hub.observer is not None
    hub.observer.alive(spare)  # its heartbeat round: it takes the free slot
    for _ in range(50):
        await asyncio.sleep(0)
    devices = {d.id: d for d in await svc.devices.get("svc")}
    assert spare.id in devices and devices[first.id].connected is False


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.floats(min_value=0, max_value=8), st.booleans()), min_size=1, max_size=30
    )
)
def test_pushes_are_spaced_by_the_interval_and_end_on_the_newest_state(
    steps: list[tuple[float, bool]],
) -> None:
    """Whatever the user does: at most one push per `update_interval`, never the same status
    twice in a row, and once things settle the last push is the user's current status."""

    async def run() -> None:
        clock, sink = ManualClock(), Sink()
        svc = service(clock, sink, update_interval=5, idle_after=1000)
        at: list[float] = []

        async def publish(channel: str, data: bytes, tags: dict[str, str]) -> None:
            at.append(clock.now())
            await sink.publish(channel, data, tags)

        svc._publish = publish
        for dt, foreground in steps:
            clock.advance(dt)
            await svc.report("alice", dev(clock, foreground=foreground, channels=("chat:1",)))
            await svc.sweep()
        for _ in range(4):  # settle: heartbeats go on, the sweep runs
            clock.advance(2)
            last = steps[-1][1]
            await svc.report("alice", dev(clock, foreground=last, channels=("chat:1",)))
            await svc.sweep()
        statuses = [p[1]["status"] for p in sink.published]
        assert all(b - a >= 5 for a, b in itertools.pairwise(at)), at
        assert all(a != b for a, b in itertools.pairwise(statuses)), statuses
        assert statuses[-1] == (await svc.get("alice")).status.label

    asyncio.run(run())
