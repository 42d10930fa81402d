"""The garbage-collector policy freezes survivors, and collects in full once the frozen set
has grown past its bound, so frozen cyclic garbage cannot grow without limit."""

from __future__ import annotations

import asyncio
import gc
import weakref

from tidings.services.gcpolicy import GcPolicy


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


async def test_start_freezes_and_stop_unfreezes() -> None:
    policy = GcPolicy(freeze_every=3600)
    policy.start()
    try:
        assert gc.get_freeze_count() > 0
        assert policy.full_collections == 1
    finally:
        await policy.stop()
    assert gc.get_freeze_count() == 0


async def test_frozen_cyclic_garbage_is_collected_once_the_frozen_set_doubles() -> None:
    policy = GcPolicy(freeze_every=3600, refreeze_factor=2.0)
    policy.start()
    try:
        baseline = gc.get_freeze_count()
        # A cycle that becomes garbage after it was frozen: plain freezing never frees it.
        a, b = Node(), Node()
        a.other, b.other = b, a
        probe = weakref.ref(a)
        policy.step()
        del a, b
        gc.collect()
        assert probe() is not None  # frozen: out of the collector's reach
        # Grow the frozen set past twice its size after the last full collection.
        keep = [[Node()] for _ in range(max(baseline, 10_000) + 10)]
        policy.step()
        assert policy.full_collections == 1 and probe() is not None
        keep.extend([[Node()] for _ in range(len(keep))])
        policy.step()
        assert policy.full_collections == 2
        assert probe() is None  # the unfreeze + full collection freed the cycle
        del keep
    finally:
        await policy.stop()


async def test_zero_interval_leaves_the_collector_alone() -> None:
    policy = GcPolicy(freeze_every=0)
    policy.start()
    assert gc.get_freeze_count() == 0 and policy.full_collections == 0
    await policy.stop()
    await asyncio.sleep(0)
