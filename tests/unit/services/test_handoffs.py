"""Hand-offs: a job stored already claimed by a local worker pool runs as soon as it is stored,
without a claim and without a poll. The pools here poll once a minute, so a job that runs
within seconds was handed off (or claimed after an explicit `notify`, which the claim log
shows)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any

import pytest

from tidings.adapters.clock import ManualClock
from tidings.adapters.memory import MemoryEventStore, MemoryJobQueue
from tidings.services.ingest import DISPATCH_JOB, EventInput, IngestService
from tidings.services.worker import Handoffs, WorkerPool
from tidings.types import Handoff, Job, JobState, NewJob, Priority

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


@dataclasses.dataclass
class Rig:
    """A counting queue, one pool on it whose handler is a recorder, and hand-offs to it."""

    jobs: CountingQueue
    handler: Recorder
    pool: WorkerPool
    handoffs: Handoffs

    def running(self) -> contextlib.AbstractAsyncContextManager[None]:
        return started(self.jobs, self.pool)


def rig(clock: ManualClock, **options: Any) -> Rig:
    """A `Rig` whose pool has `options` (those of `make_pool`)."""
    jobs = CountingQueue(clock)
    handler = Recorder(jobs)
    pool = make_pool(jobs, clock, handler, **options)
    return Rig(jobs, handler, pool, Handoffs([pool]))


@contextlib.contextmanager
def reserved(pool: WorkerPool, n: int) -> Iterator[list[Handoff]]:
    """Reserve `n` transactional slots of `pool` (it must have them), and return them on
    exit."""
    handoffs: list[Handoff] = []
    try:
        for _ in range(n):
            handoff = pool.reserve(TX)
            assert handoff is not None, f"{len(handoffs)} of {n} slots reserved"
            handoffs.append(handoff)
        yield handoffs
    finally:
        for _ in handoffs:
            pool.unreserve()


def free_slots(pool: WorkerPool) -> int:
    """How many transactional slots `pool` can reserve now (it reserves them all and returns
    them: the pool is left as it was, but for a wake of its claim loop)."""
    n = 0
    while pool.reserve(TX) is not None:
        n += 1
    for _ in range(n):
        pool.unreserve()
    return n


async def begin_stop(pool: WorkerPool, grace: float) -> asyncio.Task[None]:
    """`pool.stop(grace)` on a task of its own, returned once the stop has begun: it has run
    up to its first wait, so the pool knows it is stopping."""
    begun = asyncio.Event()

    async def stop() -> None:
        begun.set()  # wakes the caller only once this task waits, inside `stop`
        await pool.stop(grace)

    task = asyncio.create_task(stop())
    await begun.wait()
    return task


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
    r = rig(clock)
    assert r.pool.reserve(TX) is None
    assert r.pool.reserve(BULK) is None


async def test_reserve_counts_reservations_against_concurrency(clock: ManualClock) -> None:
    r = rig(clock, lanes=(TX,), concurrency=2, lease_seconds=45)
    async with r.running():
        assert r.pool.reserve(BULK) is None  # a lane it does not serve
        with reserved(r.pool, 1) as [a]:
            with reserved(r.pool, 1) as [b]:
                assert a.job_id != b.job_id and a.lease_token != b.lease_token
                assert a.lease_seconds == b.lease_seconds == 45
                assert free_slots(r.pool) == 0  # full: two reserved of two
            assert free_slots(r.pool) == 1  # one returned
        assert free_slots(r.pool) == 2


async def test_reserve_counts_jobs_in_flight(clock: ManualClock) -> None:
    r = rig(clock, concurrency=2)
    release = r.handler.hold()
    async with r.running():
        h = r.pool.reserve(TX)
        assert h is not None
        job = NewJob(kind="k", payload={}, handoff=h)
        assert await r.jobs.enqueue(job) == h.job_id
        r.pool.adopt(job, h)
        await r.handler.next_run()  # one in flight
        assert free_slots(r.pool) == 1  # the second slot
        with reserved(r.pool, 1):
            assert free_slots(r.pool) == 0  # one running + one reserved
        release.set()
        await wait_until(lambda: free_slots(r.pool) == 2)  # both slots free again


async def test_a_stopping_pool_reserves_nothing(clock: ManualClock) -> None:
    r = rig(clock, concurrency=4)
    release = r.handler.hold()
    await r.jobs.enqueue(NewJob(kind="k", payload={}))
    await r.pool.start()
    await r.handler.next_run()
    stopping = await begin_stop(r.pool, grace=5.0)  # its claim loop has not ended yet
    assert r.pool.reserve(TX) is None  # three slots free, but it is stopping
    await quiet()
    assert not stopping.done()  # waits for the running job
    assert r.pool.reserve(TX) is None
    release.set()
    await stopping
    assert r.pool.reserve(TX) is None  # stopped


async def test_a_reserved_slot_is_not_claimed_and_unreserve_wakes_the_loop(
    clock: ManualClock,
) -> None:
    r = rig(clock, concurrency=1)
    async with r.running():
        assert r.pool.reserve(TX) is not None
        job_id = await r.jobs.enqueue(NewJob(kind="k", payload={}))
        r.pool.notify()
        await quiet()
        assert r.handler.seen == []  # the only slot is promised to the hand-off
        assert (await state(r.jobs, job_id)).state == JobState.QUEUED
        claims = len(r.jobs.claims)
        r.pool.unreserve()  # wakes the loop: no poll needed
        job = await r.handler.next_run()
        assert job.id == job_id and job_id in r.jobs.claims[claims]


# -- Handoffs.offer -------------------------------------------------------------------------


def two_pools(clock: ManualClock) -> tuple[CountingQueue, WorkerPool, WorkerPool]:
    """A queue and two pools of one slot each: transactional only (leases of 30 s), and
    both lanes (45 s), as the runtime has them."""
    jobs = CountingQueue(clock)
    tx_pool = make_pool(jobs, clock, Recorder(jobs), lanes=(TX,), concurrency=1, lease_seconds=30)
    any_pool = make_pool(jobs, clock, Recorder(jobs), concurrency=1, lease_seconds=45)
    return jobs, tx_pool, any_pool


async def test_offer_hands_off_due_transactional_jobs_only(clock: ManualClock) -> None:
    jobs, tx_pool, any_pool = two_pools(clock)
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
        assert free_slots(tx_pool) == free_slots(any_pool) == 0

        handoffs.settle([bulk, later, offered, second, past], set())
        again = handoffs.offer(past, now)  # the slots are free again, the tx pool's first
        assert again.handoff is not None and again.handoff.lease_seconds == 30
        handoffs.settle([again], set())
    assert handoffs.offer(first, now) is first  # stopped pools take nothing


async def test_offer_hands_off_a_due_bulk_job_when_offered_as_bulk(clock: ManualClock) -> None:
    """A bulk fanout's deliveries (`bulk=True`) go to a pool that serves the bulk lane, never
    the transactional-only one, and only while it has a free slot."""
    jobs, tx_pool, any_pool = two_pools(clock)
    handoffs = Handoffs([tx_pool, any_pool])
    now = clock.now()
    async with started(jobs, tx_pool, any_pool):
        bulk = NewJob(kind="k", payload={}, lane=BULK, run_at=now - 5)
        offered = handoffs.offer(bulk, now, bulk=True)
        assert offered.handoff is not None and offered.handoff.lease_seconds == 45  # any pool
        assert free_slots(tx_pool) == 1 and free_slots(any_pool) == 0
        assert handoffs.offer(bulk, now, bulk=True) is bulk  # no bulk slot left
        later = NewJob(kind="k", payload={}, lane=BULK, run_at=now + 1)
        assert handoffs.offer(later, now, bulk=True) is later  # not due
        handoffs.settle([offered], set())


async def test_offer_without_a_started_pool_leaves_the_job(clock: ManualClock) -> None:
    job = NewJob(kind="k", payload={})
    assert Handoffs([]).offer(job, clock.now()) is job
    assert rig(clock).handoffs.offer(job, clock.now()) is job


# -- Handoffs.settle ------------------------------------------------------------------------


async def test_a_stored_hand_off_runs_at_once_without_a_claim(clock: ManualClock) -> None:
    r = rig(clock, concurrency=1, lease_seconds=30)
    async with r.running():
        claims = len(r.jobs.claims)
        offered = r.handoffs.offer(NewJob(kind="k", payload={"to": "u1"}), clock.now())
        assert offered.handoff is not None
        job_id = await r.jobs.enqueue(offered)
        assert job_id == offered.handoff.job_id
        r.handoffs.settle([offered], {job_id})
        job = await r.handler.next_run()
        assert job.id == job_id and job.attempts == 1 and job.payload == {"to": "u1"}
        assert job.lease_token == offered.handoff.lease_token
        assert job.locked_until == clock.now() + 30
        assert r.handler.claims_before == [claims]  # no claim in between
        await wait_until(lambda: is_done(r.jobs, job_id))
        done = await state(r.jobs, job_id)
        assert done.state == JobState.DONE and done.attempts == 1
        r.handoffs.settle([offered], {job_id})  # settled already: nothing happens
        await quiet()
        assert len(r.handler.seen) == 1
        assert job_id not in r.jobs.claimed()


async def test_a_hand_off_not_stored_never_runs_and_frees_its_slot(clock: ManualClock) -> None:
    r = rig(clock, concurrency=1)
    async with r.running():
        offered = r.handoffs.offer(NewJob(kind="k", payload={}), clock.now())
        assert offered.handoff is not None
        assert free_slots(r.pool) == 0
        r.handoffs.settle([offered], set())  # its transaction failed
        r.handoffs.settle([offered], set())  # settling twice frees the slot once
        await quiet()
        assert r.handler.seen == []
        assert await r.jobs.get(offered.handoff.job_id) is None
        assert free_slots(r.pool) == 1  # one slot, not two


async def test_a_hand_off_whose_dedupe_key_was_taken_is_not_run(clock: ManualClock) -> None:
    r = rig(clock, concurrency=1)
    async with r.running():
        existing = await r.jobs.enqueue(
            NewJob(kind="k", payload={"n": 0}, dedupe_key="d", run_at=clock.now() + 60)
        )
        offered = r.handoffs.offer(NewJob(kind="k", payload={"n": 1}, dedupe_key="d"), clock.now())
        assert offered.handoff is not None
        job_id = await r.jobs.enqueue(offered)
        assert job_id == existing
        r.handoffs.settle([offered], {job_id} if job_id == offered.handoff.job_id else set())
        await quiet()
        assert r.handler.seen == []
        kept = await state(r.jobs, existing)
        assert kept.state == JobState.QUEUED and kept.attempts == 0
        assert free_slots(r.pool) == 1


async def test_a_pool_stopped_before_settle_leaves_the_job_to_its_lease(
    clock: ManualClock,
) -> None:
    r = rig(clock, concurrency=1, lease_seconds=30)
    await r.pool.start()
    offered = r.handoffs.offer(NewJob(kind="k", payload={}), clock.now())
    assert offered.handoff is not None
    job_id = await r.jobs.enqueue(offered)
    await r.pool.stop(grace=1.0)
    r.handoffs.settle([offered], {job_id})
    await quiet()
    assert r.handler.seen == []
    job = await state(r.jobs, job_id)
    assert job.state == JobState.RUNNING and job.attempts == 1
    assert job.lease_token == offered.handoff.lease_token

    async with r.running():
        assert free_slots(r.pool) == 1  # the reservation was returned
        await quiet()
        assert r.handler.seen == []  # still leased
        clock.advance(30)
        r.pool.notify()
        rerun = await r.handler.next_run()
        assert rerun.id == job_id and rerun.attempts == 2
        assert rerun.lease_token != offered.handoff.lease_token
        assert job_id in r.jobs.claimed()


# -- IngestService --------------------------------------------------------------------------


@dataclasses.dataclass
class IngestKit(Rig):
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
    r = rig(clock, kind=DISPATCH_JOB, concurrency=2)
    enqueued: list[int] = []
    ingest = IngestService(
        MemoryEventStore(clock, r.jobs),
        r.jobs,
        clock,
        max_payload_bytes=64 * 1024,
        on_enqueue=lambda: enqueued.append(1),  # does not wake the pool
        handoffs=r.handoffs,
    )
    async with r.running():
        yield IngestKit(r.jobs, r.handler, r.pool, r.handoffs, ingest, enqueued)


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
    assert kit.enqueued == []  # handed off: no claim loop is woken for it
    await wait_until(lambda: is_done(kit.jobs, job.id))
    assert (await kit.dispatch_job(result.event.id)).id == job.id

    replay = await kit.ingest.ingest(event(send_at=at), idempotency_key="order-42")
    assert not replay.created and replay.event.id == result.event.id
    await quiet()
    assert len(kit.handler.seen) == 1  # the replay dispatches nothing
    assert job.id not in kit.jobs.claimed()
    assert free_slots(kit.pool) == 2  # the replay's reservation was returned


async def test_a_bulk_events_dispatch_waits_for_a_claim(kit: IngestKit) -> None:
    result = await kit.ingest.ingest(event(priority=BULK))
    assert result.created
    await quiet()
    assert kit.handler.seen == []
    assert kit.enqueued == [1]  # queued: the claim loops are woken
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


# -- Handoffs.offering ----------------------------------------------------------------------


async def test_offering_runs_what_was_stored_and_frees_the_rest(clock: ManualClock) -> None:
    r = rig(clock, concurrency=2)
    async with r.running():
        jobs = [NewJob(kind="k", payload={"n": n}) for n in range(2)]
        with r.handoffs.offering(jobs, clock.now()) as offered:
            assert all(j.handoff is not None for j in offered.jobs)
            assert not offered.queued()  # every job taken by a slot: no claim loop to wake
            assert free_slots(r.pool) == 0
            kept = offered.jobs[0]
            assert kept.handoff is not None
            await r.jobs.enqueue(kept)  # the other one is, say, deduplicated
            offered.stored = {kept.handoff.job_id}
        job = await r.handler.next_run()
        assert job.id == kept.handoff.job_id and job.payload == {"n": 0}
        await wait_until(lambda: is_done(r.jobs, job.id))
        assert free_slots(r.pool) == 2


async def test_offering_frees_every_slot_when_the_write_fails(clock: ManualClock) -> None:
    r = rig(clock, concurrency=1)
    async with r.running():
        job = NewJob(kind="k", payload={})
        with r.handoffs.offering([job, job], clock.now()) as both:  # one slot for two
            assert both.queued() and len(both.handed()) == 1
        with pytest.raises(ConnectionError), r.handoffs.offering([job], clock.now()) as offered:
            assert offered.handed() and free_slots(r.pool) == 0
            raise ConnectionError("database went away")
        assert free_slots(r.pool) == 1
        await quiet()
        assert r.handler.seen == []


# -- claims after a job ends ---------------------------------------------------------------


async def test_a_job_ending_claims_again_only_while_work_remained(clock: ManualClock) -> None:
    """The claim loop polls rarely (60 s here): a job ending wakes it only when its last
    claim filled every slot it asked for, not when it found the queue drained."""
    r = rig(clock, concurrency=1)
    first, second = [
        await r.jobs.enqueue(NewJob(kind="k", payload={"n": n}, lane=BULK)) for n in range(2)
    ]
    release = r.handler.hold()
    async with r.running():  # its first claim takes one of two: work remains
        assert (await r.handler.next_run()).id == first
        claims = len(r.jobs.claims)
        release.set()
        assert (await r.handler.next_run()).id == second  # claimed as the first ended
        assert len(r.jobs.claims) == claims + 1
        # that claim filled its one slot, so the second ending claims once more: nothing
        await wait_until(lambda: len(r.jobs.claims) == claims + 2)
        assert r.jobs.claims[-1] == []


async def test_a_job_ending_claims_nothing_once_the_queue_was_drained(
    clock: ManualClock,
) -> None:
    r = rig(clock, concurrency=2)
    job_id = await r.jobs.enqueue(NewJob(kind="k", payload={}, lane=BULK))
    release = r.handler.hold()
    async with r.running():  # its first claim asks for two and gets one: drained
        assert (await r.handler.next_run()).id == job_id
        await quiet()  # the free slot's own claim, which finds nothing
        claims = len(r.jobs.claims)
        release.set()
        await wait_until(lambda: is_done(r.jobs, job_id))
        await quiet()
        assert len(r.jobs.claims) == claims  # no claim for the freed slot
        r.pool.notify()  # new work enqueued in this process: a claim at once
        await wait_until(lambda: len(r.jobs.claims) == claims + 1)
