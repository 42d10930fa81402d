"""One client connection, whatever its transport: feeds frames to the pure protocol session,
fulfils what the session asks (auth, subscribe with recovery, publish, presence, history),
applies backpressure per delivery class, and cleans up when it ends."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from typing import TYPE_CHECKING, Protocol

from tidings.core.channels import DeliveryClass, NamespaceOptions
from tidings.core.protocol import frames as f
from tidings.core.protocol import requests as r
from tidings.core.protocol.codes import Disconnect, DisconnectCode, ErrorCode
from tidings.core.protocol.session import Delivery, Output, Session
from tidings.core.tokens import (
    InvalidToken,
    TokenExpired,
    decode_connection_token,
    decode_subscription_token,
)
from tidings.errors import Forbidden, NotFound, TidingsError
from tidings.types import ClientInfo, Publication, StreamPosition
from tidings.types import HistoryResult as BrokerHistory

if TYPE_CHECKING:
    from tidings.services.gateway.hub import EncodedBatch, EncodedPush, Hub

log = logging.getLogger(__name__)


def _offset(push: EncodedPush) -> int:
    return push.pub.offset if push.pub is not None else 0


class Transport(Protocol):
    """What a client connection needs of its transport.

    `paused` is true while more than the hub's `max_buffer_bytes` wait to be sent to the peer;
    the transport keeps it up to date (it is read for every publication)."""

    @property
    def paused(self) -> bool:
        """More than `max_buffer_bytes` wait to be sent."""

    def write(self, data: bytes) -> None:
        """Send one protocol message (a reply, a ping or a push, JSON)."""

    def write_push(self, push: EncodedPush) -> None:
        """Send a push encoded once for every subscriber."""

    def write_batch(self, batch: EncodedBatch) -> None:
        """Send every push of a batch, in order, as the transport frames them best."""

    def close(self, close: r.Close) -> None:
        """End the connection with the session's close code."""


class ClientConnection:
    __slots__ = (
        "_closed",
        "_hub",
        "_latest",
        "_requests",
        "_runner",
        "id",
        "name",
        "session",
        "slot",
        "transport",
        "user",
    )

    def __init__(self, hub: Hub, transport: Transport) -> None:
        self._hub = hub
        self.transport = transport
        self.id = str(uuid.uuid4())
        self.user = ""
        self.name = ""  # the client's name from connect (js, python, ...)
        self.session = Session(hub.options.session, hub.channels, hub.clock.monotonic())
        self._requests: deque[r.Request] = deque()
        self._runner: asyncio.Task[None] | None = None
        self._latest: dict[tuple[str, str], EncodedPush] | None = None
        self._closed = False
        self.slot = -1  # heartbeat wheel slot (the hub's), -1: none
        hub.register(self)
        hub.schedule(self)

    # --- input from the transport ----------------------------------------------------------

    def receive(self, data: bytes) -> None:
        self._act(self.session.receive(data, self._hub.clock.monotonic()))

    def transport_lost(self) -> None:
        """The peer went away: clean up without writing anything."""
        if not self._closed:
            close = self.session.close(Disconnect.of(DisconnectCode.CONNECTION_CLOSED))
            self._finish(close, write=False)

    def writable(self) -> None:
        """The transport drained below its limit: send coalesced latest-state pushes."""
        pending, self._latest = self._latest, None
        for push in sorted((pending or {}).values(), key=_offset):
            if self._closed:
                return
            self.transport.write_push(push)

    def disconnect(self, disconnect: Disconnect) -> None:
        """Server-initiated close."""
        if not self._closed:
            self._act([self.session.close(disconnect)])

    def tick(self, now: float) -> None:
        """The hub's heartbeat wheel says a deadline of this session has come."""
        if self._closed:
            return
        deadline = self.session.next_deadline()
        if deadline is not None and deadline <= now:
            self._act(self.session.heartbeat(now))
            if self._hub.observer is not None and not self._closed and self.session.client:
                self._hub.observer.alive(self)

    # --- outputs of the session ------------------------------------------------------------

    def _act(self, outputs: list[Output]) -> None:
        for out in outputs:
            if self._closed:
                return
            if isinstance(out, bytes):
                self.transport.write(out)
            elif isinstance(out, r.Close):
                self._finish(out, write=True)
            else:
                self._requests.append(out)
        if self._closed:
            return
        if self._requests and self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run_requests())
        self._hub.schedule(self)

    async def _run_requests(self) -> None:
        try:
            while self._requests and not self._closed:
                req = self._requests.popleft()
                try:
                    outputs = await self._fulfil(req)
                except (InvalidToken, TokenExpired) as exc:
                    outputs = self.session.fail(req, exc.protocol_error)
                except TidingsError as exc:
                    log.info("request refused", extra={"client": self.id, "error": exc.message})
                    outputs = self.session.fail(req, ErrorCode.BAD_REQUEST)
                except Exception:
                    log.exception("request failed", extra={"client": self.id})
                    outputs = self.session.fail(req, ErrorCode.INTERNAL)
                self._act(outputs)
        finally:
            self._runner = None
            if self._requests and not self._closed:
                self._runner = asyncio.get_running_loop().create_task(self._run_requests())

    async def _fulfil(self, req: r.Request) -> list[Output]:
        hub, s = self._hub, self.session
        now = hub.clock.monotonic()
        match req:
            case r.ConnectRequest():
                return await self._connect(req, now)
            case r.SubscribeRequest():
                return await self._subscribe(req, now)
            case r.UnsubscribeRequest():
                await self._leave(req.channel, self.session.info)
                return []
            case r.PublishRequest():
                await hub.publish(req.channel, req.data, info=s.info)
                return s.reply(req, f.PublishResult())
            case r.PresenceRequest():
                clients = await hub.presence(req.channel)
                return s.reply(req, f.PresenceResult(clients))
            case r.PresenceStatsRequest():
                stats = await hub.presence_stats(req.channel)
                return s.reply(req, f.PresenceStatsResult(stats.num_clients, stats.num_users))
            case r.HistoryRequest():
                return await self._history(req)
            case r.RefreshRequest():
                token = decode_connection_token(req.token, hub.options.keys, hub.clock.now())
                if token.user != self.user:
                    return s.fail(req, Disconnect.of(DisconnectCode.INVALID_TOKEN))
                return s.refreshed(req, now, ttl=token.ttl(hub.clock.now()))
            case r.SubRefreshRequest():
                sub = decode_subscription_token(
                    req.token,
                    hub.options.keys,
                    hub.clock.now(),
                    channel=req.channel,
                    user=self.user,
                )
                return s.sub_refreshed(req, now, ttl=sub.ttl(hub.clock.now()))
            case r.RpcRequest():
                if hub.observer is None:
                    return s.fail(req, ErrorCode.METHOD_NOT_FOUND)
                try:
                    data = await hub.observer.rpc(self, req.method, req.data)
                except NotFound:
                    return s.fail(req, ErrorCode.METHOD_NOT_FOUND)
                except Forbidden:
                    return s.fail(req, ErrorCode.PERMISSION_DENIED)
                return s.reply(req, f.RpcResult(data))
            case r.SendRequest():
                return []
        return []  # pragma: no cover

    async def _connect(self, req: r.ConnectRequest, now: float) -> list[Output]:
        hub = self._hub
        if hub.draining:
            return self.session.fail(req, Disconnect.of(DisconnectCode.SHUTDOWN))
        user, info, ttl = "", None, None
        claimed: tuple[str, ...] = ()
        if req.token or not hub.options.allow_anonymous:
            token = decode_connection_token(req.token, hub.options.keys, hub.clock.now())
            user, info, ttl, claimed = (
                token.user,
                token.info,
                token.ttl(hub.clock.now()),
                token.channels,
            )
        self.user, self.name = user, req.name
        subs: dict[str, r.ServerSubscription] = {}
        for channel in claimed:
            opts = hub.channels.options(channel)
            back = req.subs.get(channel)
            since = StreamPosition(back.offset, back.epoch) if back and back.recover else None
            await hub.join(channel, self)
            position, history = await self._position(channel, opts, since)
            subs[channel] = r.ServerSubscription(opts, position, history)
        outputs = self.session.connected(
            req, now, client=self.id, user=user, conn_info=info, ttl=ttl, subs=subs
        )
        hub.connected(self)
        self._act(outputs)
        if hub.observer is not None and not self._closed:
            hub.observer.connected(self)
        for channel in subs:
            await self._joined(channel, hub.channels.options(channel))
        return []

    async def _position(
        self, channel: str, opts: NamespaceOptions, since: StreamPosition | None
    ) -> tuple[StreamPosition | None, BrokerHistory | None]:
        if not opts.positioned:
            return None, None
        history = await self._hub.broker.history(
            channel, since=since, limit=-1 if since is not None else 0
        )
        return history.position, (history if since is not None else None)

    async def _subscribe(self, req: r.SubscribeRequest, now: float) -> list[Output]:
        hub = self._hub
        ttl = None
        if req.options.private or req.token:
            token = decode_subscription_token(
                req.token, hub.options.keys, hub.clock.now(), channel=req.channel, user=self.user
            )
            ttl = token.ttl(hub.clock.now())
        # Join first: publications from here on are held by the session until the reply, so
        # nothing falls between the history read and the live stream.
        await hub.join(req.channel, self)
        try:
            position, history = await self._position(req.channel, req.options, req.since)
        except Exception:
            await hub.leave(req.channel, self)
            raise
        outputs = self.session.subscribed(req, now, position=position, history=history, ttl=ttl)
        if not outputs:  # unsubscribed or closed meanwhile
            await hub.leave(req.channel, self)
            return outputs
        self._act(outputs)  # the reply goes out before this client's own join push
        await self._joined(req.channel, req.options)
        return []

    async def _joined(self, channel: str, opts: NamespaceOptions) -> None:
        info = self.session.info
        if opts.presence:
            await self._hub.presence_store.add(channel, info, self._hub.options.presence_ttl)
        if opts.join_leave:
            await self._hub.broker.publish_join_leave(channel, info, True)

    async def _leave(self, channel: str, info: ClientInfo) -> None:
        hub = self._hub
        await hub.leave(channel, self)
        try:
            opts = hub.channels.options(channel)
        except TidingsError:
            return
        if opts.presence:
            await hub.presence_store.remove(channel, info.client)
        if opts.join_leave:
            await hub.broker.publish_join_leave(channel, info, False)

    async def _history(self, req: r.HistoryRequest) -> list[Output]:
        """Forward: publications after `since` (or the oldest kept), oldest first. Reverse:
        publications before `since` (or the newest kept), newest first. At most `limit`;
        `limit` 0 gives the position only, -1 everything kept."""
        if not req.reverse:
            result = await self._hub.history(req.channel, since=req.since, limit=req.limit)
            pubs = result.publications
        else:
            result = await self._hub.history(req.channel, limit=-1 if req.limit else 0)
            older = [
                p for p in result.publications if req.since is None or p.offset < req.since.offset
            ]
            older.reverse()
            pubs = tuple(older if req.limit < 0 else older[: req.limit])
        if req.since is not None and req.since.epoch != result.position.epoch:
            return self.session.fail(req, ErrorCode.UNRECOVERABLE_POSITION)
        return self.session.reply(
            req, f.HistoryResult(pubs, result.position.epoch, result.position.offset)
        )

    async def refresh_presence(self) -> None:
        if self._closed or not self.session.channels:
            return
        info = self.session.info
        for channel in self.session.channels:
            if self._hub.channels.options(channel).presence:
                await self._hub.presence_store.add(channel, info, self._hub.options.presence_ttl)

    # --- fanout ----------------------------------------------------------------------------

    def wants_join_leave(self, channel: str) -> bool:
        return self.session.wants_join_leave(channel)

    def deliver_batch(self, batch: EncodedBatch) -> None:
        """Publications of one channel, in order. In the steady state they go out as the
        batch's one frame; otherwise each takes the careful path (`deliver`)."""
        if self.session.on_batch(batch.channel, batch.epoch, batch.first, batch.last):
            if self._latest is None and not self.transport.paused:
                self.transport.write_batch(batch)
                return
            for pub, push in zip(batch.pubs, batch.pushes, strict=True):
                if self._closed:
                    return
                self._send_push(pub, push)
            return
        for pub, push in zip(batch.pubs, batch.pushes, strict=True):
            if self._closed:
                return
            self.deliver(pub, push)

    def deliver(self, pub: Publication, push: EncodedPush) -> None:
        verdict = self.session.on_publication(pub)
        if verdict is Delivery.DELIVER:
            self._send_push(pub, push)
        elif verdict is Delivery.RESYNC and self.session.closed_with is not None:
            self._finish(self.session.closed_with, write=True)

    def deliver_control(self, push: EncodedPush) -> None:
        if not self._closed:
            self.transport.write_push(push)

    def _send_push(self, pub: Publication, push: EncodedPush) -> None:
        if self._latest is None and not self.transport.paused:
            self.transport.write_push(push)
            return
        self.overflow(pub, push)

    def overflow(self, pub: Publication, push: EncodedPush) -> None:
        """`push` cannot be written now (the transport is paused): drop, coalesce or
        disconnect by the channel's delivery class."""
        delivery = self._hub.channels.options(pub.channel).delivery
        if delivery is DeliveryClass.EPHEMERAL:
            return  # may be dropped by contract
        if delivery is DeliveryClass.LATEST:
            if self._latest is None:
                self._latest = {}
            self._latest[(pub.channel, pub.key or "")] = push
            return
        self.disconnect(Disconnect.of(DisconnectCode.SLOW))

    # --- end -------------------------------------------------------------------------------

    def _finish(self, close: r.Close, *, write: bool) -> None:
        if self._closed:
            return
        self._closed = True
        self._requests.clear()
        self._hub.unregister(self)
        if self._hub.observer is not None and self.session.client:
            self._hub.observer.gone(self)
        if write:
            self.transport.close(close)
        if close.channels:
            info = self.session.info
            asyncio.get_running_loop().create_task(self._cleanup(close.channels, info))

    async def _cleanup(self, channels: tuple[str, ...], info: ClientInfo) -> None:
        for channel in channels:
            try:
                await self._leave(channel, info)
            except Exception:
                log.exception("leave failed", extra={"channel": channel})
