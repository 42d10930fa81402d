from __future__ import annotations

import asyncio
import heapq
import inspect
import random
import secrets
from dataclasses import dataclass, field

from tidings.ports.broker import JoinLeaveHandler, PublicationHandler
from tidings.ports.clock import Clock
from tidings.types import ClientInfo, HistoryResult, Publication, StreamPosition

_random = random.Random(secrets.randbits(64))


def new_epoch() -> str:
    """8 random hex digits naming a new stream. Not a secret: a process-seeded generator,
    where `secrets` would read the kernel's random source for each of the 100k streams a
    bulk send starts (most of a publish's time)."""
    return f"{_random.getrandbits(32):08x}"


# A channel's kept state is made of plain tuples of atomic values (bytes, numbers, strings,
# None, tuples of those), which the garbage collector stops tracking within its first few
# collections. A bulk send leaves hundreds of thousands of inbox channels with a stream each;
# objects with a `__dict__`, deques or dicts there would be walked by every full collection
# and lengthen its pause. (A dict inside would keep a tuple tracked, hence the tags as pairs;
# a client's `info` does too, but only client publications carry one.)
#
# A publication kept in history: (data, offset, time, key, tags as pairs, info). Its channel
# and epoch are the stream's.
_Tags = tuple[tuple[str, str], ...]
_Entry = tuple[bytes, int, float, str | None, _Tags | None, ClientInfo | None]
# A stream: (epoch, last offset, kept entries oldest first, expires_at; 0.0 never).
_Stream = tuple[str, int, tuple[_Entry, ...], float]

# Expired streams and idempotency results are swept at most this many at a time (each publish
# and history read sweeps), so a mass expiry never stops the event loop; the rest go on the
# next calls, and an expired stream found meanwhile is treated as gone anyway.
SWEEP_BATCH = 256
# An idempotency key is remembered for max(history_ttl, this) seconds (as on Redis).
IDEMPOTENCY_MIN_TTL = 60.0


def _kept(data: bytes) -> bytes:
    """A right-sized copy of `data` to keep. orjson (3.12 and later) returns its output in a
    4 KiB buffer that is never trimmed: kept as it is, a 300-byte inbox update costs 4 KiB
    for as long as the history keeps it."""
    return bytes(memoryview(data))


def _publication(channel: str, epoch: str, entry: _Entry) -> Publication:
    data, offset, time, key, tags, info = entry
    return Publication(
        channel, data, offset, epoch, info, None if tags is None else dict(tags), key, time
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

    A stream with a TTL is dropped once it expires, whether or not its channel is used again:
    expiry times wait in a heap, swept a few at a time by later calls.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._streams: dict[str, _Stream] = {}
        # (expires_at, channel, epoch) of streams with a TTL; a stream's TTL restarts with
        # each publish, so a popped time that is no longer the stream's is pushed again.
        self._expiry: list[tuple[float, str, str]] = []
        # (channel, idempotency key) -> (epoch, entry, expires_at), and its expiry heap.
        self._seen: dict[tuple[str, str], tuple[str, _Entry, float]] = {}
        self._seen_expiry: list[tuple[float, str, str]] = []
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

    def _stream(self, channel: str, now: float) -> _Stream | None:
        """The channel's live stream, None when there is none (or it has expired)."""
        stream = self._streams.get(channel)
        if stream is not None and stream[3] and stream[3] <= now:
            del self._streams[channel]
            return None
        return stream

    def _sweep(self, now: float) -> None:
        expiry = self._expiry
        for _ in range(SWEEP_BATCH):
            if not expiry or expiry[0][0] > now:
                break
            _, channel, epoch = heapq.heappop(expiry)
            stream = self._streams.get(channel)
            if stream is None or stream[0] != epoch or not stream[3]:
                continue  # gone, replaced by a newer stream (with its own time), or kept
            if stream[3] <= now:
                del self._streams[channel]
            else:
                heapq.heappush(expiry, (stream[3], channel, epoch))
        seen_expiry = self._seen_expiry
        for _ in range(SWEEP_BATCH):
            if not seen_expiry or seen_expiry[0][0] > now:
                break
            _, channel, key = heapq.heappop(seen_expiry)
            found = self._seen.get((channel, key))
            if found is not None and found[2] <= now:
                del self._seen[(channel, key)]

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
        self._sweep(now)
        if history_size > 0:
            stream = self._stream(channel, now)
            epoch, offset, items = (new_epoch(), 0, ()) if stream is None else stream[:3]
            if idempotency_key is not None:
                seen = self._seen.get((channel, idempotency_key))
                if seen is not None and seen[0] == epoch and seen[2] > now:
                    return _publication(channel, epoch, seen[1])
            offset += 1
            pairs = None if tags is None else tuple(tags.items())
            entry: _Entry = (_kept(data), offset, now, key, pairs, info)
            if len(items) >= history_size:  # the oldest go
                items = items[len(items) + 1 - history_size :]
            kept = (*items, entry)
            expires_at = now + history_ttl if history_ttl > 0 else 0.0
            self._streams[channel] = (epoch, offset, kept, expires_at)
            if expires_at and (stream is None or not stream[3]):
                heapq.heappush(self._expiry, (expires_at, channel, epoch))
            if idempotency_key is not None:
                until = now + max(history_ttl, IDEMPOTENCY_MIN_TTL)
                self._seen[(channel, idempotency_key)] = (epoch, entry, until)
                heapq.heappush(self._seen_expiry, (until, channel, idempotency_key))
            pub = _publication(channel, epoch, (data, offset, now, key, pairs, info))
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
        self._sweep(now)
        stream = self._stream(channel, now)
        if stream is None:  # the position of a new stream, kept (with no TTL) from now on
            stream = self._streams[channel] = (new_epoch(), 0, (), 0.0)
        epoch, offset, items, _ = stream
        position = StreamPosition(offset=offset, epoch=epoch)
        if limit == 0:
            return HistoryResult(position=position, publications=())
        entries: tuple[_Entry, ...] | list[_Entry]
        if since is None:
            entries = items
        elif since.epoch != epoch:
            entries = ()
        else:
            entries = [e for e in items if e[1] > since.offset]
        if limit > 0:
            entries = entries[:limit]
        return HistoryResult(
            position=position,
            publications=tuple(_publication(channel, epoch, e) for e in entries),
        )

    async def remove_history(self, channel: str) -> None:
        self._streams.pop(channel, None)
