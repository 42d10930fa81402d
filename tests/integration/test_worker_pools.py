"""The runtime's worker pools: their sizes come from `worker.transactional_concurrency` (the
pool that runs only transactional work) and `worker.concurrency` (the pool that runs both
lanes), and hand-offs fill the transactional pool first."""

from __future__ import annotations

from pathlib import Path

from tests.api.conftest import make_settings
from tidings.config import WorkerSettings
from tidings.services.worker import WorkerPool
from tidings.types import Handoff, Priority
from tidings.wiring import build_runtime, migrate


def reserve_all(pool: WorkerPool, lane: Priority) -> list[Handoff]:
    taken: list[Handoff] = []
    while (h := pool.reserve(lane)) is not None:
        taken.append(h)
        if len(taken) > 1000:
            raise AssertionError("a pool without a bound")
    return taken


def slots(pool: WorkerPool) -> int:
    """How many transactional jobs the started pool takes at once (reserved, then freed)."""
    n = len(reserve_all(pool, Priority.TRANSACTIONAL))
    for _ in range(n):
        pool.unreserve()
    return n


async def test_pool_sizes_follow_the_settings(tmp_path: Path) -> None:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/p.db").model_copy(
        update={
            "worker": WorkerSettings(poll_interval=0.02, concurrency=3, transactional_concurrency=5)
        }
    )
    migrate(settings)
    runtime = build_runtime(settings)
    await runtime.start()
    try:
        tx_pool, both = runtime.pools
        assert reserve_all(tx_pool, Priority.BULK) == []  # transactional only
        assert (slots(tx_pool), slots(both)) == (5, 3)
    finally:
        await runtime.stop()


async def test_transactional_slots_default_to_many_more_than_the_shared_pool(
    tmp_path: Path,
) -> None:
    """A burst of transactional jobs (a stall in the loop, a slow provider) is handed off, not
    queued behind a claim: 32 slots by default."""
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/p.db")
    migrate(settings)
    runtime = build_runtime(settings)
    await runtime.start()
    try:
        tx_pool, both = runtime.pools
        assert (slots(tx_pool), slots(both)) == (32, 8)
    finally:
        await runtime.stop()
