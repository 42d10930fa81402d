from __future__ import annotations

import asyncio

from tidings.adapters.clock import ManualClock
from tidings.adapters.memory import MemoryJobQueue
from tidings.core.retry import FailureClass, RetryPolicy
from tidings.services.worker import DeferJob, PermanentJobError, RetryableJobError, WorkerPool
from tidings.types import INLINE_SQLITE, Job, JobState, NewJob, Priority


def pool(jobs: MemoryJobQueue, clock: ManualClock, handlers: dict, **kw: object) -> WorkerPool:
    return WorkerPool(
        jobs,
        clock,
        handlers,
        lanes=(Priority.TRANSACTIONAL, Priority.BULK),
        policy=RetryPolicy(base=1.0, cap=10.0),
        **kw,  # type: ignore[arg-type]
    )


async def test_success_completes(clock: ManualClock) -> None:
    jobs = MemoryJobQueue(clock)
    seen: list[dict] = []

    async def handle(job: Job) -> None:
        seen.append(job.payload)

    job_id = await jobs.enqueue(NewJob(kind="k", payload={"n": 1}))
    assert await pool(jobs, clock, {"k": handle}).run_once() == 1
    assert seen == [{"n": 1}]
    job = await jobs.get(job_id)
    assert job is not None and job.state == JobState.DONE


async def test_transient_failure_retries_with_backoff_then_dead_letters(clock: ManualClock) -> None:
    jobs = MemoryJobQueue(clock)
    calls = 0
    dead: list[str] = []

    async def handle(job: Job) -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("smtp down")

    async def on_dead(job: Job, reason: str) -> None:
        dead.append(reason)

    job_id = await jobs.enqueue(NewJob(kind="k", payload={}, max_attempts=3))
    w = pool(jobs, clock, {"k": handle}, on_dead={"k": on_dead})
    for _ in range(3):
        assert await w.run_once() == 1
        job = await jobs.get(job_id)
        assert job is not None
        if job.state == JobState.QUEUED:
            assert clock.now() <= job.run_at <= clock.now() + 10.0
            assert job.last_error == "ConnectionError: smtp down"
            assert await w.run_once() == 0  # not due before its backoff
            clock.advance(10.0)
    job = await jobs.get(job_id)
    assert job is not None and job.state == JobState.DEAD
    assert calls == 3
    assert len(dead) == 1 and "gave up after 3 attempts" in dead[0]


async def test_permanent_failure_dead_letters_at_once(clock: ManualClock) -> None:
    jobs = MemoryJobQueue(clock)

    async def handle(job: Job) -> None:
        raise PermanentJobError("no such address")

    job_id = await jobs.enqueue(NewJob(kind="k", payload={}))
    await pool(jobs, clock, {"k": handle}).run_once()
    job = await jobs.get(job_id)
    assert job is not None and job.state == JobState.DEAD
    assert job.attempts == 1
    assert "no such address" in (job.last_error or "")


async def test_rate_limited_waits_retry_after(clock: ManualClock) -> None:
    jobs = MemoryJobQueue(clock)

    async def handle(job: Job) -> None:
        raise RetryableJobError("429", FailureClass.RATE_LIMITED, retry_after=7.0)

    job_id = await jobs.enqueue(NewJob(kind="k", payload={}))
    await pool(jobs, clock, {"k": handle}).run_once()
    job = await jobs.get(job_id)
    assert job is not None and job.run_at == clock.now() + 7.0


async def test_a_deferred_job_waits_and_gives_its_claim_back(clock: ManualClock) -> None:
    jobs = MemoryJobQueue(clock)
    runs = 0

    async def handle(job: Job) -> None:
        nonlocal runs
        runs += 1
        if runs <= 5:  # more deferrals than attempts: none is used up
            raise DeferJob(2.0, "smtp: local rate limit")

    job_id = await jobs.enqueue(NewJob(kind="k", payload={}, max_attempts=2))
    workers = pool(jobs, clock, {"k": handle})
    for _ in range(5):
        await workers.run_once()
        job = await jobs.get(job_id)
        assert job is not None and job.state == JobState.QUEUED
        assert (job.attempts, job.run_at) == (0, clock.now() + 2.0)
        assert job.last_error == "deferred: smtp: local rate limit"
        clock.advance(2.0)
    await workers.run_once()
    job = await jobs.get(job_id)
    assert job is not None and (job.state, job.attempts) == (JobState.DONE, 1)


async def test_unknown_kind_is_dead_lettered(clock: ManualClock) -> None:
    jobs = MemoryJobQueue(clock)
    job_id = await jobs.enqueue(NewJob(kind="mystery", payload={}))
    await pool(jobs, clock, {}).run_once()
    job = await jobs.get(job_id)
    assert job is not None and job.state == JobState.DEAD
    assert "no handler" in (job.last_error or "")


async def test_poison_job_whose_workers_die_is_dead_lettered(clock: ManualClock) -> None:
    jobs = MemoryJobQueue(clock)
    job_id = await jobs.enqueue(NewJob(kind="k", payload={}, max_attempts=2))
    for _ in range(2):  # two workers claim it and die
        assert len(await jobs.claim("w", [Priority.TRANSACTIONAL], 1, 5.0)) == 1
        clock.advance(6.0)
    ran: list[str] = []

    async def handle(job: Job) -> None:
        ran.append(job.id)

    await pool(jobs, clock, {"k": handle}).run_once()
    job = await jobs.get(job_id)
    assert job is not None and job.state == JobState.DEAD
    assert ran == []


async def test_background_loop_runs_transactional_before_bulk() -> None:
    from tidings.adapters.clock import SystemClock

    clock = SystemClock()
    jobs = MemoryJobQueue(clock)
    order: list[str] = []
    done = asyncio.Event()

    async def handle(job: Job) -> None:
        order.append(job.payload["name"])
        if len(order) == 4:
            done.set()

    for name in ("b1", "b2"):
        await jobs.enqueue(NewJob(kind="k", payload={"name": name}, lane=Priority.BULK))
    for name in ("t1", "t2"):
        await jobs.enqueue(NewJob(kind="k", payload={"name": name}))
    w = WorkerPool(
        jobs,
        clock,
        {"k": handle},
        lanes=(Priority.TRANSACTIONAL, Priority.BULK),
        concurrency=1,
        batch=1,
        poll_interval=0.01,
    )
    await w.start()
    await asyncio.wait_for(done.wait(), 5)
    await w.stop()
    assert order == ["t1", "t2", "b1", "b2"]


async def test_lease_is_extended_while_a_long_job_runs() -> None:
    from tidings.adapters.clock import SystemClock

    clock = SystemClock()
    jobs = MemoryJobQueue(clock)
    job_id = await jobs.enqueue(NewJob(kind="k", payload={}))
    seen: list[float] = []

    async def handle(job: Job) -> None:
        await asyncio.sleep(0.35)
        current = await jobs.get(job.id)
        assert current is not None and current.locked_until is not None
        seen.append(current.locked_until - clock.now())

    w = WorkerPool(jobs, clock, {"k": handle}, lanes=(Priority.TRANSACTIONAL,), lease_seconds=0.3)
    await w.run_once()
    assert seen and seen[0] > 0  # without extension the lease would have lapsed
    job = await jobs.get(job_id)
    assert job is not None and job.state == JobState.DONE


async def test_a_job_on_sqlite_may_read_on_the_loops_thread(
    clock: ManualClock,
) -> None:
    """`INLINE_SQLITE` is set while a job runs in a pool on SQLite, of either lane, not in a
    pool on another store, and not after either."""
    seen: dict[tuple[bool, str], bool] = {}

    async def handle(job: Job) -> None:
        seen[(job.payload["sqlite"], job.payload["name"])] = INLINE_SQLITE.get()

    for sqlite in (True, False):
        jobs = MemoryJobQueue(clock)
        await jobs.enqueue(NewJob(kind="k", payload={"sqlite": sqlite, "name": "tx"}))
        await jobs.enqueue(
            NewJob(kind="k", payload={"sqlite": sqlite, "name": "bulk"}, lane=Priority.BULK)
        )
        assert await pool(jobs, clock, {"k": handle}, inline_sqlite=sqlite).run_once() == 2
    assert seen == {
        (True, "tx"): True,
        (True, "bulk"): True,
        (False, "tx"): False,
        (False, "bulk"): False,
    }
    assert INLINE_SQLITE.get() is False
