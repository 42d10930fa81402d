"""The garbage-collector policy freezes survivors, and collects in full once the heap has
grown past its bound in tracked objects (spaced, and waiting for a quiet moment), so frozen
cyclic garbage cannot grow without limit."""

from __future__ import annotations

import asyncio
import gc
import sys
import weakref
from pathlib import Path

from tests.api.conftest import make_settings
from tidings.services.gcpolicy import GcPolicy
from tidings.wiring import build_runtime, create_app, migrate


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


def grow(keep: list[list[Node]], tracked: int, blocks: int) -> None:
    """Grow `keep` (two tracked objects and a few memory blocks an item) until the heap
    holds more than `tracked` tracked objects and `blocks` blocks."""
    while gc.get_freeze_count() + len(gc.get_objects()) <= tracked or (
        sys.getallocatedblocks() <= blocks
    ):
        keep.extend([[Node()] for _ in range(20_000)])


async def test_frozen_cyclic_garbage_is_collected_once_the_tracked_objects_double() -> None:
    policy = GcPolicy(freeze_every=3600, refreeze_factor=2.0, min_interval=0)
    policy.start()
    try:
        tracked, blocks = gc.get_freeze_count(), sys.getallocatedblocks()
        # A cycle that becomes garbage after it was frozen: plain freezing never frees it.
        a, b = Node(), Node()
        a.other, b.other = b, a
        probe = weakref.ref(a)
        policy.step()
        del a, b
        gc.collect()
        assert probe() is not None  # frozen: out of the collector's reach
        keep: list[list[Node]] = []
        grow(keep, int(tracked * 1.5), 0)  # short of twice
        policy.step()
        assert policy.full_collections == 1 and probe() is not None
        grow(keep, 2 * tracked, 2 * max(blocks, 100_000))
        policy.step()
        assert policy.full_collections == 2
        assert probe() is None  # the unfreeze + full collection freed the cycle
        del keep
    finally:
        await policy.stop()


async def test_growth_in_untracked_objects_alone_collects_nothing() -> None:
    """A bulk send leaves the memory broker holding strings, bytes and tuples of atomic
    values: more blocks, nothing for a collection to walk or free."""
    policy = GcPolicy(freeze_every=3600, refreeze_factor=2.0, min_interval=0)
    policy.start()
    try:
        blocks = max(sys.getallocatedblocks(), 100_000)
        keep = [b"%d" % i for i in range(2 * blocks)]  # untracked, a block each
        assert sys.getallocatedblocks() > 2 * blocks
        policy.step()
        assert policy.full_collections == 1
        # Past the backstop (the factor cubed: 1.2 ** 3 = 1.73) it collects all the same.
        policy.refreeze_factor = 1.2
        keep.extend(b"x%d" % i for i in range(len(keep) // 2))  # past the last look's bound
        policy.step()
        assert policy.full_collections == 2
        del keep
    finally:
        await policy.stop()


async def test_a_due_full_collection_waits_for_a_quiet_moment_up_to_its_limit() -> None:
    busy = True
    policy = GcPolicy(freeze_every=3600, quiet=lambda: not busy, max_defer=3600, min_interval=0)
    policy.start()
    try:
        room = max(sys.getallocatedblocks(), 100_000)
        keep = [[Node()] for _ in range(room)]  # past twice the heap after start-up
        policy.step()
        policy.step()
        assert policy.full_collections == 1 and policy.deferred == 2
        busy = False
        policy.step()
        assert policy.full_collections == 2 and policy.deferred == 2
        # With no time to wait, a due collection runs even while work is in flight.
        policy.max_defer = 0.0
        policy.refreeze_factor = 0.5  # due at once
        busy = True
        policy.step()
        assert policy.full_collections == 3 and policy.deferred == 2
        del keep
    finally:
        await policy.stop()


async def test_counting_the_tracked_objects_waits_for_a_quiet_moment_too() -> None:
    busy = True
    policy = GcPolicy(freeze_every=3600, quiet=lambda: not busy, max_defer=3600, min_interval=0)
    policy.start()
    try:
        blocks = max(sys.getallocatedblocks(), 100_000)
        keep: list[list[Node]] = []
        grow(keep, 0, int(1.5 * blocks))  # short of the bound: no count is wanted
        policy.step()
        assert (policy.looks, policy.deferred, policy._put_off_since) == (0, 0, None)
        grow(keep, 0, 2 * blocks)  # past twice the blocks: a count is wanted
        policy.step()
        policy.step()
        assert (policy.looks, policy.deferred) == (0, 2)
        assert policy._put_off_since is not None  # the loop tries again in 10 ms
        busy = False
        policy.step()
        assert policy.looks == 1 and policy._put_off_since is None
        # put off for longer than max_defer, it counts regardless
        policy.max_defer, busy = 0.0, True
        grow(keep, 0, 2 * sys.getallocatedblocks())
        policy.step()
        assert policy.looks == 2
        del keep
    finally:
        await policy.stop()


async def test_full_collections_are_spaced_unless_the_heap_grows_fourfold() -> None:
    policy = GcPolicy(freeze_every=3600, refreeze_factor=2.0, min_interval=3600)
    policy.start()
    try:
        tracked, blocks = gc.get_freeze_count(), max(sys.getallocatedblocks(), 100_000)
        keep: list[list[Node]] = []
        grow(keep, int(2.5 * tracked), 2 * blocks)  # past twice
        policy.step()
        assert policy.full_collections == 1  # too soon after the last one
        # fourfold in tracked objects, and the blocks doubled since the policy's last look
        grow(keep, 4 * tracked, 2 * sys.getallocatedblocks())
        policy.step()
        assert policy.full_collections == 2  # fourfold: no more waiting
        del keep
    finally:
        await policy.stop()


async def test_a_spaced_out_collection_runs_once_the_interval_has_passed() -> None:
    policy = GcPolicy(freeze_every=3600, refreeze_factor=2.0, min_interval=3600)
    policy.start()
    try:
        tracked, blocks = gc.get_freeze_count(), max(sys.getallocatedblocks(), 100_000)
        keep: list[list[Node]] = []
        grow(keep, int(2.5 * tracked), 2 * blocks)
        policy.step()
        policy.step()  # the heap has not grown since: still waiting
        assert policy.full_collections == 1
        policy.min_interval = 0.0
        policy.step()
        assert policy.full_collections == 2
        del keep
    finally:
        await policy.stop()


async def test_zero_interval_leaves_the_collector_alone() -> None:
    policy = GcPolicy(freeze_every=0)
    policy.start()
    assert gc.get_freeze_count() == 0 and policy.full_collections == 0
    await policy.stop()
    await asyncio.sleep(0)


async def test_the_servers_policy_is_quiet_only_without_transactional_work(
    tmp_path: Path,
) -> None:
    """`create_app(manage_gc=True)` (what `tidings serve` runs) applies the policy, and a
    full collection counts as quiet only while no transactional job is in flight."""
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/gc.db", gc_freeze_interval=3600)
    migrate(settings)
    runtime = build_runtime(settings)
    app = create_app(settings, runtime, manage_gc=True)
    async with app.router.lifespan_context(app):
        policy = app.state.gc_policy
        assert isinstance(policy, GcPolicy) and policy.full_collections == 1
        assert policy.freeze_every == 3600
        assert policy._quiet is not None and policy._quiet()
        with runtime.gate.urgent():
            assert not policy._quiet()
        assert policy._quiet()
    assert gc.get_freeze_count() == 0  # stopped with the app
    assert create_app(settings, runtime).state.gc_policy is None
