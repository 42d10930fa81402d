"""A resource shared by the lanes, transactional work first: SQLite's one writer
(`sql.engine.LaneLock`, one slot) and a provider's connections (`LaneSlots.for_pool`).

Waiters of the transactional lane are served before bulk ones, each lane in arrival order.
A bulk delivery job hands a provider a whole slice of messages at once, so its queue can
hold hundreds of bulk sends; with a plain FIFO semaphore a transactional email arriving then
would wait behind all of them. `reserved` slots are never held by bulk work: a transactional
send finds a connection free even while bulk sends keep the others busy. So that a steady
transactional load cannot starve bulk work, a waiting bulk caller gets a slot after `burst`
transactional hand-overs in a row (None: never first).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from types import TracebackType

from tidings.types import CURRENT_LANE, Priority

_ORDER = (Priority.TRANSACTIONAL, Priority.BULK)
_BULK_FIRST = (Priority.BULK, Priority.TRANSACTIONAL)


class LaneSlots:
    def __init__(self, size: int, reserved: int = 0, burst: int | None = None) -> None:
        if size < 1:
            raise ValueError("at least one slot")
        if not 0 <= reserved < size:
            raise ValueError("reserved slots: 0 up to one fewer than all")
        self._free = size
        self._bulk_max = size - reserved
        self._bulk = 0  # slots bulk work holds
        self._burst = burst
        self._streak = 0  # transactional hand-overs in a row while bulk callers waited
        self._waiting: dict[Priority, collections.deque[asyncio.Future[None]]] = {
            lane: collections.deque() for lane in _ORDER
        }

    @classmethod
    def for_pool(cls, size: int) -> LaneSlots:
        """Slots for a pool of `size` connections, an eighth of them (at least one, when
        there are two or more) kept for transactional work."""
        return cls(size, max(1, size // 8) if size > 1 else 0)

    def waiting(self, lane: Priority) -> int:
        """Callers of `lane` waiting for a slot."""
        return sum(1 for f in self._waiting[lane] if not f.done())

    def _pending(self, lane: Priority) -> bool:
        """Whether a caller of `lane` waits (a provider's queue can hold hundreds: the first
        one still waiting answers)."""
        return any(not f.done() for f in self._waiting[lane])

    def _may_take(self, lane: Priority) -> bool:
        return self._free > 0 and (lane is Priority.TRANSACTIONAL or self._bulk < self._bulk_max)

    def _take(self, lane: Priority) -> None:
        self._free -= 1
        if lane is Priority.BULK:
            self._bulk += 1

    async def acquire(self, lane: Priority | None = None) -> None:
        """A slot for `lane` (default: the caller's `CURRENT_LANE`); give it back with
        `release` of the same lane."""
        lane = lane or CURRENT_LANE.get()
        if self._may_take(lane) and not self._pending(lane):
            self._take(lane)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._waiting[lane]
        queue.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release(lane)  # a slot was taken for it as the wait was cancelled
            else:
                with contextlib.suppress(ValueError):  # `release` may have dropped it
                    queue.remove(waiter)
            raise

    def release(self, lane: Priority | None = None) -> None:
        """Give back a slot of `lane` (default: `CURRENT_LANE`); the free slots go to
        waiters, transactional ones first (bulk ones while bulk holds fewer than its share,
        and first after `burst` transactional hand-overs in a row)."""
        self._free += 1
        if (lane or CURRENT_LANE.get()) is Priority.BULK:
            self._bulk -= 1
        bulk_waits = self._pending(Priority.BULK)
        starved = bulk_waits and self._burst is not None and self._streak >= self._burst
        for turn in _BULK_FIRST if starved else _ORDER:
            queue = self._waiting[turn]
            while queue and self._may_take(turn):
                waiter = queue.popleft()
                if not waiter.done():
                    self._take(turn)
                    waiter.set_result(None)
                    tx = turn is Priority.TRANSACTIONAL
                    self._streak = self._streak + 1 if tx and bulk_waits else 0
        if not bulk_waits:
            self._streak = 0

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
