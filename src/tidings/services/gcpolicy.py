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
frozen is not collected. To bound that, the policy counts the frozen objects: once there are
`refreeze_factor` times as many as just after its last full collection, it unfreezes, runs
one full collection and freezes again. That pause is the one a default process takes
routinely, but here it comes only when the frozen set has grown that much.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time

log = logging.getLogger(__name__)


class GcPolicy:
    def __init__(self, freeze_every: float = 60.0, refreeze_factor: float = 2.0) -> None:
        self.freeze_every = freeze_every
        self.refreeze_factor = refreeze_factor
        self.full_collections = 0  # run by the policy
        self._baseline = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Collect and freeze what start-up created, then keep freezing in the background."""
        if self.freeze_every <= 0:
            return
        self._collect_and_freeze()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="gc-policy")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        gc.unfreeze()

    def step(self) -> None:
        """One round: freeze the survivors, or collect everything when the frozen set grew
        past its bound."""
        if gc.get_freeze_count() > max(self._baseline, 10_000) * self.refreeze_factor:
            self._collect_and_freeze()
        else:
            gc.freeze()

    def _collect_and_freeze(self) -> None:
        started = time.perf_counter()
        gc.unfreeze()
        collected = gc.collect()
        gc.freeze()
        self._baseline = gc.get_freeze_count()
        self.full_collections += 1
        log.info(
            "full garbage collection",
            extra={
                "collected": collected,
                "frozen": self._baseline,
                "ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.freeze_every)
            self.step()
