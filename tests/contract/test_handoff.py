"""Contract of hand-offs: a job stored already claimed (`NewJob.handoff`), through the job
queue, the run store's commit and the event store's outbox, on memory, SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from tests.contract.conftest import Stores
from tidings.errors import LeaseLost
from tidings.ports.notify import Run, RunState, RunWrite
from tidings.types import Handoff, JobState, NewEvent, NewJob, Priority

TX, BULK = Priority.TRANSACTIONAL, Priority.BULK
BOTH = [TX, BULK]


def handoff(lease_seconds: float = 30.0) -> Handoff:
    return Handoff(str(uuid.uuid4()), uuid.uuid4().hex, lease_seconds)


def new_event(key: str, body_hash: str = "h1") -> NewEvent:
    return NewEvent(
        id=str(uuid.uuid4()),
        type="order.shipped",
        idempotency_key=key,
        body_hash=body_hash,
        actor=None,
        recipients=("u1",),
        topic=None,
        channels=(),
        payload={"order": 42},
        priority=TX,
        send_at=None,
    )


def run_write(event_id: str = "e1", recipient: str = "alice") -> RunWrite:
    run = Run(
        id=f"r:{event_id}:{recipient}:wf",
        event_id=event_id,
        workflow="wf",
        recipient=recipient,
        lane=TX,
        created_at=1.0,
        state=RunState.DONE,
        outcome="sent",
    )
    return RunWrite(run)


async def store(stores: Stores, via: str, job: NewJob) -> None:
    """Store `job` through one of the three ways a job is written."""
    if via == "enqueue":
        assert job.handoff is not None
        assert await stores.jobs.enqueue(job) == job.handoff.job_id
    elif via == "commit":
        assert job.handoff is not None
        assert await stores.runs.commit([run_write()], [job]) == {job.handoff.job_id}
    else:
        _, created = await stores.events.append(new_event("k-" + via), then=job)
        assert created


@pytest.mark.parametrize("via", ["enqueue", "commit", "append"])
async def test_a_handed_off_job_is_stored_running_under_its_lease(stores: Stores, via: str) -> None:
    h = handoff(30.0)
    now = stores.clock.now()
    await store(stores, via, NewJob(kind="send", payload={"to": "u1"}, handoff=h))
    job = await stores.jobs.get(h.job_id)
    assert job is not None
    assert job.id == h.job_id and job.kind == "send" and job.payload == {"to": "u1"}
    assert job.state == JobState.RUNNING and job.attempts == 1
    assert job.lease_token == h.lease_token and job.locked_until == now + 30.0
    assert job.lane == TX and job.run_at == now and job.created_at == now
    depth = await stores.jobs.depth()
    assert depth.running.get("transactional") == 1 and not depth.queued.get("transactional")

    assert await stores.jobs.claim("w", BOTH, 10, 30.0) == []  # the lease holds
    stores.clock.advance(29.9)
    assert await stores.jobs.claim("w", BOTH, 10, 30.0) == []
    await stores.jobs.extend(h.job_id, h.lease_token, 30.0)  # the handoff token holds it
    stores.clock.advance(29.9)
    assert await stores.jobs.claim("w", BOTH, 10, 30.0) == []
    await stores.jobs.complete(h.job_id, h.lease_token)
    done = await stores.jobs.get(h.job_id)
    assert done is not None and done.state == JobState.DONE and done.attempts == 1
    stores.clock.advance(60)
    assert await stores.jobs.claim("w", BOTH, 10, 30.0) == []  # done: never handed out again


async def test_a_handed_off_job_whose_lease_expires_is_claimed_again(stores: Stores) -> None:
    h = handoff(30.0)
    await stores.jobs.enqueue(NewJob(kind="send", payload={}, handoff=h))
    stores.clock.advance(29.9)
    assert await stores.jobs.claim("w", BOTH, 10, 30.0) == []
    stores.clock.advance(0.2)  # the process that held it died: its lease lapses
    [claimed] = await stores.jobs.claim("w", BOTH, 10, 30.0)
    assert claimed.id == h.job_id and claimed.attempts == 2
    assert claimed.lease_token and claimed.lease_token != h.lease_token
    assert claimed.locked_until == stores.clock.now() + 30.0
    with pytest.raises(LeaseLost):
        await stores.jobs.complete(h.job_id, h.lease_token)
    with pytest.raises(LeaseLost):
        await stores.jobs.retry(h.job_id, h.lease_token, stores.clock.now(), "x")
    with pytest.raises(LeaseLost):
        await stores.jobs.extend(h.job_id, h.lease_token, 30.0)
    await stores.jobs.complete(h.job_id, claimed.lease_token)
    done = await stores.jobs.get(h.job_id)
    assert done is not None and done.state == JobState.DONE and done.attempts == 2


async def test_a_handed_off_job_can_be_retried_and_is_then_claimed_as_queued(
    stores: Stores,
) -> None:
    h = handoff(30.0)
    await stores.jobs.enqueue(NewJob(kind="send", payload={}, handoff=h))
    await stores.jobs.retry(h.job_id, h.lease_token, stores.clock.now() + 5, "smtp down")
    job = await stores.jobs.get(h.job_id)
    assert job is not None and job.state == JobState.QUEUED and job.last_error == "smtp down"
    assert await stores.jobs.claim("w", BOTH, 10, 30.0) == []
    stores.clock.advance(5)
    [claimed] = await stores.jobs.claim("w", BOTH, 10, 30.0)
    assert claimed.id == h.job_id and claimed.attempts == 2


async def test_commit_returns_exactly_the_handed_off_jobs_it_stored(stores: Stores) -> None:
    existing = await stores.jobs.enqueue(
        NewJob(kind="deliver", payload={"n": 0}, dedupe_key="taken", run_at=stores.clock.now() + 60)
    )
    fresh, duplicate = handoff(), handoff()
    stored = await stores.runs.commit(
        [run_write()],
        [
            NewJob(kind="deliver", payload={"n": 1}, dedupe_key="queued"),
            NewJob(kind="deliver", payload={"n": 2}, dedupe_key="fresh", handoff=fresh),
            NewJob(kind="deliver", payload={"n": 3}, dedupe_key="taken", handoff=duplicate),
        ],
    )
    assert stored == {fresh.job_id}

    assert await stores.jobs.get(duplicate.job_id) is None  # not stored under its hand-off
    kept = await stores.jobs.get(existing)
    assert kept is not None and kept.payload == {"n": 0}
    assert kept.state == JobState.QUEUED and kept.attempts == 0 and kept.lease_token is None

    handed = await stores.jobs.get(fresh.job_id)
    assert handed is not None and handed.payload == {"n": 2}
    assert handed.state == JobState.RUNNING and handed.lease_token == fresh.lease_token

    # Only the plain job is claimable: the hand-off is leased, the duplicate's key not yet due.
    claimed = await stores.jobs.claim("w", BOTH, 10, 30.0)
    assert [j.payload for j in claimed] == [{"n": 1}]
    assert claimed[0].id not in {fresh.job_id, duplicate.job_id}
    depth = await stores.jobs.depth()
    assert depth.running == {"transactional": 2} and depth.queued == {"transactional": 1}


async def test_commit_without_handed_off_jobs_returns_an_empty_set(stores: Stores) -> None:
    assert await stores.runs.commit([run_write()]) == set()
    assert await stores.runs.commit([run_write("e2")], [NewJob(kind="k", payload={})]) == set()
    assert len(await stores.jobs.claim("w", BOTH, 10, 30.0)) == 1


async def test_commit_stores_several_hand_offs_with_their_own_leases(stores: Stores) -> None:
    a, b = handoff(30.0), handoff(10.0)
    stored = await stores.runs.commit(
        [run_write()],
        [
            NewJob(kind="deliver", payload={"n": 1}, handoff=a),
            NewJob(kind="deliver", payload={"n": 2}, lane=BULK, handoff=b),
        ],
    )
    assert stored == {a.job_id, b.job_id}
    now = stores.clock.now()
    ja, jb = await stores.jobs.get(a.job_id), await stores.jobs.get(b.job_id)
    assert ja is not None and jb is not None
    assert (ja.lease_token, ja.locked_until, ja.lane) == (a.lease_token, now + 30.0, TX)
    assert (jb.lease_token, jb.locked_until, jb.lane) == (b.lease_token, now + 10.0, BULK)
    stores.clock.advance(10)
    assert [j.id for j in await stores.jobs.claim("w", BOTH, 10, 30.0)] == [b.job_id]


async def test_the_outbox_stores_a_handed_off_job_once(stores: Stores) -> None:
    h = handoff(30.0)
    e = new_event("outbox")
    job = NewJob(kind="event.dispatch", payload={"event_id": e.id}, dedupe_key=f"d:{e.id}")
    record, created = await stores.events.append(e, then=dataclasses.replace(job, handoff=h))
    assert created and record.id == e.id
    stored = await stores.jobs.get(h.job_id)
    assert stored is not None and stored.payload == {"event_id": e.id}
    assert stored.state == JobState.RUNNING and stored.attempts == 1
    assert stored.lease_token == h.lease_token
    assert stored.locked_until == stores.clock.now() + 30.0

    stores.clock.advance(1)
    replay, again = new_event("outbox"), handoff(30.0)
    replay_job = NewJob(kind="event.dispatch", payload={"event_id": replay.id}, handoff=again)
    original, created = await stores.events.append(replay, then=replay_job)
    assert not created and original.id == e.id
    assert await stores.jobs.get(again.job_id) is None  # the replay stored nothing
    assert await stores.jobs.get(h.job_id) == stored  # and left the original alone
    depth = await stores.jobs.depth()
    assert depth.running == {"transactional": 1} and not depth.queued
