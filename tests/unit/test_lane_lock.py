"""The SQLite writer lock: one holder; transactional waiters go before bulk waiters."""

from __future__ import annotations

import asyncio

import pytest

from tidings.adapters.sql.engine import LaneLock
from tidings.types import Priority

TX, BULK = Priority.TRANSACTIONAL, Priority.BULK


async def test_transactional_waiters_overtake_queued_bulk_waiters() -> None:
    lock = LaneLock(burst=10)
    order: list[str] = []

    async def work(name: str, lane: Priority) -> None:
        await lock.acquire(lane)
        order.append(name)
        await asyncio.sleep(0)
        lock.release(lane)

    await lock.acquire(BULK)  # a bulk write in progress
    tasks = [asyncio.create_task(work(f"b{i}", BULK)) for i in range(3)]
    await asyncio.sleep(0)
    tasks += [asyncio.create_task(work(f"t{i}", TX)) for i in range(2)]
    await asyncio.sleep(0)
    lock.release(BULK)
    await asyncio.gather(*tasks)
    assert order == ["t0", "t1", "b0", "b1", "b2"]


async def test_one_holder_at_a_time_and_cancelled_waiters_do_not_wedge_it() -> None:
    lock = LaneLock()
    inside = 0
    most = 0

    async def work(lane: Priority) -> None:
        nonlocal inside, most
        await lock.acquire(lane)
        try:
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.001)
        finally:
            inside -= 1
            lock.release(lane)

    await lock.acquire(TX)
    doomed = asyncio.create_task(work(BULK))
    await asyncio.sleep(0)
    lock.release(TX)  # hands the lock to `doomed`...
    doomed.cancel()  # ...which is cancelled before it runs: it must pass the lock on
    tasks = [asyncio.create_task(work(TX if i % 2 else BULK)) for i in range(20)]
    await asyncio.gather(*tasks)
    assert most == 1
    await asyncio.wait_for(lock.acquire(BULK), 1)  # free again
    lock.release(BULK)


@pytest.mark.parametrize(
    ("lock", "expected"),
    [
        (LaneLock(burst=2), ["t0", "t1", "b0", "t2", "t3", "t4", "t5"]),
        (LaneLock(), ["t0", "t1", "t2", "t3", "b0", "t4", "t5"]),  # every fifth turn
    ],
    ids=["burst-2", "default"],
)
async def test_a_steady_transactional_stream_does_not_starve_bulk(
    lock: LaneLock, expected: list[str]
) -> None:
    order: list[str] = []

    async def work(name: str, lane: Priority) -> None:
        await lock.acquire(lane)
        order.append(name)
        await asyncio.sleep(0)
        lock.release(lane)

    await lock.acquire(TX)
    tasks = [asyncio.create_task(work("b0", BULK))]
    await asyncio.sleep(0)
    tasks += [asyncio.create_task(work(f"t{i}", TX)) for i in range(6)]
    await asyncio.sleep(0)
    lock.release(TX)
    await asyncio.gather(*tasks)
    assert order == expected


@pytest.mark.parametrize("exc", [GeneratorExit, KeyboardInterrupt, RuntimeError])
async def test_a_waiter_interrupted_after_its_hand_over_passes_the_lock_on(
    exc: type[BaseException],
) -> None:
    """The lock is handed to a waiter whose wait then ends in an exception other than a
    cancellation (an async generator closed under it, an interrupt): the lock goes on to the
    next waiter, or is free, instead of staying with a holder that never releases it."""
    lock = LaneLock()
    await lock.acquire(TX)
    interrupted = lock.acquire(BULK)  # driven by hand: suspended at its wait
    interrupted.send(None)
    nxt = asyncio.create_task(lock.acquire(BULK))
    await asyncio.sleep(0)
    lock.release(TX)  # handed to the first waiter ...
    with pytest.raises(exc):
        interrupted.throw(exc())  # ... which never runs on
    await asyncio.wait_for(nxt, 1.0)  # the next waiter has it
    lock.release(BULK)
    await asyncio.wait_for(lock.acquire(TX), 1.0)  # and then it is free
    lock.release(TX)
