"""Garbage-collector policy for a long-running gateway.

CPython's full (generation 2) collection walks every container object the process holds. A
gateway with 10k connections holds about half a million of them, and a full collection then
stops the event loop for 200-300 ms: every subscriber's next message waits that long. Almost
all of those objects live as long as their connection, and reference counting frees them
when it ends (the gateway breaks its own reference cycles on close), so walking them again
and again finds nothing.

`GcPolicy` moves the surviving objects to the permanent generation (`gc.freeze()`) once
after start-up and then every `freeze_every` seconds, so full collections walk only what was
created since. The price of freezing is that a reference cycle which becomes garbage while
frozen is not collected. To bound that, the policy watches the heap: once it holds
`refreeze_factor` times as many tracked objects (the containers a full collection walks, of
which cyclic garbage is made) as just after its last full collection, it unfreezes, runs one
full collection and freezes again. That pause is the one a default process takes routinely
(CPython's own rule collects in full every time the old objects grow by a quarter), but here
it comes only when the heap has grown that much. Growth in untracked objects (strings, bytes,
tuples of atomic values: the inbox history a bulk send leaves in the memory broker) costs a
collection nothing and frees nothing, so it counts only discounted by the factor squared: a
backstop for garbage cycles that hold much untracked memory.

Full collections are also spaced: one falls due on a doubled heap only when `min_interval`
seconds (120) have passed since the last, unless the heap has grown by the factor twice over
(fourfold): a bulk send that grows the heap fast stops the loop once, not at every doubling,
and the frozen garbage such spacing lets through is bounded by that fourfold growth.

The heap is first measured with `sys.getallocatedblocks()`, which reads the allocator's
arenas; only when its blocks have grown by the factor since the last look does the policy
count the tracked objects with `gc.get_freeze_count()`, which walks every frozen object (tens
of milliseconds for a few hundred thousand in a server's heap: too long to take every
second).

Both pauses, that count and a full collection, wait while `quiet()` says work is in flight
that should not be stopped (a transactional job, in `tidings serve`): the policy freezes as
usual meanwhile and tries again every 10 ms, for at most `max_defer` seconds from the first
time it put the pause off; then it pauses regardless.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from collections.abc import Callable

from tidings.tasks import cancel

log = logging.getLogger(__name__)


class GcPolicy:
    def __init__(
        self,
        freeze_every: float = 1.0,
        refreeze_factor: float = 2.0,
        *,
        quiet: Callable[[], bool] | None = None,
        max_defer: float = 30.0,
        min_interval: float = 120.0,
    ) -> None:
        self.freeze_every = freeze_every
        self.refreeze_factor = refreeze_factor
        self.full_collections = 0  # run by the policy
        self.looks = 0  # counts of the tracked objects
        self.deferred = 0  # steps that put a count or a full collection off
        self._quiet = quiet
        self.max_defer = max_defer
        self.min_interval = min_interval
        self._last_full = 0.0  # monotonic time of the last full collection
        self._due_since: float | None = None  # monotonic time the full collection fell due
        self._put_off_since: float | None = None  # monotonic time a pause was first put off
        self._tracked = 0  # tracked objects after the last full collection
        self._full_blocks = 0  # memory blocks after the last full collection
        self._armed = 0  # blocks at the last look at the heap's growth
        self._pending = False  # due, but too soon after the last full collection
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Collect and freeze what start-up created, then keep freezing in the background."""
        if self.freeze_every <= 0:
            return
        self._collect_and_freeze()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="gc-policy")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
        gc.unfreeze()

    def step(self) -> None:
        """One round: freeze the survivors, or collect everything when the heap grew past
        its bound."""
        gc.freeze()
        now = time.monotonic()
        factor = self.refreeze_factor
        if self._due_since is None:
            blocks = sys.getallocatedblocks()
            spaced_out = self._pending and now - self._last_full >= self.min_interval
            if not spaced_out and blocks <= max(self._armed, 100_000) * factor:
                self._put_off_since = None
                return
            if not self._may_pause(now):
                return
            grown = self._growth(blocks)
            if grown <= factor:  # grown by what a collection passes over: look again later
                self._armed, self._pending = blocks, False
                return
            if now - self._last_full < self.min_interval and grown <= factor * factor:
                self._armed, self._pending = blocks, True  # due once spaced out
                return
            self._due_since = now
        if self._may_pause(now):
            self._due_since = None
            self._collect_and_freeze()

    def _may_pause(self, now: float) -> bool:
        """Whether the loop may be stopped now: the work in flight allows it, or the pause
        has been put off for `max_defer` seconds already."""
        if self._quiet is None or self._quiet():
            self._put_off_since = None
            return True
        if self._put_off_since is None:
            self._put_off_since = now
        if now - self._put_off_since >= self.max_defer:
            self._put_off_since = None
            return True
        self.deferred += 1
        return False

    def _growth(self, blocks: int) -> float:
        """How many times over the heap has grown since the last full collection: by its
        tracked objects, or by its blocks discounted by the factor squared."""
        self.looks += 1
        tracked = gc.get_freeze_count()  # all of them: step() has just frozen the young
        return max(
            tracked / max(self._tracked, 50_000),
            blocks / (max(self._full_blocks, 100_000) * self.refreeze_factor**2),
        )

    def _collect_and_freeze(self) -> None:
        started = time.perf_counter()
        gc.unfreeze()
        collected = gc.collect()
        gc.freeze()
        self._tracked = gc.get_freeze_count()
        self._full_blocks = self._armed = sys.getallocatedblocks()
        self._pending = False
        self._last_full = time.monotonic()
        self.full_collections += 1
        log.info(
            "full garbage collection",
            extra={
                "collected": collected,
                "tracked": self._tracked,
                "blocks": self._full_blocks,
                "ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )

    async def _loop(self) -> None:
        while True:
            # A pause put off is tried again soon: quiet moments are short.
            await asyncio.sleep(self.freeze_every if self._put_off_since is None else 0.01)
            self.step()
