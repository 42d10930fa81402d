"""Connection slots shared by the lanes, transactional work first.

A provider bounds the sends in flight (its connections). A bulk delivery job hands it a
whole slice of messages at once, so its queue can hold hundreds of bulk sends; with a plain
FIFO semaphore a transactional email arriving then would wait behind all of them. `LaneSlots`
serves waiters of the transactional lane before bulk ones (the lane is the caller's
`CURRENT_LANE`), each lane in arrival order, and keeps `reserved` slots that bulk work never
holds: a transactional send finds a connection free even while a bulk send keeps the
others busy, and waits only when transactional sends alone fill the pool.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from types import TracebackType

from tidings.types import CURRENT_LANE, Priority

_ORDER = (Priority.TRANSACTIONAL, Priority.BULK)


class LaneSlots:
    def __init__(self, size: int, reserved: int = 0) -> None:
        if size < 1:
            raise ValueError("at least one slot")
        if not 0 <= reserved < size:
            raise ValueError("reserved slots: 0 up to one fewer than all")
        self._free = size
        self._bulk_max = size - reserved
        self._bulk = 0  # slots bulk work holds
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

    def _may_take(self, lane: Priority) -> bool:
        return self._free > 0 and (lane is Priority.TRANSACTIONAL or self._bulk < self._bulk_max)

    def _take(self, lane: Priority) -> None:
        self._free -= 1
        if lane is Priority.BULK:
            self._bulk += 1

    async def acquire(self) -> None:
        lane = CURRENT_LANE.get()
        if self._may_take(lane) and not self.waiting(lane):
            self._take(lane)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._waiting[lane]
        queue.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # a slot was taken for it as the wait was cancelled
            else:
                with contextlib.suppress(ValueError):  # `release` may have dropped it
                    queue.remove(waiter)
            raise

    def release(self) -> None:
        """Give back the caller's slot; the free slots go to waiters, transactional ones
        first (bulk ones while bulk holds fewer than its share)."""
        self._free += 1
        if CURRENT_LANE.get() is Priority.BULK:
            self._bulk -= 1
        for lane in _ORDER:
            queue = self._waiting[lane]
            while queue and self._may_take(lane):
                waiter = queue.popleft()
                if not waiter.done():
                    self._take(lane)
                    waiter.set_result(None)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
