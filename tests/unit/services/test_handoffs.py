"""Hand-offs: a job stored already claimed by a local worker pool runs as soon as it is stored,
without a claim and without a poll. The pools here poll once a minute, so a job that runs
within seconds was handed off (or claimed after an explicit `notify`, which the claim log
shows)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import pytest

from tidings.adapters.clock import ManualClock
from tidings.adapters.memory import MemoryEventStore, MemoryJobQueue
from tidings.services.ingest import DISPATCH_JOB, EventInput, IngestService
from tidings.services.worker import Handoffs, WorkerPool
from tidings.types import Job, JobState, NewJob, Priority

TX, BULK = Priority.TRANSACTIONAL, Priority.BULK
POLL = 60.0  # real seconds: the claim loop never polls during a test


class CountingQueue(MemoryJobQueue):
    """A memory queue that logs every claim: the ids each one handed out."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock)
        self.claims: list[list[str]] = []

    async def claim(
        self, worker: str, lanes: Sequence[Priority], limit: int, lease_seconds: float
    ) -> list[Job]:
        claimed = await super().claim(worker, lanes, limit, lease_seconds)
        self.claims.append([j.id for j in claimed])
        return claimed

    def claimed(self) -> set[str]:
        return {job_id for ids in self.claims for job_id in ids}


class Recorder:
    """A handler that records the jobs it runs and how many claims had happened by then;
    with `hold()`, it waits for `release` before returning."""

    def __init__(self, jobs: CountingQueue) -> None:
        self._jobs = jobs
        self.seen: list[Job] = []
        self.claims_before: list[int] = []
        self.ran = asyncio.Event()
        self.release: asyncio.Event | None = None

    def hold(self) -> asyncio.Event:
        self.release = asyncio.Event()
        return self.release

    async def __call__(self, job: Job) -> None:
        self.seen.append(job)
        self.claims_before.append(len(self._jobs.claims))
        self.ran.set()
        if self.release is not None:
            await self.release.wait()

    async def next_run(self, timeout: float = 5.0) -> Job:
        await asyncio.wait_for(self.ran.wait(), timeout)
        self.ran.clear()
        return self.seen[-1]


def make_pool(
    jobs: MemoryJobQueue,
    clock: ManualClock,
    handler: Recorder,
    *,
    kind: str = "k",
    lanes: Sequence[Priority] = (TX, BULK),
    concurrency: int = 2,
    lease_seconds: float = 30.0,
) -> WorkerPool:
    return WorkerPool(
        jobs,
        clock,
        {kind: handler},
        lanes=lanes,
        concurrency=concurrency,
        lease_seconds=lease_seconds,
        poll_interval=POLL,
    )


async def wait_until(check: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0) -> None:
    async def loop() -> None:
        while True:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.001)

    await asyncio.wait_for(loop(), timeout)


@contextlib.asynccontextmanager
async def started(jobs: CountingQueue, *pools: WorkerPool) -> AsyncIterator[None]:
    """Start the pools and wait for their first claim (the one every start makes)."""
    before = len(jobs.claims)
    for p in pools:
        await p.start()
    try:
        await wait_until(lambda: len(jobs.claims) >= before + len(pools))
        yield
    finally:
        for p in pools:
            await p.stop(grace=1.0)


async def state(jobs: MemoryJobQueue, job_id: str) -> Job:
    job = await jobs.get(job_id)
    assert job is not None
    return job


async def is_done(jobs: MemoryJobQueue, job_id: str) -> bool:
    return (await state(jobs, job_id)).state == JobState.DONE


async def quiet() -> None:
    """Let every ready task run, and then some (real) time pass."""
    await asyncio.sleep(0.05)


# -- WorkerPool.reserve ---------------------------------------------------------------------


async def test_a_pool_not_started_reserves_nothing(clock: ManualClock) -> None:
    jobs = CountingQueue(clock)
    pool = make_pool(jobs, clock, Recorder(jobs))
    assert pool.reserve(TX) is None
    assert pool.reserve(BULK) is None


async def test_reserve_counts_reservations_against_concurrency(clock: ManualClock) -> None:
    jobs = CountingQueue(clock)
    pool = make_pool(jobs, clock, Recorder(jobs), lanes=(TX,), concurrency=2, lease_seconds=45)
    async with started(jobs, pool):
        assert pool.reserve(BULK) is None  # a lane it does not serve
        a, b = pool.reserve(TX), pool.reserve(TX)
        assert a is not None and b is not None
        assert a.job_id != b.job_id and a.lease_token != b.lease_token
        assert a.lease_seconds == b.lease_seconds == 45
        assert pool.reserve(TX) is None  # full: two reserved of two
        pool.unreserve()
        c = pool.reserve(TX)
        assert c is not None
        assert pool.reserve(TX) is None
        pool.unreserve()
        pool.unreserve()


async def test_reserve_counts_jobs_in_flight(clock: ManualClock) -> None:
    jobs = CountingQueue(clock)
    handler = Recorder(jobs)
    release = handler.hold()
    pool = make_pool(jobs, clock, handler, concurrency=2)
    async with started(jobs, pool):
        h = pool.reserve(TX)
        assert h is not None
        job = NewJob(kind="k", payload={}, handoff=h)
        assert await jobs.enqueue(job) == h.job_id
        pool.adopt(job, h)
        await handler.next_run()  # one in flight
        assert pool.reserve(TX) is not None  # the second slot
        assert pool.reserve(TX) is None  # one running + one reserved
        pool.unreserve()
        release.set()
        await wait_until(lambda: pool.reserve(TX) is not None)
        assert pool.reserve(TX) is not None  # both slots free again
        pool.unreserve()
        pool.unreserve()


async def test_a_stopping_pool_reserves_nothing(clock: ManualClock) -> None:
    jobs = CountingQueue(clock)
    handler = Recorder(jobs)
    release = handler.hold()
    pool = make_pool(jobs, clock, handler, concurrency=4)
    await jobs.enqueue(NewJob(kind="k", payload={}))
    await pool.start()
    await handler.next_run()
    stopping = asyncio.create_task(pool.stop(grace=5.0))
    await asyncio.sleep(0)  # stop has begun; its claim loop has not ended yet
    assert pool.reserve(TX) is None  # three slots free, but it is stopping
    await quiet()
    assert not stopping.done()  # waits for the running job
    assert pool.reserve(TX) is None
    release.set()
    await stopping
    assert pool.reserve(TX) is None  # stopped


async def test_a_reserved_slot_is_not_claimed_and_unreserve_wakes_the_loop(
    clock: ManualClock,
) -> None:
    jobs = CountingQueue(clock)
    handler = Recorder(jobs)
    pool = make_pool(jobs, clock, handler, concurrency=1)
    async with started(jobs, pool):
        assert pool.reserve(TX) is not None
        job_id = await jobs.enqueue(NewJob(kind="k", payload={}))
        pool.notify()
        await quiet()
        assert handler.seen == []  # the only slot is promised to the hand-off
        assert (await state(jobs, job_id)).state == JobState.QUEUED
        claims = len(jobs.claims)
        pool.unreserve()  # wakes the loop: no poll needed
        job = await handler.next_run()
        assert job.id == job_id and job_id in jobs.claims[claims]


# -- Handoffs.offer -------------------------------------------------------------------------


async def test_offer_hands_off_due_transactional_jobs_only(clock: ManualClock) -> None:
    jobs = CountingQueue(clock)
    tx_pool = make_pool(jobs, clock, Recorder(jobs), lanes=(TX,), concurrency=1, lease_seconds=30)
    any_pool = make_pool(jobs, clock, Recorder(jobs), concurrency=1, lease_seconds=45)
    handoffs = Handoffs([tx_pool, any_pool])
    now = clock.now()
    async with started(jobs, tx_pool, any_pool):
        bulk = NewJob(kind="k", payload={}, lane=BULK)
        later = NewJob(kind="k", payload={}, run_at=now + 0.5)
        assert handoffs.offer(bulk, now) is bulk and bulk.handoff is None
        assert handoffs.offer(later, now) is later and later.handoff is None

        first = NewJob(kind="k", payload={"n": 1})
        offered = handoffs.offer(first, now)
        assert offered.handoff is not None and offered.handoff.lease_seconds == 30  # tx pool
        assert dataclasses.replace(offered, handoff=None) == first
        due = NewJob(kind="k", payload={"n": 2}, run_at=now)  # due: run_at == now
        second = handoffs.offer(due, now)
        assert second.handoff is not None and second.handoff.lease_seconds == 45  # next pool
        past = NewJob(kind="k", payload={"n": 3}, run_at=now - 10)
        assert handoffs.offer(past, now) is past  # due, but every slot is taken
        assert tx_pool.reserve(TX) is None and any_pool.reserve(TX) is None

        handoffs.settle([bulk, later, offered, second, past], set())
        again = handoffs.offer(past, now)  # the slots are free again, the tx pool's first
        assert again.handoff is not None and again.handoff.lease_seconds == 30
        handoffs.settle([again], set())
    assert handoffs.offer(first, now) is first  # stopped pools take nothing


async def test_offer_without_a_started_pool_leaves_the_job(clock: ManualClock) -> None:
    jobs = CountingQueue(clock)
    job = NewJob(kind="k", payload={})
    assert Handoffs([]).offer(job, clock.now()) is job
    assert Handoffs([make_pool(jobs, clock, Recorder(jobs))]).offer(job, clock.now()) is job


# -- Handoffs.settle ------------------------------------------------------------------------


async def test_a_stored_hand_off_runs_at_once_without_a_claim(clock: ManualClock) -> None:
    jobs = CountingQueue(clock)
    handler = Recorder(jobs)
    pool = make_pool(jobs, clock, handler, concurrency=1, lease_seconds=30)
    handoffs = Handoffs([pool])
    async with started(jobs, pool):
        claims = len(jobs.claims)
        offered = handoffs.offer(NewJob(kind="k", payload={"to": "u1"}), clock.now())
        assert offered.handoff is not None
        job_id = await jobs.enqueue(offered)
        assert job_id == offered.handoff.job_id
        handoffs.settle([offered], {job_id})
        job = await handler.next_run()
        assert job.id == job_id and job.attempts == 1 and job.payload == {"to": "u1"}
        assert job.lease_token == offered.handoff.lease_token
        assert job.locked_until == clock.now() + 30
        assert handler.claims_before == [claims]  # no claim in between
        await wait_until(lambda: is_done(jobs, job_id))
        done = await state(jobs, job_id)
        assert done.state == JobState.DONE and done.attempts == 1
        handoffs.settle([offered], {job_id})  # settled already: nothing happens
        await quiet()
        assert len(handler.seen) == 1
        assert job_id not in jobs.claimed()


async def test_a_hand_off_not_stored_never_runs_and_frees_its_slot(clock: ManualClock) -> None:
    jobs = CountingQueue(clock)
    handler = Recorder(jobs)
    pool = make_pool(jobs, clock, handler, concurrency=1)
    handoffs = Handoffs([pool])
    async with started(jobs, pool):
        offered = handoffs.offer(NewJob(kind="k", payload={}), clock.now())
        assert offered.handoff is not None
        assert pool.reserve(TX) is None
        handoffs.settle([offered], set())  # its transaction failed
        handoffs.settle([offered], set())  # settling twice frees the slot once
        await quiet()
        assert handler.seen == []
        assert await jobs.get(offered.handoff.job_id) is None
        assert pool.reserve(TX) is not None
        assert pool.reserve(TX) is None  # one slot, not two


async def test_a_hand_off_whose_dedupe_key_was_taken_is_not_run(clock: ManualClock) -> None:
    jobs = CountingQueue(clock)
    handler = Recorder(jobs)
    pool = make_pool(jobs, clock, handler, concurrency=1)
    handoffs = Handoffs([pool])
    async with started(jobs, pool):
        existing = await jobs.enqueue(
            NewJob(kind="k", payload={"n": 0}, dedupe_key="d", run_at=clock.now() + 60)
        )
        offered = handoffs.offer(NewJob(kind="k", payload={"n": 1}, dedupe_key="d"), clock.now())
        assert offered.handoff is not None
        job_id = await jobs.enqueue(offered)
        assert job_id == existing
        handoffs.settle([offered], {job_id} if job_id == offered.handoff.job_id else set())
        await quiet()
        assert handler.seen == []
        kept = await state(jobs, existing)
        assert kept.state == JobState.QUEUED and kept.attempts == 0
        assert pool.reserve(TX) is not None


async def test_a_pool_stopped_before_settle_leaves_the_job_to_its_lease(
    clock: ManualClock,
) -> None:
    jobs = CountingQueue(clock)
    handler = Recorder(jobs)
    pool = make_pool(jobs, clock, handler, concurrency=1, lease_seconds=30)
    handoffs = Handoffs([pool])
    await pool.start()
    offered = handoffs.offer(NewJob(kind="k", payload={}), clock.now())
    assert offered.handoff is not None
    job_id = await jobs.enqueue(offered)
    await pool.stop(grace=1.0)
    handoffs.settle([offered], {job_id})
    await quiet()
    assert handler.seen == []
    job = await state(jobs, job_id)
    assert job.state == JobState.RUNNING and job.attempts == 1
    assert job.lease_token == offered.handoff.lease_token

    async with started(jobs, pool):  # the reservation was returned: one slot again
        assert pool.reserve(TX) is not None
        pool.unreserve()
        await quiet()
        assert handler.seen == []  # still leased
        clock.advance(30)
        pool.notify()
        rerun = await handler.next_run()
        assert rerun.id == job_id and rerun.attempts == 2
        assert rerun.lease_token != offered.handoff.lease_token
        assert job_id in jobs.claimed()


# -- IngestService --------------------------------------------------------------------------


@dataclasses.dataclass
class IngestKit:
    jobs: CountingQueue
    handler: Recorder
    pool: WorkerPool
    ingest: IngestService
    enqueued: list[int]

    async def dispatch_job(self, event_id: str) -> Job:
        """The event's dispatch job (found through its dedupe key: enqueueing it again is a
        no-op that returns the stored id)."""
        job_id = await self.jobs.enqueue(
            NewJob(kind=DISPATCH_JOB, payload={}, dedupe_key=f"dispatch:{event_id}")
        )
        return await state(self.jobs, job_id)


@pytest.fixture
async def kit(clock: ManualClock) -> AsyncIterator[IngestKit]:
    jobs = CountingQueue(clock)
    handler = Recorder(jobs)
    pool = make_pool(jobs, clock, handler, kind=DISPATCH_JOB, concurrency=2)
    enqueued: list[int] = []
    ingest = IngestService(
        MemoryEventStore(clock, jobs),
        jobs,
        clock,
        max_payload_bytes=64 * 1024,
        on_enqueue=lambda: enqueued.append(1),  # does not wake the pool
        handoffs=Handoffs([pool]),
    )
    async with started(jobs, pool):
        yield IngestKit(jobs, handler, pool, ingest, enqueued)


def event(priority: Priority = TX, send_at: float | None = None) -> EventInput:
    return EventInput(
        type="order.shipped",
        payload={"order": 42},
        recipients=("u1",),
        priority=priority,
        send_at=send_at,
    )


@pytest.mark.parametrize("send_at", [None, 0.0, -5.0])
async def test_a_transactional_events_dispatch_is_handed_off(
    kit: IngestKit, clock: ManualClock, send_at: float | None
) -> None:
    claims = len(kit.jobs.claims)
    at = None if send_at is None else clock.now() + send_at
    result = await kit.ingest.ingest(event(send_at=at), idempotency_key="order-42")
    assert result.created
    job = await kit.handler.next_run()
    assert job.kind == DISPATCH_JOB and job.payload == {"event_id": result.event.id}
    assert job.attempts == 1 and job.dedupe_key == f"dispatch:{result.event.id}"
    assert kit.handler.claims_before == [claims]
    assert kit.enqueued == [1]
    await wait_until(lambda: is_done(kit.jobs, job.id))
    assert (await kit.dispatch_job(result.event.id)).id == job.id

    replay = await kit.ingest.ingest(event(send_at=at), idempotency_key="order-42")
    assert not replay.created and replay.event.id == result.event.id
    await quiet()
    assert len(kit.handler.seen) == 1  # the replay dispatches nothing
    assert job.id not in kit.jobs.claimed()
    # The replay's reservation was returned: both slots are free.
    assert kit.pool.reserve(TX) is not None and kit.pool.reserve(TX) is not None
    kit.pool.unreserve()
    kit.pool.unreserve()


async def test_a_bulk_events_dispatch_waits_for_a_claim(kit: IngestKit) -> None:
    result = await kit.ingest.ingest(event(priority=BULK))
    assert result.created
    await quiet()
    assert kit.handler.seen == []
    queued = await kit.dispatch_job(result.event.id)
    assert queued.state == JobState.QUEUED and queued.attempts == 0 and queued.lane == BULK
    kit.pool.notify()
    job = await kit.handler.next_run()
    assert job.id == queued.id and job.attempts == 1
    assert queued.id in kit.jobs.claimed()


async def test_a_scheduled_events_dispatch_is_not_handed_off(
    kit: IngestKit, clock: ManualClock
) -> None:
    send_at = clock.now() + 60
    result = await kit.ingest.ingest(event(send_at=send_at))
    assert result.created
    await quiet()
    assert kit.handler.seen == []
    queued = await kit.dispatch_job(result.event.id)
    assert queued.state == JobState.QUEUED and queued.run_at == send_at
    kit.pool.notify()
    await quiet()
    assert kit.handler.seen == []  # not due
    clock.advance(60)
    kit.pool.notify()
    job = await kit.handler.next_run()
    assert job.id == queued.id and job.attempts == 1
    assert queued.id in kit.jobs.claimed()
