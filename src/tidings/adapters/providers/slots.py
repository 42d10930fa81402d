"""Connection slots shared by the lanes, transactional waiters first.

A provider bounds the sends in flight (its connections). A bulk delivery job hands it a
whole slice of messages at once, so its queue can hold hundreds of bulk sends; with a plain
FIFO semaphore a transactional email arriving then would wait behind all of them. `LaneSlots`
serves waiters of the transactional lane before bulk ones (the lane is the caller's
`CURRENT_LANE`), each lane in arrival order. A bulk send already holding a slot finishes:
the wait of transactional work is at most one send per slot.
"""

from __future__ import annotations

import asyncio
import collections
from types import TracebackType

from tidings.types import CURRENT_LANE, Priority

_ORDER = (Priority.TRANSACTIONAL, Priority.BULK)


class LaneSlots:
    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("at least one slot")
        self._free = size
        self._waiting: dict[Priority, collections.deque[asyncio.Future[None]]] = {
            lane: collections.deque() for lane in _ORDER
        }

    def waiting(self, lane: Priority) -> int:
        """Callers of `lane` waiting for a slot."""
        return sum(1 for f in self._waiting[lane] if not f.done())

    async def acquire(self) -> None:
        if self._free > 0 and not any(self._waiting.values()):
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._waiting[CURRENT_LANE.get()]
        queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot was handed over as the wait was cancelled
            else:
                queue.remove(waiter)
            raise

    def release(self) -> None:
        """Hand the slot to the first waiter, transactional ones first (else free it)."""
        for lane in _ORDER:
            queue = self._waiting[lane]
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    return
        self._free += 1

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
