"""The connection state machine of the Centrifuge client protocol, with no I/O.

Like python-websockets' `Protocol`, a `Session` takes bytes and the time in and gives back
what to do: bytes to write, typed requests to fulfil, or a `Close`. The I/O layer:

1. feeds every received frame to `receive(data, now)` and acts on each output in order:
   write `bytes`, fulfil a `Request` (see `requests.py`), or close the transport on `Close`;
2. answers every request with an id through `connected`, `subscribed`, `refreshed`,
   `sub_refreshed`, `reply` or `fail`, and writes what they return;
3. asks `on_publication(pub)` before writing a publication push (encoded once by the hub
   with `encode_push_publication`) and writes it only on `Delivery.DELIVER`;
4. calls `heartbeat(now)` by `next_deadline()` to send pings and enforce timeouts;
5. calls `close(...)` when the server ends the connection, or with
   `Disconnect.of(DisconnectCode.CONNECTION_CLOSED)` when the client went away.

After a `Close` every method returns nothing. Times are seconds of a monotonic clock.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from tidings.core.channels import ChannelResolver, DeliveryClass, NamespaceOptions
from tidings.core.protocol import frames as f
from tidings.core.protocol import requests as r
from tidings.core.protocol.access import authorize
from tidings.core.protocol.codes import (
    UNSUBSCRIBE_REASONS,
    Disconnect,
    DisconnectCode,
    ErrorCode,
    ReplyError,
    UnsubscribeCode,
)
from tidings.core.protocol.commands import Command, ProtocolError, decode_commands
from tidings.core.protocol.limits import SessionConfig, TokenBucket
from tidings.core.protocol.recovery import subscribe_result
from tidings.types import ClientInfo, HistoryResult, Publication, StreamPosition

__all__ = ["Delivery", "Output", "Session", "SessionConfig", "State"]

Output = bytes | r.Request | r.Close


class State(enum.Enum):
    AWAITING_CONNECT = "awaiting_connect"
    CONNECTING = "connecting"  # a ConnectRequest is out
    CONNECTED = "connected"
    CLOSED = "closed"


class Delivery(enum.Enum):
    DELIVER = "deliver"  # write the push
    DROP = "drop"  # not subscribed, or a duplicate
    BUFFERED = "buffered"  # subscribe in flight: the session sends it after the reply
    RESYNC = "resync"  # position lost: the session closed, see `Session.closed_with`


@dataclass(slots=True)
class _Sub:
    options: NamespaceOptions
    request: r.SubscribeRequest | None  # set while the subscribe is in flight
    epoch: str = ""
    offset: int = 0
    tracked: bool = False  # positioned: offsets are checked for gaps
    expires_at: float | None = None
    buffer: list[Publication] = field(default_factory=list)
    join_leave: bool = False  # wants join/leave pushes


class Session:
    def __init__(self, config: SessionConfig, channels: ChannelResolver, now: float) -> None:
        self.config = config
        self.state = State.AWAITING_CONNECT
        self.client = ""
        self.user = ""
        self.conn_info: bytes | None = None
        self.closed_with: r.Close | None = None
        self._channels = channels
        self._created = now
        self._bucket = TokenBucket(config.commands_per_second, config.command_burst, now)
        self._subs: dict[str, _Sub] = {}
        self._pending: list[Command] = []
        self._connect: r.ConnectRequest | None = None
        self._unusable = False  # connect failed with an error reply
        self._expires_at: float | None = None
        self._last_ping = now
        self._ping_sent: float | None = None  # awaiting the pong since

    # --- input -----------------------------------------------------------------------------

    def receive(self, data: bytes | str, now: float) -> list[Output]:
        """Process one transport frame of newline-delimited commands."""
        if self.state is State.CLOSED:
            return []
        if isinstance(data, str):
            data = data.encode()
        if len(data) > self.config.max_frame_size:
            return [self._close(Disconnect.of(DisconnectCode.BAD_REQUEST, "frame too large"))]
        try:
            commands = decode_commands(data, max_command_size=self.config.max_command_size)
        except ProtocolError as exc:
            return [self._close(exc.disconnect)]
        return self._run(commands, now)

    def _run(self, commands: list[Command], now: float) -> list[Output]:
        out: list[Output] = []
        for cmd in commands:
            if self.closed_with is not None:
                break
            out.extend(self._handle(cmd, now))
        return out

    def _handle(self, cmd: Command, now: float) -> list[Output]:
        if self._unusable:
            return [self._close(Disconnect.of(DisconnectCode.BAD_REQUEST))]
        if self.state is State.CONNECTING:
            if isinstance(cmd, f.ConnectCommand):
                return [self._close(Disconnect.of(DisconnectCode.BAD_REQUEST))]
            if len(self._pending) >= self.config.max_pending_commands:
                return [self._close(Disconnect.of(DisconnectCode.TOO_MANY_REQUESTS))]
            self._pending.append(cmd)
            return []
        if isinstance(cmd, f.PongCommand) and self.state is State.CONNECTED:
            self._ping_sent = None
            return []
        if isinstance(cmd, f.ConnectCommand) != (self.state is State.AWAITING_CONNECT):
            return [self._close(Disconnect.of(DisconnectCode.BAD_REQUEST))]
        if not self._bucket.take(now):
            if isinstance(cmd, f.SendCommand):
                return []
            return [f.encode_reply_error(cmd.id, ReplyError.of(ErrorCode.TOO_MANY_REQUESTS))]
        return self._dispatch(cmd)

    def _dispatch(self, cmd: Command) -> list[Output]:
        match cmd:
            case f.ConnectCommand():
                self.state = State.CONNECTING
                self._connect = r.ConnectRequest(
                    cmd.id, cmd.token, cmd.data, cmd.name, cmd.version, cmd.headers, cmd.subs
                )
                return [self._connect]
            case f.SubscribeCommand():
                return self._subscribe(cmd)
            case f.UnsubscribeCommand():
                reply = f.encode_reply(cmd.id, f.UnsubscribeResult())
                if self._subs.pop(cmd.channel, None) is None:
                    return [reply]
                return [reply, r.UnsubscribeRequest(cmd.channel)]
            case (
                f.PublishCommand()
                | f.PresenceCommand()
                | f.PresenceStatsCommand()
                | f.HistoryCommand()
            ):
                opts = authorize(self._channels, cmd, self.user)
                if isinstance(opts, ErrorCode):
                    return [self._error(cmd.id, opts)]
                if isinstance(cmd, f.PublishCommand):
                    return [r.PublishRequest(cmd.id, cmd.channel, cmd.data, opts)]
                if isinstance(cmd, f.PresenceCommand):
                    return [r.PresenceRequest(cmd.id, cmd.channel)]
                if isinstance(cmd, f.PresenceStatsCommand):
                    return [r.PresenceStatsRequest(cmd.id, cmd.channel)]
                return [r.HistoryRequest(cmd.id, cmd.channel, cmd.limit, cmd.since, cmd.reverse)]
            case f.PingCommand():
                return [f.encode_reply(cmd.id, f.PingResult())]
            case f.SendCommand():
                return [r.SendRequest(cmd.data)]
            case f.RpcCommand():
                return [r.RpcRequest(cmd.id, cmd.method, cmd.data)]
            case f.RefreshCommand():
                return [r.RefreshRequest(cmd.id, cmd.token)]
            case f.SubRefreshCommand():
                sub = self._subs.get(cmd.channel)
                if sub is None or sub.request is not None:
                    return [self._error(cmd.id, ErrorCode.PERMISSION_DENIED)]
                return [r.SubRefreshRequest(cmd.id, cmd.channel, cmd.token)]
        return [self._close(Disconnect.of(DisconnectCode.BAD_REQUEST))]  # pragma: no cover

    def _subscribe(self, cmd: f.SubscribeCommand) -> list[Output]:
        if cmd.channel in self._subs:
            return [self._error(cmd.id, ErrorCode.ALREADY_SUBSCRIBED)]
        if len(self._subs) >= self.config.max_subscriptions:
            return [self._error(cmd.id, ErrorCode.LIMIT_EXCEEDED)]
        opts = authorize(self._channels, cmd, self.user)
        if isinstance(opts, ErrorCode):
            return [self._error(cmd.id, opts)]
        since = StreamPosition(cmd.offset, cmd.epoch) if cmd.recover else None
        req = r.SubscribeRequest(
            cmd.id, cmd.channel, opts, cmd.token, since, cmd.data, cmd.join_leave
        )
        wants = opts.join_leave and (cmd.join_leave or opts.force_push_join_leave)
        self._subs[cmd.channel] = _Sub(options=opts, request=req, join_leave=wants)
        return [req]

    # --- answers from the I/O layer --------------------------------------------------------

    def connected(
        self,
        request: r.ConnectRequest,
        now: float,
        *,
        client: str,
        user: str,
        conn_info: bytes | None = None,
        data: bytes | None = None,
        ttl: int | None = None,
        subs: Mapping[str, r.ServerSubscription] | None = None,
    ) -> list[Output]:
        """The connection is authenticated: reply, then run commands that arrived meanwhile.

        `ttl` (seconds) makes the connection expire unless refreshed; `subs` are server-side
        subscriptions, answered in the connect reply."""
        if self.state is not State.CONNECTING or request is not self._connect:
            return []
        self.state, self.client, self.user = State.CONNECTED, client, user
        self.conn_info = conn_info
        self._expires_at = now + ttl if ttl is not None else None
        self._last_ping = now
        results: dict[str, f.SubscribeResult] = {}
        for channel, ss in (subs or {}).items():
            back = request.subs.get(channel)
            since = StreamPosition(back.offset, back.epoch) if back and back.recover else None
            wants = ss.options.join_leave and ss.options.force_push_join_leave
            sub = _Sub(options=ss.options, request=None, join_leave=wants)
            results[channel] = self._establish(sub, since, ss.position, ss.history, ss.data, None)
            self._subs[channel] = sub
        result = f.ConnectResult(
            client=client,
            version=self.config.server_version,
            expires=ttl is not None,
            ttl=ttl or 0,
            data=data,
            subs=results,
            ping=int(self.config.ping_interval),
            pong=self.config.ping_interval > 0 and self.config.pong_timeout > 0,
        )
        pending, self._pending = self._pending, []
        return [f.encode_reply(request.id, result), *self._run(pending, now)]

    def subscribed(
        self,
        request: r.SubscribeRequest,
        now: float,
        *,
        position: StreamPosition | None = None,
        history: HistoryResult | None = None,
        data: bytes | None = None,
        ttl: int | None = None,
    ) -> list[Output]:
        """The subscription is in place: reply (recovering from `history` when the client
        asked to) and send the publications buffered meanwhile. `position` is the stream top
        for positioned namespaces. Returns nothing if the client unsubscribed meanwhile."""
        sub = self._subs.get(request.channel)
        if self.state is State.CLOSED or sub is None or sub.request is not request:
            return []
        sub.request = None
        expires_at = now + ttl if ttl is not None else None
        result = self._establish(sub, request.since, position, history, data, ttl)
        sub.expires_at = expires_at
        out: list[Output] = [f.encode_reply(request.id, result)]
        buffered, sub.buffer = sub.buffer, []
        for pub in buffered:
            verdict = self._track(sub, pub)
            if verdict is Delivery.DELIVER:
                out.append(f.encode_push_publication(request.channel, pub))
            elif verdict is Delivery.RESYNC:
                out.append(self._close(Disconnect.of(DisconnectCode.INSUFFICIENT_STATE)))
                break
        return out

    def _establish(
        self,
        sub: _Sub,
        since: StreamPosition | None,
        position: StreamPosition | None,
        history: HistoryResult | None,
        data: bytes | None,
        ttl: int | None,
    ) -> f.SubscribeResult:
        result, tracked = subscribe_result(sub.options, since, position, history, data, ttl)
        if tracked is not None:
            sub.tracked, sub.epoch, sub.offset = True, tracked.epoch, tracked.offset
        return result

    def refreshed(self, request: r.RefreshRequest, now: float, *, ttl: int | None) -> list[Output]:
        """The connection token was renewed; `ttl` None means it no longer expires."""
        if self.state is not State.CONNECTED:
            return []
        self._expires_at = now + ttl if ttl is not None else None
        version = self.config.server_version
        result = f.RefreshResult(self.client, version, ttl is not None, ttl or 0)
        return [f.encode_reply(request.id, result)]

    def sub_refreshed(
        self, request: r.SubRefreshRequest, now: float, *, ttl: int | None
    ) -> list[Output]:
        """The subscription token was renewed; `ttl` None means it no longer expires."""
        sub = self._subs.get(request.channel) if self.state is State.CONNECTED else None
        if sub is None:
            return []
        sub.expires_at = now + ttl if ttl is not None else None
        return [f.encode_reply(request.id, f.SubRefreshResult(ttl is not None, ttl or 0))]

    def reply(self, request: r.Request, result: f.Result) -> list[Output]:
        """Answer publish, presence, presence_stats, history or rpc with its result."""
        if isinstance(request, r.UnsubscribeRequest | r.SendRequest):
            raise ValueError("notifications take no reply")
        if self.state is State.CLOSED:
            return []
        return [f.encode_reply(request.id, result)]

    def fail(self, request: r.Request, error: ErrorCode | ReplyError | Disconnect) -> list[Output]:
        """Answer a request with an error reply, or close the connection for a `Disconnect`.
        After a failed connect the connection is unusable: its next command closes it."""
        if self.state is State.CLOSED:
            return []
        if isinstance(error, Disconnect):
            return [self._close(error)]
        if isinstance(request, r.ConnectRequest):
            if request is not self._connect:
                return []
            self._unusable, self.state, self._pending = True, State.AWAITING_CONNECT, []
        if isinstance(request, r.SubscribeRequest):
            sub = self._subs.get(request.channel)
            if sub is not None and sub.request is request:
                del self._subs[request.channel]
        if isinstance(request, r.UnsubscribeRequest | r.SendRequest):
            return []
        err = error if isinstance(error, ReplyError) else ReplyError.of(error)
        return [f.encode_reply_error(request.id, err)]

    # --- server side events ----------------------------------------------------------------

    def on_publication(self, pub: Publication) -> Delivery:
        """Whether to write the hub's encoded push of `pub` to this client. Duplicates are
        dropped; a gap in a durable stream's offsets (or a new epoch) closes the session
        with 3010 insufficient state so the client reconnects and recovers."""
        sub = self._subs.get(pub.channel) if self.state is State.CONNECTED else None
        if sub is None:
            return Delivery.DROP
        if sub.request is not None:
            if len(sub.buffer) >= self.config.max_buffered_publications:
                self._close(Disconnect.of(DisconnectCode.INSUFFICIENT_STATE))
                return Delivery.RESYNC
            sub.buffer.append(pub)
            return Delivery.BUFFERED
        verdict = self._track(sub, pub)
        if verdict is Delivery.RESYNC:
            self._close(Disconnect.of(DisconnectCode.INSUFFICIENT_STATE))
        return verdict

    def on_batch(self, channel: str, epoch: str, first: int, last: int) -> bool:
        """The steady-state fast path for publications `first..last` of `channel`, gathered in
        one pass and known to be contiguous in `epoch` (`first` 0: not known to be). True when
        the client takes them all as they are: it is subscribed with nothing in flight, and
        for a positioned subscription they follow on from its offset (which then moves to
        `last`). False: nothing changed; ask `on_publication` for each one."""
        sub = self._subs.get(channel)
        if sub is None or sub.request is not None or self.state is not State.CONNECTED:
            return False
        if not sub.tracked:
            return True
        if first == 0 or first != sub.offset + 1 or epoch != sub.epoch:
            return False
        sub.offset = last
        return True

    def _track(self, sub: _Sub, pub: Publication) -> Delivery:
        if not sub.tracked or pub.offset == 0:
            return Delivery.DELIVER
        if pub.epoch != sub.epoch:
            return Delivery.RESYNC
        if pub.offset <= sub.offset:
            return Delivery.DROP
        if pub.offset != sub.offset + 1 and sub.options.delivery is DeliveryClass.DURABLE:
            return Delivery.RESYNC
        sub.offset = pub.offset
        return Delivery.DELIVER

    def server_unsubscribe(
        self, channel: str, code: UnsubscribeCode = UnsubscribeCode.SERVER
    ) -> list[Output]:
        """The server removes the client from `channel` (e.g. access revoked)."""
        if self.state is not State.CONNECTED or self._subs.pop(channel, None) is None:
            return []
        return [f.encode_push_unsubscribe(channel, int(code), UNSUBSCRIBE_REASONS[code])]

    def heartbeat(self, now: float) -> list[Output]:
        """Send a ping when one is due; close stale, silent or expired connections."""
        cfg = self.config
        if self.state is State.CLOSED:
            return []
        if self.state is not State.CONNECTED:
            if cfg.stale_timeout > 0 and now - self._created >= cfg.stale_timeout:
                return [self._close(Disconnect.of(DisconnectCode.STALE))]
            return []
        if self._expires_at is not None and now >= self._expires_at + cfg.expire_grace:
            return [self._close(Disconnect.of(DisconnectCode.EXPIRED))]
        for sub in self._subs.values():
            if sub.expires_at is not None and now >= sub.expires_at + cfg.expire_grace:
                return [self._close(Disconnect.of(DisconnectCode.SUB_EXPIRED))]
        if self._ping_sent is not None and now - self._ping_sent >= cfg.pong_timeout:
            return [self._close(Disconnect.of(DisconnectCode.NO_PONG))]
        if cfg.ping_interval > 0 and now - self._last_ping >= cfg.ping_interval:
            self._last_ping = now
            if cfg.pong_timeout > 0 and self._ping_sent is None:
                self._ping_sent = now
            return [f.PING]
        return []

    def next_deadline(self) -> float | None:
        """When `heartbeat` next has something to do (None: never)."""
        cfg = self.config
        if self.state is State.CLOSED:
            return None
        if self.state is not State.CONNECTED:
            return self._created + cfg.stale_timeout if cfg.stale_timeout > 0 else None
        times = [
            s.expires_at + cfg.expire_grace for s in self._subs.values() if s.expires_at is not None
        ]
        if self._expires_at is not None:
            times.append(self._expires_at + cfg.expire_grace)
        if self._ping_sent is not None:
            times.append(self._ping_sent + cfg.pong_timeout)
        if cfg.ping_interval > 0:
            times.append(self._last_ping + cfg.ping_interval)
        return min(times) if times else None

    def close(self, disconnect: Disconnect) -> r.Close:
        """End the session (idempotent: a second call returns the first `Close`)."""
        return self._close(disconnect)

    def _close(self, disconnect: Disconnect) -> r.Close:
        if self.closed_with is not None:
            return self.closed_with
        self.closed_with = r.Close(
            disconnect.code, disconnect.reason, disconnect.reconnect, tuple(self._subs)
        )
        self.state, self._subs, self._pending = State.CLOSED, {}, []
        return self.closed_with

    def _error(self, cmd_id: int, code: ErrorCode) -> bytes:
        return f.encode_reply_error(cmd_id, ReplyError.of(code))

    # --- views -----------------------------------------------------------------------------

    @property
    def info(self) -> ClientInfo:
        return ClientInfo(user=self.user, client=self.client, conn_info=self.conn_info)

    def is_subscribed(self, channel: str) -> bool:
        sub = self._subs.get(channel)
        return sub is not None and sub.request is None

    def wants_join_leave(self, channel: str) -> bool:
        """Subscribed to `channel` and asked for its join/leave pushes (or the namespace
        pushes them to everyone)."""
        sub = self._subs.get(channel)
        return sub is not None and sub.request is None and sub.join_leave

    @property
    def channels(self) -> frozenset[str]:
        """Channels the client is subscribed to (not those still being joined)."""
        return frozenset(ch for ch, sub in self._subs.items() if sub.request is None)

    def positions(self) -> dict[str, StreamPosition]:
        """Where each positioned subscription stands (for SSE and long-poll cursors)."""
        return {
            ch: StreamPosition(sub.offset, sub.epoch)
            for ch, sub in self._subs.items()
            if sub.request is None and sub.tracked
        }
