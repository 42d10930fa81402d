"""Provider slots: transactional waiters are served before bulk ones, each lane in order;
a cancelled wait gives back a slot handed to it."""

from __future__ import annotations

import asyncio

import pytest

from tidings.adapters.lanes import LaneSlots
from tidings.types import CURRENT_LANE, Priority


async def hold(
    slots: LaneSlots, lane: Priority, name: str, order: list[str], go: asyncio.Event
) -> None:
    CURRENT_LANE.set(lane)  # a task of its own: its own context
    async with slots:
        order.append(name)
        await go.wait()


async def test_transactional_waiters_go_before_bulk_ones_in_arrival_order() -> None:
    slots = LaneSlots(1)
    order: list[str] = []
    go = asyncio.Event()
    tasks = [asyncio.create_task(hold(slots, Priority.BULK, "first", order, go))]
    await asyncio.sleep(0)
    assert order == ["first"]
    for name, lane in [
        ("b1", Priority.BULK),
        ("b2", Priority.BULK),
        ("t1", Priority.TRANSACTIONAL),
        ("b3", Priority.BULK),
        ("t2", Priority.TRANSACTIONAL),
    ]:
        tasks.append(asyncio.create_task(hold(slots, lane, name, order, go)))
        await asyncio.sleep(0)
    assert (slots.waiting(Priority.BULK), slots.waiting(Priority.TRANSACTIONAL)) == (3, 2)
    go.set()
    await asyncio.gather(*tasks)
    assert order == ["first", "t1", "t2", "b1", "b2", "b3"]
    # every slot is free again: two at once go straight in
    async with slots:
        pass


async def test_slots_bound_the_holders() -> None:
    slots = LaneSlots(3)
    inside, most = 0, 0

    async def one() -> None:
        nonlocal inside, most
        async with slots:
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.001)
            inside -= 1

    await asyncio.gather(*(one() for _ in range(20)))
    assert most == 3


async def test_a_cancelled_wait_leaves_no_slot_behind() -> None:
    slots = LaneSlots(1)
    order: list[str] = []
    go = asyncio.Event()
    holder = asyncio.create_task(hold(slots, Priority.BULK, "holder", order, go))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(hold(slots, Priority.TRANSACTIONAL, "gone", order, go))
    await asyncio.sleep(0)
    waiter.cancel()  # cancelled while waiting
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert slots.waiting(Priority.TRANSACTIONAL) == 0
    go.set()
    await holder
    # handed the slot and cancelled before it ran: the slot goes on to the next
    await slots.acquire()
    go.clear()
    handed = asyncio.create_task(hold(slots, Priority.TRANSACTIONAL, "handed", order, go))
    after = asyncio.create_task(hold(slots, Priority.BULK, "after", order, go))
    await asyncio.sleep(0)
    slots.release()  # hands the slot to `handed`, which has not run since
    assert slots.waiting(Priority.TRANSACTIONAL) == 0
    handed.cancel()
    go.set()
    await asyncio.gather(handed, after, return_exceptions=True)
    assert handed.cancelled()
    assert order == ["holder", "after"]
    await asyncio.wait_for(slots.acquire(), 1)  # and it came back once `after` was done


async def test_bulk_work_leaves_the_reserved_slots_to_transactional_work() -> None:
    slots = LaneSlots(3, reserved=1)
    order: list[str] = []
    go = asyncio.Event()
    bulk = [asyncio.create_task(hold(slots, Priority.BULK, f"b{n}", order, go)) for n in range(4)]
    await asyncio.sleep(0)
    assert order == ["b0", "b1"] and slots.waiting(Priority.BULK) == 2  # one slot stays free
    urgent = asyncio.create_task(hold(slots, Priority.TRANSACTIONAL, "t", order, go))
    await asyncio.sleep(0)
    assert order == ["b0", "b1", "t"]  # at once, without waiting for a bulk send
    go.set()
    await asyncio.gather(urgent, *bulk)
    assert order == ["b0", "b1", "t", "b2", "b3"]


async def test_a_waiter_cancelled_as_a_release_passes_it_over_raises_cancelled() -> None:
    """Cancelled, then dropped by a `release` that found it done before its task ran: the
    wait ends in CancelledError (not a ValueError from the queue) and the slot goes on."""
    slots = LaneSlots(1)
    await slots.acquire()
    order: list[str] = []
    go = asyncio.Event()
    go.set()
    doomed = asyncio.create_task(hold(slots, Priority.TRANSACTIONAL, "doomed", order, go))
    after = asyncio.create_task(hold(slots, Priority.TRANSACTIONAL, "after", order, go))
    await asyncio.sleep(0)
    doomed.cancel()  # its waiter is cancelled at once, its task runs later
    slots.release()  # passes over the cancelled waiter, to `after`
    await asyncio.gather(doomed, after, return_exceptions=True)
    assert doomed.cancelled()
    assert order == ["after"]


def test_pools_keep_an_eighth_for_transactional_work() -> None:
    assert [LaneSlots.for_pool(n)._bulk_max for n in (1, 2, 4, 8, 16, 100)] == [
        1,
        1,
        3,
        7,
        14,
        88,
    ]


def test_at_least_one_slot_and_one_for_bulk() -> None:
    with pytest.raises(ValueError):
        LaneSlots(0)
    with pytest.raises(ValueError):
        LaneSlots(2, reserved=2)
