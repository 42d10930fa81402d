from __future__ import annotations

import asyncio

import pytest

from tests.contract.conftest import Stores
from tidings.errors import LeaseLost, NotFound
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
    total = 40
    for i in range(total):
        await stores.jobs.enqueue(NewJob(kind="k", payload={"i": i}))
    taken: list[str] = []

    async def worker(name: str) -> None:
        while True:
            batch = await stores.jobs.claim(name, BOTH, 3, 30.0)
            if not batch:
                return
            taken.extend(j.id for j in batch)
            for j in batch:
                await stores.jobs.complete(j.id, j.lease_token)

    await asyncio.gather(*(worker(f"w{i}") for i in range(5)))
    assert len(taken) == total
    assert len(set(taken)) == total
