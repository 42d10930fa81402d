"""The event loop's share between the lanes.

One process runs transactional and bulk work on one event loop. The SQLite writer lock
already serves transactional writers first; this gate does the same for the loop itself:
bulk work that reaches a yield point while transactional work is in flight waits until that
work is done, so a bulk batch's Python (decisions, rendering) never queues in front of a
transactional job's next step.

A transactional section counts as urgent only for its first `horizon` seconds: one that waits
on a slow provider (an SMTP server taking its time) holds bulk back for at most that long,
never indefinitely.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterator

from tidings.types import CURRENT_LANE, Priority

DEFAULT_HORIZON = 0.25


class LaneGate:
    def __init__(self, horizon: float = DEFAULT_HORIZON) -> None:
        self._horizon = horizon
        self._urgent: dict[int, float] = {}  # section -> loop time it began
        self._ids = itertools.count()
        self._changed: asyncio.Event | None = None
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
            if not self._urgent and self._changed is not None:
                self._changed.set()

    def busy(self) -> bool:
        """Whether transactional work is in flight (young or not)."""
        return bool(self._urgent)

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

    async def pause(self) -> None:
        """A yield point: bulk work (the current task's lane) waits for `clear`, other work
        passes the loop once."""
        if CURRENT_LANE.get() is Priority.BULK:
            await self.clear()
        else:
            await asyncio.sleep(0)
