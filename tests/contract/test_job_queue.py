from __future__ import annotations

import asyncio

import pytest

from tests.contract.conftest import Stores
from tidings.errors import LeaseLost, NotFound
from tidings.ports import JobQueue
from tidings.types import JobState, NewJob, Priority

TX, BULK = Priority.TRANSACTIONAL, Priority.BULK
BOTH = [TX, BULK]


async def test_enqueue_and_claim(stores: Stores) -> None:
    job_id = await stores.jobs.enqueue(NewJob(kind="send", payload={"to": "u1"}))
    [job] = await stores.jobs.claim("w1", BOTH, 10, 30.0)
    assert job.id == job_id and job.kind == "send" and job.payload == {"to": "u1"}
    assert job.state == JobState.RUNNING and job.attempts == 1
    assert job.locked_until == stores.clock.now() + 30.0 and job.lease_token
    assert await stores.jobs.claim("w2", BOTH, 10, 30.0) == []  # lease holds


async def test_dedupe_key_enqueues_once(stores: Stores) -> None:
    a = await stores.jobs.enqueue(NewJob(kind="k", payload={"n": 1}, dedupe_key="d"))
    b = await stores.jobs.enqueue(NewJob(kind="k", payload={"n": 2}, dedupe_key="d"))
    assert a == b
    assert len(await stores.jobs.claim("w", BOTH, 10, 30.0)) == 1
    ids = await asyncio.gather(
        *(stores.jobs.enqueue(NewJob(kind="k", payload={}, dedupe_key="race")) for _ in range(20))
    )
    assert len(set(ids)) == 1


async def test_not_due_until_run_at(stores: Stores) -> None:
    await stores.jobs.enqueue(NewJob(kind="k", payload={}, run_at=stores.clock.now() + 60))
    assert await stores.jobs.claim("w", BOTH, 10, 30.0) == []
    stores.clock.advance(60)
    assert len(await stores.jobs.claim("w", BOTH, 10, 30.0)) == 1


async def test_lanes_in_order_then_run_at_then_enqueue_order(stores: Stores) -> None:
    now = stores.clock.now()
    await stores.jobs.enqueue(NewJob(kind="b1", payload={}, lane=BULK, run_at=now - 10))
    await stores.jobs.enqueue(NewJob(kind="t2", payload={}, run_at=now - 1))
    await stores.jobs.enqueue(NewJob(kind="t3", payload={}, run_at=now - 1))
    await stores.jobs.enqueue(NewJob(kind="t1", payload={}, run_at=now - 5))
    await stores.jobs.enqueue(NewJob(kind="b2", payload={}, lane=BULK, run_at=now - 1))
    claimed = await stores.jobs.claim("w", BOTH, 10, 30.0)
    assert [j.kind for j in claimed] == ["t1", "t2", "t3", "b1", "b2"]


async def test_claim_respects_lanes_and_limit(stores: Stores) -> None:
    for i in range(3):
        await stores.jobs.enqueue(NewJob(kind=f"b{i}", payload={}, lane=BULK))
    await stores.jobs.enqueue(NewJob(kind="t", payload={}))
    assert [j.kind for j in await stores.jobs.claim("w", [BULK], 2, 30.0)] == ["b0", "b1"]
    assert [j.kind for j in await stores.jobs.claim("w", [TX], 5, 30.0)] == ["t"]


async def test_expired_lease_is_claimed_again_and_the_dead_worker_cannot_settle(
    stores: Stores,
) -> None:
    job_id = await stores.jobs.enqueue(NewJob(kind="k", payload={}))
    [a] = await stores.jobs.claim("worker-a", BOTH, 1, 30.0)
    stores.clock.advance(29.9)
    assert await stores.jobs.claim("worker-b", BOTH, 1, 30.0) == []
    stores.clock.advance(0.2)  # worker A died: its lease lapses
    [b] = await stores.jobs.claim("worker-b", BOTH, 1, 30.0)
    assert b.id == job_id and b.attempts == 2 and b.lease_token != a.lease_token
    with pytest.raises(LeaseLost):
        await stores.jobs.complete(job_id, a.lease_token)
    with pytest.raises(LeaseLost):
        await stores.jobs.retry(job_id, a.lease_token, stores.clock.now(), "x")
    await stores.jobs.complete(job_id, b.lease_token)
    assert (await stores.jobs.get(job_id)).state == JobState.DONE
    with pytest.raises(LeaseLost):
        await stores.jobs.complete(job_id, b.lease_token)


async def test_extend_keeps_the_lease(stores: Stores) -> None:
    await stores.jobs.enqueue(NewJob(kind="k", payload={}))
    [job] = await stores.jobs.claim("w", BOTH, 1, 10.0)
    stores.clock.advance(8)
    await stores.jobs.extend(job.id, job.lease_token, 10.0)
    stores.clock.advance(8)
    assert await stores.jobs.claim("w2", BOTH, 1, 10.0) == []
    assert (await stores.jobs.get(job.id)).locked_until == stores.clock.now() + 2


async def test_retry_requeues_at_run_at_with_the_error(stores: Stores) -> None:
    await stores.jobs.enqueue(NewJob(kind="k", payload={}))
    [job] = await stores.jobs.claim("w", BOTH, 1, 30.0)
    await stores.jobs.retry(job.id, job.lease_token, stores.clock.now() + 5, "timeout")
    got = await stores.jobs.get(job.id)
    assert got.state == JobState.QUEUED and got.last_error == "timeout"
    assert got.lease_token is None and got.attempts == 1
    assert await stores.jobs.claim("w", BOTH, 1, 30.0) == []
    stores.clock.advance(5)
    [again] = await stores.jobs.claim("w", BOTH, 1, 30.0)
    assert again.attempts == 2
    # a deferral gives the claim back
    await stores.jobs.retry(again.id, again.lease_token, stores.clock.now(), "deferred", attempts=1)
    [third] = await stores.jobs.claim("w", BOTH, 1, 30.0)
    assert third.attempts == 2 and (await stores.jobs.get(job.id)).last_error == "deferred"


async def test_dead_letters_list_replay_discard(stores: Stores) -> None:
    ids = [await stores.jobs.enqueue(NewJob(kind=k, payload={})) for k in ("a", "b", "a")]
    for job in await stores.jobs.claim("w", BOTH, 3, 30.0):
        await stores.jobs.dead_letter(job.id, job.lease_token, f"boom {job.kind}")
    dead = await stores.jobs.list_dead(10)
    assert [j.id for j in dead] == ids
    assert dead[0].last_error == "boom a" and dead[0].state == JobState.DEAD
    assert [j.id for j in await stores.jobs.list_dead(10, kind="a")] == [ids[0], ids[2]]
    assert (await stores.jobs.depth()).dead == 3
    await stores.jobs.replay(ids[0])
    [replayed] = await stores.jobs.claim("w", BOTH, 5, 30.0)
    assert replayed.id == ids[0] and replayed.attempts == 1
    await stores.jobs.discard(ids[1])
    assert await stores.jobs.get(ids[1]) is None
    with pytest.raises(NotFound):
        await stores.jobs.discard(ids[1])
    with pytest.raises(NotFound):
        await stores.jobs.replay(ids[0])  # running, not dead


async def test_depth_counts_by_lane_and_state(stores: Stores) -> None:
    for lane in (TX, TX, BULK, BULK, BULK):
        await stores.jobs.enqueue(NewJob(kind="k", payload={}, lane=lane))
    await stores.jobs.claim("w", [BULK], 1, 30.0)
    depth = await stores.jobs.depth()
    assert depth.queued == {"transactional": 2, "bulk": 2}
    assert depth.running == {"bulk": 1}
    assert depth.dead == 0


async def test_concurrent_claimers_never_share_a_job(stores: Stores) -> None:
    total = 20
    for i in range(total):
        await stores.jobs.enqueue(NewJob(kind="k", payload={"i": i}))
    taken: list[str] = []

    async def worker(name: str) -> None:
        while batch := await stores.jobs.claim(name, BOTH, 3, 30.0):
            taken.extend(j.id for j in batch)
            for j in batch:
                await stores.jobs.complete(j.id, j.lease_token)

    await asyncio.gather(*(worker(f"w{i}") for i in range(5)))
    assert len(taken) == total
    assert len(set(taken)) == total


async def test_concurrent_claims_without_settling_hand_out_each_job_once(
    stores: Stores,
) -> None:
    for i in range(20):
        await stores.jobs.enqueue(NewJob(kind="k", payload={"i": i}))
    batches = await asyncio.gather(*(stores.jobs.claim(f"w{i}", BOTH, 3, 30.0) for i in range(10)))
    ids = [j.id for batch in batches for j in batch]
    assert len(ids) == 20 == len(set(ids))
    assert all(len(b) <= 3 for b in batches)


async def test_job_fields_round_trip(stores: Stores) -> None:
    now = stores.clock.now()
    job_id = await stores.jobs.enqueue(
        NewJob(
            kind="deliver",
            payload={"to": ["a", "b"], "n": 1.5, "nested": {"x": None}},
            lane=BULK,
            run_at=now - 3,
            dedupe_key="evt-1:email",
            max_attempts=4,
        )
    )
    got = await stores.jobs.get(job_id)
    assert got.kind == "deliver" and got.lane == BULK and got.state == JobState.QUEUED
    assert got.payload == {"to": ["a", "b"], "n": 1.5, "nested": {"x": None}}
    assert (got.run_at, got.created_at, got.attempts, got.max_attempts) == (now - 3, now, 0, 4)
    assert (got.dedupe_key, got.lease_token, got.locked_until, got.last_error) == (
        "evt-1:email",
        None,
        None,
        None,
    )
    assert isinstance(got.run_at, float) and isinstance(got.created_at, float)
    [claimed] = await stores.jobs.claim("w", BOTH, 1, 30.0)
    assert await stores.jobs.get(job_id) == claimed
    assert isinstance(claimed.locked_until, float)
    assert await stores.jobs.get("missing") is None


async def test_dedupe_key_holds_in_every_state(stores: Stores) -> None:
    job_id = await stores.jobs.enqueue(NewJob(kind="k", payload={}, dedupe_key="once"))
    [job] = await stores.jobs.claim("w", BOTH, 1, 30.0)
    assert await stores.jobs.enqueue(NewJob(kind="k", payload={}, dedupe_key="once")) == job_id
    await stores.jobs.complete(job.id, job.lease_token)
    assert await stores.jobs.enqueue(NewJob(kind="k", payload={}, dedupe_key="once")) == job_id
    assert await stores.jobs.claim("w", BOTH, 10, 30.0) == []
    other = await stores.jobs.enqueue(NewJob(kind="k", payload={}))
    assert other != job_id  # no dedupe key: always a new job


async def test_lane_order_is_the_callers(stores: Stores) -> None:
    await stores.jobs.enqueue(NewJob(kind="t", payload={}, run_at=stores.clock.now() - 9))
    await stores.jobs.enqueue(NewJob(kind="b", payload={}, lane=BULK))
    assert [j.kind for j in await stores.jobs.claim("w", [BULK, TX], 10, 30.0)] == ["b", "t"]


async def test_earlier_lanes_fill_the_limit_first(stores: Stores) -> None:
    for i in range(3):
        await stores.jobs.enqueue(NewJob(kind=f"b{i}", payload={}, lane=BULK, run_at=0.0))
    for i in range(3):
        await stores.jobs.enqueue(NewJob(kind=f"t{i}", payload={}))
    assert [j.kind for j in await stores.jobs.claim("w", BOTH, 4, 30.0)] == [
        "t0",
        "t1",
        "t2",
        "b0",
    ]


async def test_claim_with_nothing_to_do(stores: Stores) -> None:
    await stores.jobs.enqueue(NewJob(kind="k", payload={}))
    assert await stores.jobs.claim("w", BOTH, 0, 30.0) == []
    assert await stores.jobs.claim("w", [], 5, 30.0) == []
    assert await stores.jobs.claim("w", [BULK], 5, 30.0) == []
    assert len(await stores.jobs.claim("w", BOTH, 5, 30.0)) == 1


async def test_lease_expires_exactly_at_locked_until(stores: Stores) -> None:
    await stores.jobs.enqueue(NewJob(kind="k", payload={}))
    [a] = await stores.jobs.claim("a", BOTH, 1, 30.0)
    stores.clock.advance(30)
    [b] = await stores.jobs.claim("b", BOTH, 1, 30.0)
    assert b.id == a.id and b.locked_until == stores.clock.now() + 30


async def test_stale_tokens_change_nothing(stores: Stores) -> None:
    job_id = await stores.jobs.enqueue(NewJob(kind="k", payload={}))
    [a] = await stores.jobs.claim("a", BOTH, 1, 10.0)
    stores.clock.advance(11)
    [b] = await stores.jobs.claim("b", BOTH, 1, 10.0)
    before = await stores.jobs.get(job_id)
    for settle in (
        stores.jobs.complete(job_id, a.lease_token),
        stores.jobs.retry(job_id, a.lease_token, 0.0, "stale"),
        stores.jobs.dead_letter(job_id, a.lease_token, "stale"),
        stores.jobs.extend(job_id, a.lease_token, 100.0),
        stores.jobs.complete(job_id, "never-issued"),
        stores.jobs.complete("missing", b.lease_token),
    ):
        with pytest.raises(LeaseLost):
            await settle
    assert await stores.jobs.get(job_id) == before
    await stores.jobs.extend(job_id, b.lease_token, 100.0)  # the live worker still can
    await stores.jobs.dead_letter(job_id, b.lease_token, "gave up")
    with pytest.raises(LeaseLost):  # a settled job has no lease to hold
        await stores.jobs.extend(job_id, b.lease_token, 100.0)


async def test_every_claim_issues_a_distinct_token(stores: Stores) -> None:
    for _ in range(3):
        await stores.jobs.enqueue(NewJob(kind="k", payload={}))
    batch = await stores.jobs.claim("w", BOTH, 3, 30.0)
    tokens = {j.lease_token for j in batch}
    assert len(tokens) == 3
    with pytest.raises(LeaseLost):  # one job's token does not settle another
        await stores.jobs.complete(batch[0].id, batch[1].lease_token)


async def test_retry_into_the_past_is_due_now(stores: Stores) -> None:
    await stores.jobs.enqueue(NewJob(kind="k", payload={}))
    [job] = await stores.jobs.claim("w", BOTH, 1, 30.0)
    await stores.jobs.retry(job.id, job.lease_token, stores.clock.now() - 1, "flaky")
    [again] = await stores.jobs.claim("w", BOTH, 1, 30.0)
    assert again.id == job.id and again.last_error == "flaky"


async def test_replay_resets_attempts_and_schedules_now(stores: Stores) -> None:
    job_id = await stores.jobs.enqueue(NewJob(kind="k", payload={}, max_attempts=2))
    for _ in range(2):
        [job] = await stores.jobs.claim("w", BOTH, 1, 30.0)
        await stores.jobs.retry(job.id, job.lease_token, stores.clock.now(), "nope")
    [job] = await stores.jobs.claim("w", BOTH, 1, 30.0)
    assert job.attempts == 3
    await stores.jobs.dead_letter(job.id, job.lease_token, "nope")
    stores.clock.advance(3600)
    await stores.jobs.replay(job_id)
    got = await stores.jobs.get(job_id)
    assert got.state == JobState.QUEUED and got.attempts == 0
    assert got.run_at == stores.clock.now()
    assert (await stores.jobs.depth()).dead == 0
    with pytest.raises(NotFound):
        await stores.jobs.replay(job_id)  # queued, not dead
    with pytest.raises(NotFound):
        await stores.jobs.discard(job_id)
    with pytest.raises(NotFound):
        await stores.jobs.replay("missing")


async def test_list_dead_limit_and_order(stores: Stores) -> None:
    for i in range(5):
        await stores.jobs.enqueue(NewJob(kind="k", payload={"i": i}))
    for job in reversed(await stores.jobs.claim("w", BOTH, 5, 30.0)):
        await stores.jobs.dead_letter(job.id, job.lease_token, "x")
    assert [j.payload["i"] for j in await stores.jobs.list_dead(3)] == [0, 1, 2]
    assert await stores.jobs.list_dead(10, kind="other") == []


async def test_depth_of_an_empty_queue_and_after_settling(stores: Stores) -> None:
    depth = await stores.jobs.depth()
    assert (depth.queued, depth.running, depth.dead) == ({}, {}, 0)
    await stores.jobs.enqueue(NewJob(kind="k", payload={}, run_at=stores.clock.now() + 99))
    await stores.jobs.enqueue(NewJob(kind="k", payload={}))
    [job] = await stores.jobs.claim("w", BOTH, 5, 30.0)
    assert (await stores.jobs.depth()).queued == {"transactional": 1}  # not due counts too
    await stores.jobs.complete(job.id, job.lease_token)
    depth = await stores.jobs.depth()
    assert (depth.queued, depth.running, depth.dead) == ({"transactional": 1}, {}, 0)


async def test_claimers_on_separate_engines_never_share_a_job(stores: Stores) -> None:
    """Like separate worker processes: each SQL claimer has its own engine and connections
    (the in-process adapter has only the one queue to share)."""
    if stores.url is None:
        queues: list[JobQueue] = [stores.jobs] * 3
    else:
        queues = [type(stores.jobs)(stores.engine(), stores.clock) for _ in range(3)]
    total = 30
    for i in range(total):
        await stores.jobs.enqueue(NewJob(kind="k", payload={"i": i}, lane=(TX, BULK)[i % 2]))
    taken: list[str] = []

    async def worker(queue: JobQueue, name: str) -> None:
        while batch := await queue.claim(name, BOTH, 2, 30.0):
            taken.extend(j.id for j in batch)
            for j in batch:
                assert j.lease_token is not None
                await queue.complete(j.id, j.lease_token)

    await asyncio.gather(*(worker(queues[i % 3], f"w{i}") for i in range(6)))
    assert len(taken) == total == len(set(taken))
    depth = await stores.jobs.depth()
    assert (depth.queued, depth.running) == ({}, {})


async def test_prune_deletes_done_jobs_due_before_the_cutoff_only(stores: Stores) -> None:
    """Done jobs due before `before` go, up to `limit`, oldest first; queued, running and
    dead jobs stay, and so do done jobs due later. A pruned job frees its dedupe key."""
    now = stores.clock.now()
    jobs = stores.jobs

    async def finished(kind: str, run_at: float, dedupe: str | None = None) -> str:
        job_id = await jobs.enqueue(NewJob(kind=kind, payload={}, run_at=run_at, dedupe_key=dedupe))
        [job] = await jobs.claim("w", BOTH, 1, 30.0)
        assert job.id == job_id
        await jobs.complete(job.id, job.lease_token or "")
        return job_id

    old = [await finished(f"old{i}", now - 100 + i, dedupe=f"d{i}") for i in range(3)]
    recent = await finished("recent", now - 5)
    dead_id = await jobs.enqueue(NewJob(kind="dead", payload={}, run_at=now - 200))
    [dead] = await jobs.claim("w", BOTH, 1, 30.0)
    await jobs.dead_letter(dead.id, dead.lease_token or "", "poison")
    running_id = await jobs.enqueue(NewJob(kind="running", payload={}, run_at=now - 300))
    [running] = await jobs.claim("w", BOTH, 1, 30.0)
    queued_id = await jobs.enqueue(NewJob(kind="queued", payload={}, run_at=now - 400, lane=BULK))
    stores.clock.advance(1)

    assert await jobs.prune(now - 10, 2) == 2  # the two oldest
    assert await jobs.get(old[0]) is None and await jobs.get(old[1]) is None
    assert await jobs.get(old[2]) is not None
    assert await jobs.prune(now - 10, 100) == 1
    assert await jobs.prune(now - 10, 100) == 0
    for kept, state in (
        (recent, JobState.DONE),
        (dead_id, JobState.DEAD),
        (running_id, JobState.RUNNING),
        (queued_id, JobState.QUEUED),
    ):
        job = await jobs.get(kept)
        assert job is not None and job.state is state
    assert running.id == running_id
    again = await jobs.enqueue(NewJob(kind="again", payload={}, dedupe_key="d0"))
    assert again not in old  # the key was freed with its job


async def test_a_job_can_be_stored_dead_or_with_attempts_spent(stores: Stores) -> None:
    """`NewJob.dead`: stored dead-lettered with its error, listed, replayable; `attempts`:
    tries its work had before, counted on from."""
    q: JobQueue = stores.jobs
    dead_id = await q.enqueue(NewJob("k", {"n": 1}, dead="permanent: 554 refused", attempts=1))
    later_id = await q.enqueue(NewJob("k", {"n": 2}, attempts=2, max_attempts=3))
    [dead] = await q.list_dead(10)
    assert (dead.id, dead.state, dead.last_error) == (
        dead_id,
        JobState.DEAD,
        "permanent: 554 refused",
    )
    [job] = await q.claim("w", BOTH, 10, 30.0)
    assert (job.id, job.attempts) == (later_id, 3)
    await q.replay(dead_id)
    [again] = await q.claim("w", BOTH, 10, 30.0)
    assert (again.id, again.attempts, again.payload) == (dead_id, 1, {"n": 1})
