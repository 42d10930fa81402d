"""The event loop's share between the lanes.

One process runs transactional and bulk work on one event loop. The SQLite writer lock
already serves transactional writers first; this gate does the same for the loop itself:
bulk work that reaches a yield point while transactional work is in flight waits until that
work is done, so a bulk batch's Python (decisions, rendering) never queues in front of a
transactional job's next step.

A transactional section counts as urgent only for its first `horizon` seconds: one that waits
on a slow provider (an SMTP server taking its time) holds bulk back for at most that long,
never indefinitely.

`BulkTurns` does it for the database: on PostgreSQL several bulk batches run at once, and
while transactional work is recent (in flight, or ended less than `window` seconds ago) only
the oldest of them goes on past its yield points. Their queries would otherwise share the
database server's cores with the transactional ones (measured at 100k recipients with 20
transactional emails/s: one batch at a time, p99 2.0x idle; two, 2.7x; four, 3.9x); with
no transactional traffic, all of them run.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import math
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar, overload

from tidings.types import CURRENT_LANE, INLINE_SQLITE, Priority

DEFAULT_HORIZON = 0.25


_A = TypeVar("_A")
_B = TypeVar("_B")
_C = TypeVar("_C")


@overload
async def together(a: Awaitable[_A], b: Awaitable[_B], /) -> tuple[_A, _B]: ...
@overload
async def together(
    a: Awaitable[_A], b: Awaitable[_B], c: Awaitable[_C], /
) -> tuple[_A, _B, _C]: ...
async def together(*aws: Awaitable[Any]) -> tuple[Any, ...]:
    """Await `aws` at the same time (`asyncio.gather`), or one after another when the task's
    SQLite statements run on the loop's own thread (`INLINE_SQLITE`): they would not
    overlap there, and each task gather makes waits for a pass of the event loop, which a
    bulk send keeps busy."""
    if not INLINE_SQLITE.get():
        return tuple(await asyncio.gather(*aws))
    done: list[Any] = []
    try:
        for a in aws:
            done.append(await a)
    except BaseException:
        for rest in aws[len(done) + 1 :]:  # never started: closed, as gather would run them
            if inspect.iscoroutine(rest):
                rest.close()
        raise
    return tuple(done)


class LaneGate:
    def __init__(self, horizon: float = DEFAULT_HORIZON) -> None:
        self._horizon = horizon
        self._urgent: dict[int, float] = {}  # section -> loop time it began
        self._ids = itertools.count()
        self._changed: asyncio.Event | None = None
        self._ended = -math.inf  # loop time the last urgent section ended
        self.waits = 0  # times bulk work waited

    @contextlib.contextmanager
    def urgent(self) -> Iterator[None]:
        """Mark a section of transactional work; bulk work waits while it runs."""
        key = next(self._ids)
        self._urgent[key] = asyncio.get_running_loop().time()
        try:
            yield
        finally:
            del self._urgent[key]
            self._ended = asyncio.get_running_loop().time()
            if not self._urgent and self._changed is not None:
                self._changed.set()

    def busy(self) -> bool:
        """Whether transactional work is in flight (young or not)."""
        return bool(self._urgent)

    def recent(self, window: float) -> float:
        """Seconds for which transactional work still counts as recent: `window` while some
        is in flight, else what is left of `window` after the last ended (0: none)."""
        if self._urgent:
            return window
        return max(0.0, self._ended + window - asyncio.get_running_loop().time())

    def _pending(self, now: float) -> float:
        """Seconds until every urgent section in flight is done or has aged out (0: none)."""
        oldest_young = min(
            (t for t in self._urgent.values() if now - t < self._horizon), default=None
        )
        return 0.0 if oldest_young is None else self._horizon - (now - oldest_young)

    async def clear(self) -> None:
        """For bulk work at a yield point: return once no young urgent section is in flight
        (at once when none is)."""
        loop = asyncio.get_running_loop()
        left = self._pending(loop.time())
        if left <= 0:
            await asyncio.sleep(0)
            return
        self.waits += 1
        if self._changed is None:
            self._changed = asyncio.Event()
        while left > 0:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
            left = self._pending(loop.time())

    async def hold_bulk(self) -> None:
        """Before bulk work's read of many rows: bulk work (the current task's lane) waits
        for `clear`, as its queries would share the database server's cores with the
        transactional ones; other work goes straight on, without a trip through the loop
        that would let bulk work in first."""
        if CURRENT_LANE.get() is Priority.BULK:
            await self.clear()

    async def pause(self) -> None:
        """A yield point: bulk work (the current task's lane) waits for `clear`, other work
        passes the loop once."""
        if CURRENT_LANE.get() is Priority.BULK:
            await self.clear()
        else:
            await asyncio.sleep(0)


class BulkTurns:
    """Bulk batches running at once in one process, oldest first: while transactional work
    is recent, a batch other than the oldest waits at its yield points (`turn`)."""

    def __init__(self, gate: LaneGate, window: float = 1.0) -> None:
        self._gate = gate
        self._window = window
        self._running: list[object] = []
        self._changed = asyncio.Event()
        self.waits = 0  # times a batch waited for its turn

    @contextlib.contextmanager
    def running(self) -> Iterator[object]:
        """Register a bulk batch for its run; the token is the batch's for `turn`."""
        token = object()
        self._running.append(token)
        try:
            yield token
        finally:
            self._running.remove(token)
            self._changed.set()

    async def turn(self, token: object) -> None:
        """At a yield point of the batch: return once it is the oldest running, or no
        transactional work is recent (at once when either holds)."""
        waited = False
        while self._running and self._running[0] is not token:
            left = self._gate.recent(self._window)
            if left <= 0:
                break
            if not waited:
                self.waits += 1
                waited = True
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
