"""The lane gate: bulk work at a yield point waits for transactional work in flight, for at
most the horizon per urgent section; other work passes at once."""

from __future__ import annotations

import asyncio
import gc
import warnings
from typing import Any

import pytest

from tidings.adapters.clock import ManualClock
from tidings.adapters.memory import MemoryEventStore, MemoryJobQueue
from tidings.services.ingest import EventInput, IngestService
from tidings.services.lanes import BulkTurns, LaneGate, together
from tidings.services.worker import WorkerPool
from tidings.types import CURRENT_LANE, INLINE_SQLITE, Job, NewJob, Priority


async def bulk_steps(gate: LaneGate, log: list[str], n: int) -> None:
    CURRENT_LANE.set(Priority.BULK)
    for i in range(n):
        log.append(f"bulk{i}")
        await gate.pause()


async def test_bulk_waits_until_the_transactional_section_ends() -> None:
    gate = LaneGate(horizon=5.0)
    log: list[str] = []
    release = asyncio.Event()

    async def tx() -> None:
        with gate.urgent():
            log.append("tx-start")
            await release.wait()
            log.append("tx-end")

    t = asyncio.create_task(tx())
    await asyncio.sleep(0)
    b = asyncio.create_task(bulk_steps(gate, log, 3))
    for _ in range(20):
        await asyncio.sleep(0)
    assert log == ["tx-start", "bulk0"]  # bulk stopped at its first yield point
    release.set()
    await asyncio.gather(t, b)
    assert log == ["tx-start", "bulk0", "tx-end", "bulk1", "bulk2"]
    assert gate.waits == 1


async def test_a_long_transactional_section_holds_bulk_back_only_for_the_horizon() -> None:
    gate = LaneGate(horizon=0.05)
    log: list[str] = []
    stuck = asyncio.Event()

    async def slow_tx() -> None:
        with gate.urgent():
            await stuck.wait()  # a provider that never answers

    t = asyncio.create_task(slow_tx())
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await asyncio.wait_for(bulk_steps(gate, log, 3), 2.0)
    waited = loop.time() - began
    assert log == ["bulk0", "bulk1", "bulk2"]
    assert 0.04 <= waited < 1.0  # held once for about the horizon, then free to go
    stuck.set()
    await t


async def test_transactional_work_never_waits_at_the_gate() -> None:
    gate = LaneGate(horizon=5.0)
    with gate.urgent():
        CURRENT_LANE.set(Priority.TRANSACTIONAL)
        await asyncio.wait_for(gate.pause(), 0.5)
    assert gate.waits == 0


async def test_before_a_read_bulk_waits_and_other_work_takes_no_trip_through_the_loop() -> None:
    gate = LaneGate(horizon=5.0)
    log: list[str] = []

    async def bulk_read() -> None:
        CURRENT_LANE.set(Priority.BULK)
        await gate.hold_bulk()
        log.append("bulk read")

    with gate.urgent():
        b = asyncio.create_task(bulk_read())
        for _ in range(20):
            await asyncio.sleep(0)
        assert log == [] and gate.waits == 1  # bulk waits for the urgent section

        async def ready() -> None:
            log.append("ready task")

        task = asyncio.create_task(ready())  # would run at the next trip through the loop
        CURRENT_LANE.set(Priority.TRANSACTIONAL)
        await gate.hold_bulk()
        log.append("tx read")
        await task
    await b
    assert log == ["tx read", "ready task", "bulk read"]


async def test_by_default_an_urgent_section_holds_bulk_back_for_a_quarter_second() -> None:
    gate = LaneGate()
    stuck = asyncio.Event()

    async def slow_tx() -> None:
        with gate.urgent():
            await stuck.wait()

    t = asyncio.create_task(slow_tx())
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await asyncio.wait_for(bulk_steps(gate, [], 1), 2.0)
    assert 0.24 <= loop.time() - began < 1.0
    stuck.set()
    await t


async def test_a_worker_runs_transactional_jobs_urgent_and_bulk_jobs_in_their_lane() -> None:
    gate = LaneGate()
    jobs = MemoryJobQueue(ManualClock(1000.0))
    seen: list[tuple[Priority, bool, Priority]] = []

    async def handle(job: Job) -> None:
        seen.append((job.lane, gate.busy(), CURRENT_LANE.get()))

    pool = WorkerPool(
        jobs,
        ManualClock(1000.0),
        {"k": handle},
        lanes=(Priority.TRANSACTIONAL, Priority.BULK),
        gate=gate,
    )
    await jobs.enqueue(NewJob("k", {}, lane=Priority.TRANSACTIONAL))
    await jobs.enqueue(NewJob("k", {}, lane=Priority.BULK))
    assert await pool.run_once() == 2
    assert seen == [
        (Priority.TRANSACTIONAL, True, Priority.TRANSACTIONAL),
        (Priority.BULK, False, Priority.BULK),
    ]
    assert not gate.busy()


# -- bulk turns ----------------------------------------------------------------------------


async def batch(turns: BulkTurns, name: str, log: list[str], steps: int) -> None:
    with turns.running() as token:
        for i in range(steps):
            await turns.turn(token)
            log.append(f"{name}{i}")
            await asyncio.sleep(0)


async def test_without_recent_transactional_work_bulk_batches_interleave() -> None:
    turns = BulkTurns(LaneGate(), window=1.0)
    log: list[str] = []
    await asyncio.gather(batch(turns, "a", log, 3), batch(turns, "b", log, 3))
    assert log == ["a0", "b0", "a1", "b1", "a2", "b2"]
    assert turns.waits == 0


async def test_while_transactional_work_is_recent_only_the_oldest_batch_goes_on() -> None:
    gate = LaneGate()
    turns = BulkTurns(gate, window=0.2)
    log: list[str] = []
    with gate.urgent():  # ends at once: recent for 0.2 s
        pass
    started = asyncio.get_running_loop().time()
    await asyncio.gather(batch(turns, "a", log, 3), batch(turns, "b", log, 3))
    assert log == ["a0", "a1", "a2", "b0", "b1", "b2"]  # b waited for a to end
    assert turns.waits == 1
    assert asyncio.get_running_loop().time() - started < 0.2  # woken by a's end, not a timer


async def test_a_waiting_batch_goes_on_once_transactional_work_is_no_longer_recent() -> None:
    gate = LaneGate()
    turns = BulkTurns(gate, window=0.1)
    log: list[str] = []
    hold = asyncio.Event()

    async def oldest() -> None:
        with turns.running() as token:
            await turns.turn(token)
            log.append("a0")
            await hold.wait()  # stays running, e.g. on a long query
            log.append("a1")

    with gate.urgent():
        a = asyncio.create_task(oldest())
        await asyncio.sleep(0)
        b = asyncio.create_task(batch(turns, "b", log, 1))
        await asyncio.sleep(0.05)
        assert log == ["a0"]  # in flight: b waits however long the section lasts
    await asyncio.sleep(0.15)  # the section ended 0.15 s ago: no longer recent
    assert log == ["a0", "b0"]
    hold.set()
    await asyncio.gather(a, b)
    assert log == ["a0", "b0", "a1"]


# -- accepting an event ----------------------------------------------------------------------


class WatchedEvents(MemoryEventStore):
    """Records whether transactional work was in flight at each append."""

    def __init__(self, clock: ManualClock, jobs: MemoryJobQueue, gate: LaneGate) -> None:
        super().__init__(clock, jobs)
        self.gate = gate
        self.busy: list[bool] = []

    async def append(self, *args: Any, **kwargs: Any) -> Any:
        self.busy.append(self.gate.busy())
        return await super().append(*args, **kwargs)


async def test_accepting_a_transactional_event_holds_bulk_work_back() -> None:
    clock = ManualClock(1000.0)
    jobs = MemoryJobQueue(clock)
    gate = LaneGate()
    events = WatchedEvents(clock, jobs, gate)
    ingest = IngestService(events, jobs, clock, max_payload_bytes=1024, gate=gate)
    for priority in (Priority.TRANSACTIONAL, Priority.BULK):
        await ingest.ingest(EventInput(type="t", payload={}, recipients=("u1",), priority=priority))
    assert events.busy == [True, False]  # urgent while a transactional one is stored
    assert not gate.busy()


async def test_together_awaits_one_by_one_inline_and_at_once_otherwise() -> None:
    """`together`: at once (overlapping) unless `INLINE_SQLITE` is set, then one after
    another; a failure there closes the awaitables not started (no never-awaited warning)."""
    order: list[str] = []

    async def step(name: str, fail: bool = False) -> str:
        order.append(f"{name}+")
        await asyncio.sleep(0.01)
        order.append(f"{name}-")
        if fail:
            raise ValueError(name)
        return name

    assert await together(step("a"), step("b")) == ("a", "b")
    assert order[:2] == ["a+", "b+"]  # overlapping
    order.clear()
    token = INLINE_SQLITE.set(True)
    try:
        assert await together(step("a"), step("b"), step("c")) == ("a", "b", "c")
        assert order == ["a+", "a-", "b+", "b-", "c+", "c-"]
        order.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a never-awaited coroutine would warn
            with pytest.raises(ValueError, match="a"):
                await together(step("a", fail=True), step("b"))
            gc.collect()
        assert order == ["a+", "a-"]
    finally:
        INLINE_SQLITE.reset(token)
