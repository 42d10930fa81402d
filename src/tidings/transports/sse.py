"""Server-sent events for a plain browser `EventSource`, on the WebSocket protocol machinery.

`GET /connection/sse?token=JWT&channel=a&channel=b` feeds an ordinary `ClientConnection`
synthetic `connect` and `subscribe` commands, so auth, recovery, limits and backpressure are
the WebSocket ones. The stream: `retry: 2000`, then events `connected` {client, channels},
`publication` {channel, data, offset, ...}, `recovery_failed` {channel, epoch, offset} (the gap
is not in history: reload that channel), `join`, `leave`, `unsubscribe`, and `disconnect`
{code, reason, reconnect}, which ends it; `:` every 15 s and `: ping` on server pings. The
`id` of `connected`, `publication` and `recovery_failed` is the cursor of all positioned
channels after that event: an `EventSource` sends it back as `Last-Event-ID` on reconnecting
and misses nothing, repeats nothing. Refusals (bad token, unknown channel, bad cursor) are
problem+json answers, never a stream.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Query, Request
from starlette.exceptions import HTTPException
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from tidings.core.channels import ChannelError
from tidings.core.protocol import frames as f
from tidings.core.protocol import requests as r
from tidings.core.protocol.codes import Disconnect, DisconnectCode, ErrorCode
from tidings.core.sse import KEEPALIVE, decode_cursor, encode_comment, encode_cursor, encode_event
from tidings.core.tokens import InvalidToken, TokenExpired
from tidings.errors import Forbidden, InvalidInput, TidingsError
from tidings.records import record
from tidings.services.gateway import ClientConnection, EncodedBatch, EncodedPush, Hub
from tidings.types import StreamPosition

RETRY_MS = 2000
KEEPALIVE_INTERVAL = 15.0  # seconds between `:` comments, whatever else is sent
HANDSHAKE_TIMEOUT = 10.0
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

router = APIRouter(tags=["realtime"])


@record
class Event:
    kind: str  # publication, recovery_failed, join, leave, unsubscribe, disconnect, ping, ...
    data: dict[str, Any]
    channel: str = ""
    offset: int = 0


def advance(positions: dict[str, StreamPosition], event: Event) -> bool:
    """Apply `event` to the cursor positions; whether the cursor moved."""
    at = positions.get(event.channel)
    if event.kind == "publication" and at is not None and event.offset:
        positions[event.channel] = StreamPosition(event.offset, at.epoch)
        return True
    if event.kind == "unsubscribe":
        return positions.pop(event.channel, None) is not None
    return event.kind == "recovery_failed"


_REFUSALS: list[tuple[tuple[int, ...], type[TidingsError]]] = [
    ((ErrorCode.TOKEN_EXPIRED,), TokenExpired),
    ((ErrorCode.UNAUTHORIZED, DisconnectCode.INVALID_TOKEN), InvalidToken),
    ((ErrorCode.PERMISSION_DENIED, DisconnectCode.PERMISSION_DENIED), Forbidden),
    ((ErrorCode.UNKNOWN_CHANNEL, ErrorCode.BAD_REQUEST, ErrorCode.LIMIT_EXCEEDED), InvalidInput),
]


def _refusal(code: int, message: str, channel: str) -> Exception:
    """The HTTP refusal for an error reply or a close while opening."""
    detail = f"{message}: {channel}" if channel else message
    for codes, kind in _REFUSALS:
        if code in codes:
            return kind(detail, field="channel" if channel else None)
    limited = (ErrorCode.TOO_MANY_REQUESTS, DisconnectCode.TOO_MANY_REQUESTS)
    return HTTPException(429 if code in limited else 503, detail)


class Bridge:
    """A `ClientConnection` driven by synthetic commands, and its unidirectional `Transport`:
    messages queue up for one reader as `Event`s. The connection checks `paused` before a
    publication; writes past twice the limit (replies, control pushes) disconnect it as slow."""

    def __init__(self, hub: Hub, name: str) -> None:
        self.hub, self.name, self._limit = hub, name, hub.options.max_buffer_bytes
        self._items: deque[bytes] = deque()
        self._bytes, self._wake = 0, asyncio.Event()
        self.closed: r.Close | None = None
        self.client = ClientConnection(hub, self)
        self.channels: list[str] = []
        self.start: dict[str, StreamPosition] = {}  # where each positioned channel begins
        self.failed: dict[str, StreamPosition] = {}  # recovery failed: now at this top
        self.backlog: list[Event] = []  # what came while opening
        self.ended = False
        self._since: dict[str, StreamPosition] = {}
        self._expect: dict[int, str] = {}

    def write(self, data: bytes) -> None:
        if self.closed is not None:
            return
        if self._bytes + len(data) > 2 * self._limit:
            slow = Disconnect.of(DisconnectCode.SLOW)
            asyncio.get_running_loop().call_soon(self.client.disconnect, slow)
            return
        self._put(data)

    def write_push(self, push: EncodedPush) -> None:
        self.write(push.json)

    def write_batch(self, batch: EncodedBatch) -> None:
        for pub, push in zip(batch.pubs, batch.pushes, strict=True):
            if self.closed is not None:
                return
            if self.paused:
                self.client.overflow(pub, push)
            else:
                self.write(push.json)

    @property
    def paused(self) -> bool:
        return self._bytes > self._limit

    def close(self, close: r.Close) -> None:
        if self.closed is None:
            self._put(f.encode_push_disconnect(close.disconnect))
            self.closed = close

    def _put(self, data: bytes) -> None:
        self._items.append(data)
        self._bytes += len(data)
        self._wake.set()

    def _drain(self) -> list[bytes]:
        items, over, self._bytes = list(self._items), self._bytes > self._limit, 0
        self._items.clear()
        self._wake.clear()
        if over and self.closed is None:
            self.client.writable()  # send what was coalesced meanwhile
        return items

    async def open(
        self, token: str, channels: Iterable[str], since: dict[str, StreamPosition]
    ) -> None:
        """Connect and subscribe; raises the refusal (a `TidingsError` or `HTTPException`)."""
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                await self._handshake(token, list(dict.fromkeys(channels)), since)
        except BaseException as exc:
            self.client.transport_lost()
            if isinstance(exc, TimeoutError):
                raise HTTPException(503, "the gateway did not answer in time") from None
            raise

    async def _handshake(
        self, token: str, channels: list[str], since: dict[str, StreamPosition]
    ) -> None:
        subscribes: list[bytes] = []
        for channel in channels:
            try:
                opts = self.hub.channels.options(channel)
            except ChannelError as exc:
                raise type(exc)(f"channel {channel!r}: {exc.message}", field="channel") from None
            # No SDK to ask: join/leave come wherever the namespace publishes them.
            body: dict[str, Any] = {"channel": channel, "join_leave": True}
            back = since.get(channel)
            if back is not None and opts.positioned:
                self._since[channel] = back
                body.update(recover=True, epoch=back.epoch, offset=back.offset)
            subscribes.append(orjson.dumps({"id": len(subscribes) + 2, "subscribe": body}))
        # Positions of other channels go to connect: they recover if the token claims them.
        claimed = {ch: pos for ch, pos in since.items() if ch not in channels}
        self._since.update(claimed)
        subs = {
            ch: {"recover": True, "epoch": p.epoch, "offset": p.offset} for ch, p in claimed.items()
        }
        self._expect[1] = ""
        connect = {"token": token, "name": self.name, "subs": subs}
        self.client.receive(orjson.dumps({"id": 1, "connect": connect}))
        await self._replies()
        if subscribes:
            self._expect.update(enumerate(channels, 2))
            self.client.receive(b"\n".join(subscribes))
            await self._replies()

    async def _replies(self) -> None:
        while self._expect:
            self.backlog.extend(await self.next())

    async def next(self) -> list[Event]:
        """Wait for what the connection sends and translate it."""
        if not self._bytes:
            await self._wake.wait()
        return [e for raw in self._drain() for e in self._translate(orjson.loads(raw))]

    def _translate(self, msg: dict[str, Any]) -> list[Event]:
        if not msg:
            self.client.receive(b"{}")  # the pong, once the ping made it to the reader
            return [Event("ping", {})]
        if "id" in msg:
            return self._reply(msg)
        push: dict[str, Any] = msg.get("push", {})
        channel: str = push.pop("channel", "")
        kind, body = next(iter(push.items()))
        if kind == "pub":
            return [self._publication(channel, body)]
        if kind == "disconnect":
            self.ended = True
            code, reason = body.get("code", 0), body.get("reason", "")
            if self._expect:
                raise _refusal(code, reason, "")
            return [Event(kind, {"code": code, "reason": reason, "reconnect": "reconnect" in body})]
        return [Event(kind, {"channel": channel, **body}, channel)]

    def _publication(self, channel: str, pub: dict[str, Any]) -> Event:
        return Event("publication", {"channel": channel, **pub}, channel, pub.get("offset", 0))

    def _reply(self, msg: dict[str, Any]) -> list[Event]:
        channel = self._expect.pop(msg["id"], None)
        if channel is None:
            return []
        if "error" in msg:
            raise _refusal(msg["error"].get("code", 0), msg["error"].get("message", ""), channel)
        if "connect" in msg:
            subs: dict[str, Any] = msg["connect"].get("subs", {})
            return [e for ch, res in subs.items() for e in self._subscribed(ch, res)]
        return self._subscribed(channel, msg.get("subscribe", {}))

    def _subscribed(self, channel: str, res: dict[str, Any]) -> list[Event]:
        self.channels.append(channel)
        if not res.get("positioned"):
            return []
        top = self.start[channel] = StreamPosition(res.get("offset", 0), res.get("epoch", ""))
        events = []
        if channel in self._since and not res.get("recovered"):
            self.failed[channel] = top
            data = {"channel": channel, "epoch": top.epoch, "offset": top.offset}
            events.append(Event("recovery_failed", data, channel))
        events.extend(self._publication(channel, pub) for pub in res.get("publications", ()))
        return events


def _encode(events: Iterable[Event], positions: dict[str, StreamPosition]) -> bytes:
    out = []
    for event in events:
        if event.kind == "ping":
            out.append(encode_comment("ping"))
            continue
        cursor = encode_cursor(positions) if advance(positions, event) else None
        out.append(encode_event(orjson.dumps(event.data), event=event.kind, id=cursor))
    return b"".join(out)


async def _chunks(bridge: Bridge) -> AsyncIterator[bytes]:
    positions = dict(bridge.start)
    hello = orjson.dumps({"client": bridge.client.id, "channels": bridge.channels})
    chunk = encode_event(hello, event="connected", id=encode_cursor(positions), retry=RETRY_MS)
    chunk += _encode(bridge.backlog, positions)
    loop = asyncio.get_running_loop()
    keepalive_at = loop.time() + KEEPALIVE_INTERVAL
    while True:
        if chunk:
            yield chunk
        if bridge.ended:
            return
        if loop.time() >= keepalive_at:
            yield KEEPALIVE
            keepalive_at = loop.time() + KEEPALIVE_INTERVAL
        try:
            async with asyncio.timeout_at(keepalive_at):
                chunk = _encode(await bridge.next(), positions)
        except TimeoutError:
            chunk = b""


class EventStream(StreamingResponse):
    """However the stream ends (disconnect, client gone, cancelled), the connection is gone."""

    media_type = "text/event-stream"

    def __init__(self, bridge: Bridge) -> None:
        super().__init__(_chunks(bridge), headers=STREAM_HEADERS)
        self.bridge = bridge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.bridge.client.transport_lost()  # no-op if it ended


@router.get("/connection/sse", response_class=EventStream, status_code=200)
async def sse(
    request: Request,
    token: str = "",
    channel: Annotated[list[str] | None, Query()] = None,
    last_event_id: Annotated[str, Query(description="Cursor for the first connect")] = "",
    last_event_id_header: Annotated[str, Header(alias="Last-Event-ID")] = "",
) -> Response:
    """A server-sent event stream of the channels' publications (see the module doc)."""
    since = decode_cursor(last_event_id_header or last_event_id)
    bridge = Bridge(request.app.state.runtime.hub, "sse")
    await bridge.open(token, channel or (), since)
    return EventStream(bridge)
