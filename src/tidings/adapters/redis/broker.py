"""Redis broker: pub/sub fanout between nodes plus per-channel history in Redis streams.

Key layout (``P`` = prefix, ``C`` = channel; the braces are literal so every key of a channel
shares one Redis Cluster hash slot):

- ``P:hs:{C}``  STREAM  history; entry id ``<offset>-0``, one field ``m`` = the wire message
- ``P:hm:{C}``  HASH    stream meta: ``e`` epoch, ``o`` top offset
- ``P:hi:<len(C)>:{C}:<key>``  STRING  idempotency result: ``<epoch>:<wire message>``
- ``P:c:C``     pub/sub publications of channel C
- ``P:j:C``     pub/sub join/leave messages of channel C

Wire message (pub/sub payload and stream entry): one JSON object
``{"o": offset, "e": epoch, "d": data, "t": time, "i": info, "g": tags, "k": key}``; ``data``
and the info byte fields travel as strings when they are UTF-8 (JSON always is) and as base64
under ``<name>64`` otherwise; absent fields are omitted. Offset and epoch are spliced in by the
publish script, which appends to the stream and publishes in one atomic step.

Stream expiry uses Redis' own clock (``PEXPIRE``); the injected clock stamps publication times.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import logging
import math
import random
import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection, ConnectionPool

from tidings.ports.broker import (
    IDEMPOTENCY_MIN_TTL,
    META_TTL,
    JoinLeaveHandler,
    PublicationHandler,
)
from tidings.ports.clock import Clock
from tidings.types import ClientInfo, HistoryResult, Publication, StreamPosition

log = logging.getLogger(__name__)

PING_INTERVAL = 5.0
"""Silence on the pub/sub connection after which it is pinged; a second silent interval means
the connection is dead and is replaced."""

SUBSCRIBE_TIMEOUT = 10.0
SEND_TIMEOUT = 10.0
BACKOFF_MIN = 0.05
BACKOFF_MAX = 5.0
DISPATCH_QUEUE_SIZE = 65536
SUBSCRIBE_BATCH = 256

_PUBLISH_LUA = """
-- KEYS[1] stream, KEYS[2] meta, KEYS[3] idempotency key
-- ARGV[1] message body: a JSON object without offset and epoch
-- ARGV[2] history size, ARGV[3] history ttl in ms ('0' = no expiry)
-- ARGV[4] epoch for a new stream, ARGV[5] pub/sub channel
-- ARGV[6] idempotency ttl in ms ('0' = no idempotency key)
local stream, meta, idem = KEYS[1], KEYS[2], KEYS[3]
local epoch = redis.call('HGET', meta, 'e')
if not epoch then
  epoch = ARGV[4]
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'e', epoch, 'o', 0)
elseif ARGV[6] ~= '0' then
  local seen = redis.call('GET', idem)
  if seen then
    local sep = string.find(seen, ':', 1, true)
    if sep and string.sub(seen, 1, sep - 1) == epoch then
      return {1, string.sub(seen, sep + 1)}
    end
  end
end
local offset = redis.call('HINCRBY', meta, 'o', 1)
local msg = '{"o":' .. string.format('%d', offset) .. ',"e":"' .. epoch .. '",'
  .. string.sub(ARGV[1], 2)
redis.call('XADD', stream, 'MAXLEN', ARGV[2], string.format('%d-0', offset), 'm', msg)
if ARGV[3] ~= '0' then
  redis.call('PEXPIRE', stream, ARGV[3])
  redis.call('PEXPIRE', meta, ARGV[3])
else
  redis.call('PERSIST', stream)
  redis.call('PERSIST', meta)
end
if ARGV[6] ~= '0' then
  redis.call('SET', idem, epoch .. ':' .. msg, 'PX', ARGV[6])
end
redis.call('PUBLISH', ARGV[5], msg)
return {0, msg}
"""

_HISTORY_LUA = """
-- KEYS[1] stream, KEYS[2] meta
-- ARGV[1] epoch for a new stream, ARGV[2] ttl in ms of a meta created here
-- ARGV[3] '1' to read publications, ARGV[4] first stream id, ARGV[5] count ('-1' = all)
-- ARGV[6] epoch the reader expects ('' = any)
local stream, meta = KEYS[1], KEYS[2]
local current = redis.call('HMGET', meta, 'e', 'o')
local epoch, offset = current[1], current[2]
if not epoch then
  epoch = ARGV[1]
  offset = '0'
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'e', epoch, 'o', 0)
  redis.call('PEXPIRE', meta, ARGV[2])
end
if not offset then
  offset = '0'
end
if ARGV[3] ~= '1' or (ARGV[6] ~= '' and ARGV[6] ~= epoch) then
  return {offset, epoch, {}}
end
local entries
if ARGV[5] == '-1' then
  entries = redis.call('XRANGE', stream, ARGV[4], '+')
else
  entries = redis.call('XRANGE', stream, ARGV[4], '+', 'COUNT', ARGV[5])
end
return {offset, epoch, entries}
"""


# -- wire codec ---------------------------------------------------------------------------------


def _put_bytes(target: dict[str, Any], name: str, value: bytes | None) -> None:
    if value is None:
        return
    try:
        target[name] = value.decode("utf-8")
    except UnicodeDecodeError:
        target[name + "64"] = base64.b64encode(value).decode("ascii")


def _get_bytes(source: dict[str, Any], name: str) -> bytes | None:
    text = source.get(name)
    if text is not None:
        return str(text).encode("utf-8")
    b64 = source.get(name + "64")
    if b64 is not None:
        return base64.b64decode(b64)
    return None


def info_to_dict(info: ClientInfo) -> dict[str, Any]:
    out: dict[str, Any] = {"u": info.user, "c": info.client}
    _put_bytes(out, "ci", info.conn_info)
    _put_bytes(out, "hi", info.chan_info)
    return out


def info_from_dict(raw: dict[str, Any]) -> ClientInfo:
    return ClientInfo(
        user=str(raw["u"]),
        client=str(raw["c"]),
        conn_info=_get_bytes(raw, "ci"),
        chan_info=_get_bytes(raw, "hi"),
    )


def encode_info(info: ClientInfo) -> bytes:
    return orjson.dumps(info_to_dict(info))


def decode_info(raw: bytes) -> ClientInfo:
    return info_from_dict(orjson.loads(raw))


def _message_body(
    data: bytes,
    info: ClientInfo | None,
    tags: dict[str, str] | None,
    key: str | None,
    now: float,
) -> dict[str, Any]:
    body: dict[str, Any] = {"t": now}
    _put_bytes(body, "d", data)
    if info is not None:
        body["i"] = info_to_dict(info)
    if tags is not None:
        body["g"] = tags
    if key is not None:
        body["k"] = key
    return body


def decode_publication(channel: str, raw: bytes) -> Publication:
    """Decode a wire message (pub/sub payload or stream entry) of `channel`."""
    msg: dict[str, Any] = orjson.loads(raw)
    info = msg.get("i")
    tags = msg.get("g")
    key = msg.get("k")
    return Publication(
        channel=channel,
        data=_get_bytes(msg, "d") or b"",
        offset=int(msg["o"]),
        epoch=str(msg["e"]),
        info=info_from_dict(info) if info is not None else None,
        tags={str(k): str(v) for k, v in tags.items()} if tags is not None else None,
        key=str(key) if key is not None else None,
        time=float(msg.get("t", 0.0)),
    )


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _safe_name(text: str) -> str:
    return "".join(ch if ch.isprintable() and not ch.isspace() else "_" for ch in text)


# -- subscription bookkeeping -------------------------------------------------------------------

_SUBSCRIBE = b"subscribe"
_UNSUBSCRIBE = b"unsubscribe"


@dataclass(slots=True)
class _Expected:
    """A confirmation the pub/sub connection owes us; Redis answers in command order."""

    kind: bytes
    name: bytes
    channel: str
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


def _wake(waiters: list[asyncio.Future[None]]) -> None:
    for fut in waiters:
        if not fut.done():
            fut.set_result(None)


class RedisBroker:
    """Broker over Redis: one Lua script per publish appends to the stream and publishes, so
    offsets grow by one and every node sees a channel's publications in offset order.

    Each node holds one pub/sub connection for all its channels. A reader task receives
    messages and hands them, in arrival order, to a dispatcher task that calls the handlers;
    `subscribe` returns once Redis confirmed the subscription. If the connection drops it is
    re-established with exponential backoff and every channel re-subscribed; publications sent
    while it was down are not replayed here (clients recover them from history).
    """

    def __init__(
        self,
        redis_url: str,
        clock: Clock,
        *,
        prefix: str = "tidings",
        node_id: str | None = None,
    ) -> None:
        self._clock = clock
        self._prefix = prefix
        self.node_id = node_id or secrets.token_hex(6)
        name = _safe_name(f"{prefix}:{self.node_id}")
        self._redis: aioredis.Redis = aioredis.Redis.from_url(redis_url, client_name=name)
        self._ps_pool: ConnectionPool = ConnectionPool.from_url(
            redis_url,
            client_name=f"{name}:pubsub",
            protocol=2,
            # No socket_timeout: redis-py would wrap every write in asyncio.wait_for, which on
            # Python 3.11 can swallow a cancellation; writes are bounded by `_write` instead.
            socket_timeout=None,
            socket_connect_timeout=SUBSCRIBE_TIMEOUT,
            socket_keepalive=True,
        )
        self.pubsub_client_name = f"{name}:pubsub"
        self._publish_script = self._redis.register_script(_PUBLISH_LUA)
        self._history_script = self._redis.register_script(_HISTORY_LUA)
        self._pub_prefix = f"{prefix}:c:".encode()
        self._jl_prefix = f"{prefix}:j:".encode()

        self._on_pub: PublicationHandler | None = None
        self._on_jl: JoinLeaveHandler | None = None
        self._channels: set[str] = set()
        self._conn: AbstractConnection | None = None
        self._send_lock = asyncio.Lock()
        self._expected: deque[_Expected] = deque()
        self._orphans: dict[str, list[asyncio.Future[None]]] = {}
        self._queue: asyncio.Queue[tuple[bool, str, bytes]] = asyncio.Queue(DISPATCH_QUEUE_SIZE)
        self._reader: asyncio.Task[None] | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._closed = False

    # -- names ----------------------------------------------------------------------------------

    def _key(self, kind: str, channel: str) -> str:
        return f"{self._prefix}:{kind}:{{{channel}}}"

    def _idempotency_key(self, channel: str, key: str) -> str:
        return f"{self._prefix}:hi:{len(channel)}:{{{channel}}}:{key}"

    def _pub_name(self, channel: str) -> bytes:
        return self._pub_prefix + channel.encode("utf-8")

    def _jl_name(self, channel: str) -> bytes:
        return self._jl_prefix + channel.encode("utf-8")

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(
        self, on_publication: PublicationHandler, on_join_leave: JoinLeaveHandler
    ) -> None:
        if self._reader is not None or self._closed:
            raise RuntimeError("RedisBroker.start may be called once")
        self._on_pub = on_publication
        self._on_jl = on_join_leave
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Attached to the first connection's subscriptions (or woken right on connect).
        self._orphans.setdefault("", []).append(ready)
        self._dispatcher = asyncio.create_task(self._dispatch_forever(), name="redis-dispatch")
        self._reader = asyncio.create_task(self._read_forever(), name="redis-pubsub")
        try:
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT):
                await asyncio.shield(ready)
        except TimeoutError:
            log.warning("redis pub/sub not connected yet; retrying in the background")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        pending = {t for t in (self._reader, self._dispatcher) if t is not None}
        while pending:
            # Cancel again if a library swallowed the first request; the loops also stop on
            # their own once they see `_closed`.
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.2)
        self._reader = self._dispatcher = None
        for expected in self._expected:
            _wake(expected.waiters)
        self._expected.clear()
        for waiters in self._orphans.values():
            _wake(waiters)
        self._orphans.clear()
        self._channels.clear()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.disconnect(nowait=True)
            self._conn = None
        await self._redis.aclose()
        await self._ps_pool.disconnect()

    # -- subscriptions --------------------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        """Subscribe this node to `channel`; returns once Redis confirmed it, so every
        publication made afterwards reaches the handler. Before `start` it only registers the
        channel. Raises TimeoutError if Redis does not confirm in time; the channel stays
        registered and is subscribed as soon as the connection is back."""
        self._channels.add(channel)
        if self._reader is None:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._send(_SUBSCRIBE, channel, done)
        async with asyncio.timeout(SUBSCRIBE_TIMEOUT):
            await asyncio.shield(done)

    async def unsubscribe(self, channel: str) -> None:
        """Stop delivering `channel` to the handler (effective immediately)."""
        self._channels.discard(channel)
        if self._reader is not None:
            await self._send(_UNSUBSCRIBE, channel, None)

    async def _send(self, kind: bytes, channel: str, done: asyncio.Future[None] | None) -> None:
        async with self._send_lock:
            conn = self._conn
            if conn is None or not conn.is_connected:
                # The reader re-subscribes every registered channel when it reconnects.
                if done is not None:
                    self._orphans.setdefault(channel, []).append(done)
                return
            names = (self._pub_name(channel), self._jl_name(channel))
            self._expected.append(_Expected(kind, names[0], channel))
            self._expected.append(
                _Expected(kind, names[1], channel, [done] if done is not None else [])
            )
            try:
                await self._write(conn, kind.decode().upper(), *names)
            except ConnectionError as exc:
                # The reader sees the broken connection too, and re-subscribes on reconnect.
                log.warning("redis pub/sub send failed: %r", exc)

    @staticmethod
    async def _write(conn: AbstractConnection, *args: str | bytes) -> None:
        """Send one command on the pub/sub connection (caller holds `_send_lock`). On any
        failure the connection is closed, so the reader notices and reconnects."""
        try:
            async with asyncio.timeout(SEND_TIMEOUT):
                await conn.send_command(*args, check_health=False)
        except Exception as exc:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)
            raise ConnectionError(f"redis pub/sub write failed: {exc!r}") from exc

    # -- reader ---------------------------------------------------------------------------------

    async def _read_forever(self) -> None:
        delay = BACKOFF_MIN
        while not self._closed:
            try:
                conn = await self._connect()
                delay = BACKOFF_MIN
                await self._read(conn)
            except Exception as exc:
                if self._closed:
                    return
                log.warning("redis pub/sub connection lost: %r", exc)
            finally:
                await self._drop()
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, BACKOFF_MAX)

    async def _connect(self) -> AbstractConnection:
        conn = self._ps_pool.connection_class(**self._ps_pool.connection_kwargs)
        try:
            await conn.connect_check_health(check_health=False)
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)
            raise
        async with self._send_lock:
            self._conn = conn
            self._expected.clear()
            orphans, self._orphans = self._orphans, {}
            batch: list[_Expected] = []
            for channel in sorted(self._channels):
                batch.append(_Expected(_SUBSCRIBE, self._pub_name(channel), channel))
                batch.append(
                    _Expected(_SUBSCRIBE, self._jl_name(channel), channel, orphans.pop(channel, []))
                )
            leftover = [fut for waiters in orphans.values() for fut in waiters]
            if batch:
                batch[-1].waiters.extend(leftover)
            else:
                _wake(leftover)
            for start in range(0, len(batch), SUBSCRIBE_BATCH):
                chunk = batch[start : start + SUBSCRIBE_BATCH]
                self._expected.extend(chunk)
                await self._write(conn, "SUBSCRIBE", *(e.name for e in chunk))
        log.info("redis pub/sub connected", extra={"channels": len(self._channels)})
        return conn

    async def _drop(self) -> None:
        """Forget the current pub/sub connection; waiters of unconfirmed subscriptions move to
        the orphans, which the next connection's subscriptions take over."""
        async with self._send_lock:
            conn, self._conn = self._conn, None
            for expected in self._expected:
                if expected.waiters:
                    self._orphans.setdefault(expected.channel, []).extend(expected.waiters)
            self._expected.clear()
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)

    async def _read(self, conn: AbstractConnection) -> None:
        awaiting_pong = False
        while not self._closed:
            reply = await conn.read_response(timeout=PING_INTERVAL)
            if reply is None:
                if awaiting_pong:
                    raise ConnectionError("redis pub/sub connection is silent")
                async with self._send_lock:
                    await self._write(conn, "PING")
                awaiting_pong = True
                continue
            awaiting_pong = False
            if not isinstance(reply, list) or not reply:
                continue
            kind = reply[0]
            if kind == b"message":
                name: bytes = reply[1]
                if name.startswith(self._pub_prefix):
                    channel = name[len(self._pub_prefix) :].decode("utf-8")
                    await self._queue.put((True, channel, reply[2]))
                elif name.startswith(self._jl_prefix):
                    channel = name[len(self._jl_prefix) :].decode("utf-8")
                    await self._queue.put((False, channel, reply[2]))
            elif kind in (_SUBSCRIBE, _UNSUBSCRIBE):
                self._confirm(kind, reply[1])

    def _confirm(self, kind: bytes, name: bytes) -> None:
        for index, expected in enumerate(self._expected):
            if expected.kind == kind and expected.name == name:
                for _ in range(index + 1):
                    _wake(self._expected.popleft().waiters)
                return
        log.debug("unexpected pub/sub confirmation %r %r", kind, name)

    # -- dispatcher -----------------------------------------------------------------------------

    async def _dispatch_forever(self) -> None:
        while not self._closed:
            is_pub, channel, raw = await self._queue.get()
            if channel not in self._channels:
                continue
            try:
                if is_pub:
                    if self._on_pub is None:
                        continue
                    result = self._on_pub(decode_publication(channel, raw))
                else:
                    if self._on_jl is None:
                        continue
                    msg = orjson.loads(raw)
                    result = self._on_jl(channel, info_from_dict(msg["i"]), bool(msg["j"]))
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("broker handler failed", extra={"channel": channel})

    # -- publishing and history -----------------------------------------------------------------

    async def publish(
        self,
        channel: str,
        data: bytes,
        *,
        history_size: int = 0,
        history_ttl: float = 0.0,
        info: ClientInfo | None = None,
        tags: dict[str, str] | None = None,
        key: str | None = None,
        idempotency_key: str | None = None,
    ) -> Publication:
        now = self._clock.now()
        body = _message_body(data, info, tags, key, now)
        if history_size <= 0:
            await self._redis.publish(
                self._pub_name(channel), orjson.dumps({"o": 0, "e": "", **body})
            )
            return Publication(
                channel=channel,
                data=data,
                offset=0,
                epoch="",
                info=info,
                tags=tags,
                key=key,
                time=now,
            )
        idem_ttl = 0
        idem_key = self._idempotency_key(channel, "")
        if idempotency_key is not None:
            idem_ttl = _ms(max(history_ttl, IDEMPOTENCY_MIN_TTL))
            idem_key = self._idempotency_key(channel, idempotency_key)
        reply = await self._publish_script(
            keys=[self._key("hs", channel), self._key("hm", channel), idem_key],
            args=[
                orjson.dumps(body),
                history_size,
                _ms(history_ttl) if history_ttl > 0 else 0,
                secrets.token_hex(4),
                self._pub_name(channel),
                idem_ttl,
            ],
        )
        return decode_publication(channel, reply[1])

    async def publish_join_leave(self, channel: str, info: ClientInfo, joined: bool) -> None:
        await self._redis.publish(
            self._jl_name(channel), orjson.dumps({"j": joined, "i": info_to_dict(info)})
        )

    async def history(
        self, channel: str, *, since: StreamPosition | None = None, limit: int = 0
    ) -> HistoryResult:
        reply = await self._history_script(
            keys=[self._key("hs", channel), self._key("hm", channel)],
            args=[
                secrets.token_hex(4),
                _ms(META_TTL),
                "1" if limit != 0 else "0",
                f"{since.offset + 1}-0" if since is not None else "-",
                str(limit) if limit > 0 else "-1",
                since.epoch if since is not None else "",
            ],
        )
        offset_raw, epoch_raw, entries = reply
        epoch = epoch_raw.decode() if isinstance(epoch_raw, bytes) else str(epoch_raw)
        position = StreamPosition(offset=int(offset_raw), epoch=epoch)
        publications = tuple(
            decode_publication(channel, _entry_message(fields)) for _, fields in entries
        )
        return HistoryResult(position=position, publications=publications)

    async def remove_history(self, channel: str) -> None:
        await self._redis.delete(self._key("hs", channel), self._key("hm", channel))


def _entry_message(fields: Any) -> bytes:
    """The `m` field of a raw XRANGE entry (a flat [name, value, ...] list)."""
    if isinstance(fields, dict):
        return bytes(fields[b"m"])
    items = list(fields)
    for index in range(0, len(items) - 1, 2):
        if items[index] == b"m":
            return bytes(items[index + 1])
    raise ValueError("stream entry without a message field")
