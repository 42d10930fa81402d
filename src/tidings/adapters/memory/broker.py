from __future__ import annotations

import asyncio
import heapq
import inspect
import itertools
import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tidings.ports.broker import (
    IDEMPOTENCY_MIN_TTL,
    META_TTL,
    JoinLeaveHandler,
    PublicationHandler,
)
from tidings.ports.clock import Clock
from tidings.types import ClientInfo, HistoryResult, Publication, StreamPosition

_random = random.Random(secrets.randbits(64))


def new_epoch() -> str:
    """8 random hex digits naming a new stream. Not a secret: a process-seeded generator,
    where `secrets` would read the kernel's random source for each of the 100k streams a
    bulk send starts (most of a publish's time)."""
    return f"{_random.getrandbits(32):08x}"


# A channel's kept state is one flat tuple of atomic values (bytes, numbers, strings, None),
# which the garbage collector stops tracking at the first collection that sees it. A bulk
# send leaves hundreds of thousands of inbox channels with a stream each; objects with a
# `__dict__`, deques or dicts there would be walked by every full collection and lengthen
# its pause. Flat, not nested: a collection looks at a tuple before the tuples inside it, so
# each level of nesting costs one more collection of the generation the stream has reached
# by then, and the process freezes (`GcPolicy`) what survived a second: three levels left
# every stream tracked for good. (A dict inside would keep a tuple tracked, hence the tags as
# a flat tuple of keys and values, as would a client's `info`; only client publications
# carry those.)
#
# A publication kept in history: the ENTRY fields (data, offset, time, key, tags as
# (key, value, key, value...), info). Its channel and epoch are the stream's.
ENTRY = 6  # fields of an entry
# A stream: (epoch, last offset, expires_at (0.0: never), then the kept entries' fields,
# oldest first, ENTRY fields each).
_Stream = tuple[Any, ...]
# An idempotency result: (epoch, expires_at, then the entry's fields).
_Seen = tuple[Any, ...]

# Expired streams and idempotency results are swept at most this many at a time (each publish
# and history read sweeps), so a mass expiry never stops the event loop; the rest go on the
# next calls, and an expired stream found meanwhile is treated as gone anyway.
SWEEP_BATCH = 256


def _kept(data: bytes) -> bytes:
    """A right-sized copy of `data` to keep. orjson (3.12 and later) returns its output in a
    4 KiB buffer that is never trimmed: kept as it is, a 300-byte inbox update costs 4 KiB
    for as long as the history keeps it."""
    return bytes(memoryview(data))


def _publication(channel: str, epoch: str, fields: Sequence[Any], at: int = 0) -> Publication:
    """The publication whose entry starts at `fields[at]`."""
    data, offset, time, key, tags, info = fields[at : at + ENTRY]
    return Publication(
        channel,
        data,
        offset,
        epoch,
        info,
        None if tags is None else dict(zip(tags[::2], tags[1::2], strict=True)),
        key,
        time,
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
        # (channel, idempotency key) -> (epoch, expires_at, *entry), and its expiry heap.
        self._seen: dict[tuple[str, str], _Seen] = {}
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
        if stream is not None and stream[2] and stream[2] <= now:
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
            if stream is None or stream[0] != epoch or not stream[2]:
                continue  # gone, replaced by a newer stream (with its own time), or kept
            if stream[2] <= now:
                del self._streams[channel]
            else:
                heapq.heappush(expiry, (stream[2], channel, epoch))
        seen_expiry = self._seen_expiry
        for _ in range(SWEEP_BATCH):
            if not seen_expiry or seen_expiry[0][0] > now:
                break
            _, channel, key = heapq.heappop(seen_expiry)
            found = self._seen.get((channel, key))
            if found is not None and found[1] <= now:
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
            items: _Stream
            if stream is None:
                epoch, offset, items = new_epoch(), 0, ()
            else:
                epoch, offset, items = stream[0], stream[1], stream[3:]
            if idempotency_key is not None:
                seen = self._seen.get((channel, idempotency_key))
                if seen is not None and seen[0] == epoch and seen[1] > now:
                    return _publication(channel, epoch, seen, 2)
            offset += 1
            pairs = None if tags is None else tuple(itertools.chain.from_iterable(tags.items()))
            entry = (_kept(data), offset, now, key, pairs, info)  # its fields, stored flat
            if len(items) >= history_size * ENTRY:  # the oldest go
                items = items[len(items) - (history_size - 1) * ENTRY :]
            expires_at = now + history_ttl if history_ttl > 0 else 0.0
            self._streams[channel] = (epoch, offset, expires_at, *items, *entry)
            if expires_at and (stream is None or not stream[2]):
                heapq.heappush(self._expiry, (expires_at, channel, epoch))
            if idempotency_key is not None:
                until = now + max(history_ttl, IDEMPOTENCY_MIN_TTL)
                self._seen[(channel, idempotency_key)] = (epoch, until, *entry)
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
        if stream is None:  # the position of a new stream, kept for META_TTL from now on
            expires_at = now + META_TTL
            stream = self._streams[channel] = (new_epoch(), 0, expires_at)
            heapq.heappush(self._expiry, (expires_at, channel, stream[0]))
        epoch, offset = stream[0], stream[1]
        position = StreamPosition(offset=offset, epoch=epoch)
        if limit == 0:
            return HistoryResult(position=position, publications=())
        starts: Sequence[int] = range(3, len(stream), ENTRY)  # where each entry starts
        if since is not None:
            if since.epoch != epoch:
                starts = ()
            else:  # the entry at `at` has offset stream[at + 1]
                starts = [at for at in starts if stream[at + 1] > since.offset]
        if limit > 0:
            starts = starts[:limit]
        return HistoryResult(
            position=position,
            publications=tuple(_publication(channel, epoch, stream, at) for at in starts),
        )

    async def remove_history(self, channel: str) -> None:
        self._streams.pop(channel, None)
