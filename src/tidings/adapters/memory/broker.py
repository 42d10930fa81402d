from __future__ import annotations

import asyncio
import inspect
import secrets
from collections import deque
from dataclasses import dataclass, field

from tidings.ports.broker import JoinLeaveHandler, PublicationHandler
from tidings.ports.clock import Clock
from tidings.types import ClientInfo, HistoryResult, Publication, StreamPosition


def new_epoch() -> str:
    return secrets.token_hex(4)


# A publication kept in history, as a plain tuple: (data, offset, time, key, tags as pairs,
# info). Its channel and epoch are the stream's. A tuple of atomic values (bytes, numbers,
# strings, None, tuples of those) drops out of the garbage collector's tracking within its
# first few collections: a stream's history costs the collector nothing, where `Publication`
# objects (two or more per inbox channel, hundreds of thousands after a bulk send) would be
# walked by every full collection. (A dict inside would keep the tuple tracked, hence the
# tags as pairs; a client's `info` does too, but only client publications carry one.)
_Tags = tuple[tuple[str, str], ...]
_Entry = tuple[bytes, int, float, str | None, _Tags | None, ClientInfo | None]


@dataclass(slots=True)
class _Stream:
    epoch: str
    offset: int = 0
    items: deque[_Entry] = field(default_factory=deque)
    expires_at: float = 0.0
    seen_keys: dict[str, tuple[_Entry, float]] = field(default_factory=dict)

    def publication(self, channel: str, entry: _Entry) -> Publication:
        data, offset, time, key, tags, info = entry
        return Publication(
            channel, data, offset, self.epoch, info, None if tags is None else dict(tags), key, time
        )


@dataclass(slots=True)
class _DeliveryQueue:
    """Deliveries of one channel in flight, handed to the handler one at a time."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pending: int = 0


class MemoryBroker:
    """Single-process broker with in-memory history.

    Every method that changes a stream runs to completion without awaiting before it hands the
    publication to the subscriber callback, so history save and publish are atomic per channel;
    the callback gets a channel's publications one at a time, in offset order.
    History is lost on restart; the fresh epoch of each new stream tells clients so.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._streams: dict[str, _Stream] = {}
        self._subscribed: set[str] = set()
        self._on_pub: PublicationHandler | None = None
        self._on_jl: JoinLeaveHandler | None = None
        self._delivery: dict[str, _DeliveryQueue] = {}

    async def start(
        self, on_publication: PublicationHandler, on_join_leave: JoinLeaveHandler
    ) -> None:
        self._on_pub = on_publication
        self._on_jl = on_join_leave

    async def close(self) -> None:
        self._subscribed.clear()

    async def subscribe(self, channel: str) -> None:
        self._subscribed.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._subscribed.discard(channel)

    def _stream(self, channel: str, now: float, create: bool) -> _Stream | None:
        stream = self._streams.get(channel)
        if stream is not None and stream.expires_at and stream.expires_at <= now:
            del self._streams[channel]
            stream = None
        if stream is None and create:
            stream = _Stream(epoch=new_epoch())
            self._streams[channel] = stream
        return stream

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
        if history_size > 0:
            stream = self._stream(channel, now, create=True)
            assert stream is not None
            if idempotency_key is not None:
                seen = stream.seen_keys.get(idempotency_key)
                if seen is not None and seen[1] > now:
                    return stream.publication(channel, seen[0])
            stream.offset += 1
            pairs = None if tags is None else tuple(tags.items())
            entry: _Entry = (data, stream.offset, now, key, pairs, info)
            pub = stream.publication(channel, entry)
            stream.items.append(entry)
            while len(stream.items) > history_size:
                stream.items.popleft()
            stream.expires_at = now + history_ttl if history_ttl > 0 else 0.0
            if idempotency_key is not None:
                stream.seen_keys[idempotency_key] = (entry, now + max(history_ttl, 60.0))
                if len(stream.seen_keys) > 4 * history_size + 64:
                    for k in [k for k, (_, exp) in stream.seen_keys.items() if exp <= now]:
                        del stream.seen_keys[k]
        else:
            pub = Publication(
                channel=channel,
                data=data,
                offset=0,
                epoch="",
                info=info,
                tags=tags,
                key=key,
                time=now,
            )
        if channel in self._subscribed and self._on_pub is not None:
            await self._deliver(channel, pub, self._on_pub)
        return pub

    async def _deliver(self, channel: str, pub: Publication, handler: PublicationHandler) -> None:
        """Hand `pub` to the handler after every earlier publication of the channel.

        Called with no await since the offset was taken; `asyncio.Lock` queues waiters in
        arrival order, so a handler that awaits cannot let a later offset overtake it."""
        queue = self._delivery.get(channel)
        if queue is None:
            queue = self._delivery[channel] = _DeliveryQueue()
        queue.pending += 1
        try:
            async with queue.lock:
                result = handler(pub)
                if inspect.isawaitable(result):
                    await result
        finally:
            queue.pending -= 1
            if queue.pending == 0:
                del self._delivery[channel]

    async def publish_join_leave(self, channel: str, info: ClientInfo, joined: bool) -> None:
        if channel in self._subscribed and self._on_jl is not None:
            result = self._on_jl(channel, info, joined)
            if inspect.isawaitable(result):
                await result

    async def history(
        self, channel: str, *, since: StreamPosition | None = None, limit: int = 0
    ) -> HistoryResult:
        now = self._clock.now()
        stream = self._stream(channel, now, create=True)
        assert stream is not None
        position = StreamPosition(offset=stream.offset, epoch=stream.epoch)
        if limit == 0:
            return HistoryResult(position=position, publications=())
        entries: list[_Entry]
        if since is None:
            entries = list(stream.items)
        elif since.epoch != stream.epoch:
            entries = []
        else:
            entries = [e for e in stream.items if e[1] > since.offset]
        if limit > 0:
            entries = entries[:limit]
        return HistoryResult(
            position=position,
            publications=tuple(stream.publication(channel, e) for e in entries),
        )

    async def remove_history(self, channel: str) -> None:
        self._streams.pop(channel, None)
