"""The hub: which local clients are in which channel, fanout of broker publications to them,
and the server API (publish, broadcast, history, presence, disconnect).

A publication is encoded once per channel (`EncodedPush`), and each transport takes the
same bytes. Publications are not written the moment the broker hands them over: those of one
channel that arrive in the same pass of the event loop are gathered into an `EncodedBatch`
(at most `max_messages_in_frame` of them, newline-delimited as the Centrifuge JSON protocol
allows), and its WebSocket frame is built once and written to every subscriber as it is. Under
a burst a subscriber gets one frame and one `write()` for many publications; a lone
publication goes out alone, one loop pass later.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable
from dataclasses import field
from typing import TYPE_CHECKING, Protocol

from tidings.core.channels import ChannelResolver, DeliveryClass
from tidings.core.protocol import frames as f
from tidings.core.protocol.codes import Disconnect, DisconnectCode
from tidings.core.protocol.limits import SessionConfig
from tidings.core.tokens import TokenKeys
from tidings.core.wsframe import frame as ws_frame
from tidings.ports.broker import Broker
from tidings.ports.clock import Clock
from tidings.ports.presence import PresenceStore
from tidings.records import record
from tidings.tasks import cancel
from tidings.types import ClientInfo, HistoryResult, PresenceStats, Publication, StreamPosition

if TYPE_CHECKING:
    from tidings.services.gateway.client import ClientConnection

log = logging.getLogger(__name__)


class EncodedPush:
    """A push encoded at most once per form, shared by every subscriber of the channel."""

    __slots__ = ("_frame", "_json", "pub")

    def __init__(self, pub: Publication | None, json: bytes | None = None) -> None:
        self.pub = pub
        self._json = json
        self._frame: bytes | None = None

    @property
    def json(self) -> bytes:
        if self._json is None:
            assert self.pub is not None
            self._json = f.encode_push_publication(self.pub.channel, self.pub)
        return self._json

    @property
    def ws_frame(self) -> bytes:
        if self._frame is None:
            self._frame = ws_frame(self.json)
        return self._frame


class EncodedBatch:
    """Publications of one channel gathered in one loop pass, in order, encoded once.

    `first`/`last` are the offsets of the first and last publication when they are
    contiguous in one epoch (the steady-state fast path); `first` is 0 otherwise."""

    __slots__ = ("channel", "epoch", "first", "last", "pubs", "pushes", "ws_frame")

    def __init__(self, channel: str, pubs: list[Publication]) -> None:
        self.channel = channel
        self.pubs = pubs
        self.pushes = [EncodedPush(pub) for pub in pubs]
        self.ws_frame = ws_frame(b"\n".join([push.json for push in self.pushes]))
        head = pubs[0]
        self.epoch = head.epoch
        self.first = self.last = 0
        if head.offset > 0 and all(
            p.offset == head.offset + i and p.epoch == head.epoch for i, p in enumerate(pubs)
        ):
            self.first, self.last = head.offset, pubs[-1].offset


class ConnectionObserver(Protocol):
    """Told about each connection's life (user presence builds on it) and asked for the
    client's `rpc` commands. The three notifications must not block: schedule work."""

    def connected(self, client: ClientConnection) -> None: ...

    def alive(self, client: ClientConnection) -> None:
        """A heartbeat came round and the connection is still there."""

    def gone(self, client: ClientConnection) -> None: ...

    async def rpc(self, client: ClientConnection, method: str, data: bytes | None) -> bytes:
        """The result data (JSON) of an rpc; raises `NotFound` for an unknown method,
        `Forbidden` or `InvalidInput` to refuse it."""
        ...


@record
class GatewayOptions:
    session: SessionConfig = field(default_factory=SessionConfig)
    keys: TokenKeys = field(default_factory=TokenKeys)
    max_buffer_bytes: int = 1024 * 1024  # outbound bytes queued per connection
    presence_ttl: float = 60.0  # entries are refreshed every third of it
    tick: float = 1.0  # heartbeat resolution, seconds
    drain_spread: float = 5.0  # reconnect advice spread on shutdown, seconds
    allow_anonymous: bool = False  # connect without a token as user ""
    max_messages_in_frame: int = 16  # publications of one channel written in one frame
    max_frame_bytes: int = 64 * 1024  # a gathered frame stops growing past this
    node: str = "node"


class Hub:
    def __init__(
        self,
        broker: Broker,
        presence: PresenceStore,
        channels: ChannelResolver,
        clock: Clock,
        options: GatewayOptions | None = None,
    ) -> None:
        self.broker = broker
        self.presence_store = presence
        self.channels = channels
        self.clock = clock
        self.options = options or GatewayOptions()
        self._subs: dict[str, dict[str, ClientConnection]] = {}
        self._clients: dict[str, ClientConnection] = {}
        self._users: dict[str, set[str]] = {}
        self._channel_locks: dict[str, asyncio.Lock] = {}
        self.observer: ConnectionObserver | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._draining = False
        self._gathered: dict[str, list[Publication]] = {}
        self._flush_pending = False
        # Heartbeat timer wheel: slot number (deadline / tick, rounded up) -> clients due then.
        self._wheel: dict[int, list[ClientConnection]] = {}
        self._slot_done = int(clock.monotonic() / self.options.tick)

    # --- life ------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.broker.start(self.on_publication, self.on_join_leave)
        self._ticker = asyncio.create_task(self._tick_loop(), name="gateway-ticker")

    async def stop(self) -> None:
        await cancel(self._ticker)
        self._ticker = None
        await self.broker.close()

    async def drain(self, spread: float | None = None) -> None:
        """Refuse new connections and disconnect every client with 3001 (shutdown,
        reconnect), in random order spread over `spread` seconds, so clients do not all come
        back to the other nodes at the same instant. They recover from history there."""
        self._draining = True
        clients = list(self._clients.values())
        random.shuffle(clients)
        spread = self.options.drain_spread if spread is None else spread
        batches = max(1, min(len(clients) // 100, 50)) if spread > 0 else 1
        size = -(-len(clients) // batches) if clients else 0
        for i in range(batches):
            for client in clients[i * size : (i + 1) * size]:
                client.disconnect(Disconnect.of(DisconnectCode.SHUTDOWN))
            if i + 1 < batches:
                await asyncio.sleep(spread / batches)
        await asyncio.sleep(0)

    @property
    def draining(self) -> bool:
        return self._draining

    # --- membership ------------------------------------------------------------------------

    def register(self, client: ClientConnection) -> None:
        self._clients[client.id] = client

    def connected(self, client: ClientConnection) -> None:
        self._users.setdefault(client.user, set()).add(client.id)

    def unregister(self, client: ClientConnection) -> None:
        self._clients.pop(client.id, None)
        ids = self._users.get(client.user)
        if ids is not None:
            ids.discard(client.id)
            if not ids:
                del self._users[client.user]

    def schedule(self, client: ClientConnection) -> None:
        """(Re)place `client` on the heartbeat wheel at its session's next deadline. Called
        after the session acted; an entry for a later slot than the current one is left in
        place and skipped when its slot comes (deadlines only move later between acts)."""
        deadline = client.session.next_deadline()
        if deadline is None:
            return
        slot = max(-int(-deadline // self.options.tick), self._slot_done + 1)
        if 0 <= client.slot <= slot:
            return
        client.slot = slot
        due = self._wheel.get(slot)
        if due is None:
            self._wheel[slot] = [client]
        else:
            due.append(client)

    def _heartbeats(self, now: float) -> None:
        """Run the heartbeats of the clients whose slots have come."""
        current = int(now // self.options.tick)
        for slot in range(self._slot_done + 1, current + 1):
            self._slot_done = slot
            for client in self._wheel.pop(slot, ()):
                if client.slot == slot:
                    client.slot = -1
                    client.tick(now)
                    self.schedule(client)

    def _lock(self, channel: str) -> asyncio.Lock:
        lock = self._channel_locks.get(channel)
        if lock is None:
            lock = self._channel_locks[channel] = asyncio.Lock()
        return lock

    async def join(self, channel: str, client: ClientConnection) -> None:
        """Add a local subscriber; the first one subscribes this node to the broker."""
        async with self._lock(channel):
            subs = self._subs.get(channel)
            if subs is None:
                await self.broker.subscribe(channel)
                subs = self._subs[channel] = {}
            subs[client.id] = client

    async def leave(self, channel: str, client: ClientConnection) -> None:
        async with self._lock(channel):
            subs = self._subs.get(channel)
            if subs is None or subs.pop(client.id, None) is None:
                return
            if not subs:
                del self._subs[channel]
                await self.broker.unsubscribe(channel)
                self._channel_locks.pop(channel, None)

    def local_subscribers(self, channel: str) -> int:
        return len(self._subs.get(channel, ()))

    @property
    def client_count(self) -> int:
        return len(self._clients)

    def channel_names(self) -> list[str]:
        return sorted(self._subs)

    # --- fanout ----------------------------------------------------------------------------

    def on_publication(self, pub: Publication) -> None:
        """Gather `pub`; the channel's gathered publications go out at the end of this pass
        of the event loop, in the order they came."""
        if pub.channel not in self._subs:
            return
        gathered = self._gathered.get(pub.channel)
        if gathered is None:
            self._gathered[pub.channel] = [pub]
            if not self._flush_pending:
                self._flush_pending = True
                asyncio.get_running_loop().call_soon(self.flush)
        else:
            gathered.append(pub)

    def flush(self) -> None:
        """Write every gathered publication to the channel's local subscribers now."""
        self._flush_pending = False
        gathered, self._gathered = self._gathered, {}
        limit, size_limit = self.options.max_messages_in_frame, self.options.max_frame_bytes
        for channel, pubs in gathered.items():
            start = 0
            while start < len(pubs):
                end, size = start + 1, len(pubs[start].data)
                while end < len(pubs) and end - start < limit and size < size_limit:
                    size += len(pubs[end].data)
                    end += 1
                subs = self._subs.get(channel)
                if not subs:
                    break
                batch = EncodedBatch(channel, pubs[start:end])
                for client in list(subs.values()):
                    client.deliver_batch(batch)
                start = end

    def on_join_leave(self, channel: str, info: ClientInfo, joined: bool) -> None:
        subs = self._subs.get(channel)
        if not subs:
            return
        data = f.encode_push_join(channel, info) if joined else f.encode_push_leave(channel, info)
        push = EncodedPush(None, data)
        for client in list(subs.values()):
            if client.wants_join_leave(channel):
                client.deliver_control(push)

    # --- server API ------------------------------------------------------------------------

    async def publish(
        self,
        channel: str,
        data: bytes,
        *,
        info: ClientInfo | None = None,
        idempotency_key: str | None = None,
        key: str | None = None,
    ) -> Publication:
        opts = self.channels.options(channel)
        durable = opts.delivery is not DeliveryClass.EPHEMERAL and opts.history_enabled
        return await self.broker.publish(
            channel,
            data,
            history_size=opts.history_size if durable else 0,
            history_ttl=opts.history_ttl if durable else 0.0,
            info=info,
            key=key,
            idempotency_key=idempotency_key,
        )

    async def signal(self, channel: str, data: bytes, tags: dict[str, str]) -> Publication:
        """An ephemeral publication (never in history, no offset) marked by `tags`, such as
        presence changes and typing: live subscribers get it, recovery never replays it."""
        self.channels.options(channel)  # validates the name
        return await self.broker.publish(channel, data, history_size=0, tags=tags)

    async def broadcast(self, channels: Iterable[str], data: bytes) -> list[Publication]:
        return [await self.publish(ch, data) for ch in channels]

    async def history(
        self, channel: str, *, since: StreamPosition | None = None, limit: int = 0
    ) -> HistoryResult:
        self.channels.options(channel)  # validates the name
        return await self.broker.history(channel, since=since, limit=limit)

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        self.channels.options(channel)
        return await self.presence_store.get(channel)

    async def presence_stats(self, channel: str) -> PresenceStats:
        self.channels.options(channel)
        return await self.presence_store.stats(channel)

    def disconnect_user(self, user: str, disconnect: Disconnect) -> int:
        """Disconnect every local connection of `user`; returns how many."""
        ids = list(self._users.get(user, ()))
        for cid in ids:
            client = self._clients.get(cid)
            if client is not None:
                client.disconnect(disconnect)
        return len(ids)

    # --- time ------------------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        presence_every = max(1.0, self.options.presence_ttl / 3)
        next_presence = self.clock.monotonic() + presence_every
        while True:
            await asyncio.sleep(self.options.tick)
            now = self.clock.monotonic()
            self._heartbeats(now)
            if now >= next_presence:
                next_presence = now + presence_every
                for client in list(self._clients.values()):
                    try:
                        await client.refresh_presence()
                    except Exception:
                        log.exception("presence refresh failed")
