from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any

import pytest

from tests.contract.conftest import Stores
from tidings.errors import Conflict, IdempotencyConflict, NotFound
from tidings.ports.campaigns import Campaign, CampaignState
from tidings.ports.notify import Run, RunState, RunWrite
from tidings.types import EventRecord, EventState, NewEvent, NewJob, Outcome, Priority

DAY = 86400.0


def new_event(key: str = "k1", body_hash: str = "h1", **kw: object) -> NewEvent:
    fields: dict[str, object] = {
        "id": str(uuid.uuid4()),
        "type": "order.shipped",
        "idempotency_key": key,
        "body_hash": body_hash,
        "actor": "shop",
        "recipients": ("u1", "u2"),
        "topic": None,
        "channels": ("orders:u1",),
        "payload": {"order": 42, "items": ["a", {"b": None}]},
        "priority": Priority.TRANSACTIONAL,
        "send_at": None,
    }
    fields.update(kw)
    return NewEvent(**fields)  # type: ignore[arg-type]


async def test_append_stores_and_returns_the_event(stores: Stores) -> None:
    e = new_event(send_at=stores.clock.now() + 60, priority=Priority.BULK)
    record, created = await stores.events.append(e)
    assert created
    assert record.id == e.id and record.state == EventState.ACCEPTED
    assert record.created_at == stores.clock.now()
    got = await stores.events.get(e.id)
    assert got == record
    assert got.payload == {"order": 42, "items": ["a", {"b": None}]}
    assert got.recipients == ("u1", "u2") and got.priority == Priority.BULK
    assert await stores.events.get("missing") is None


async def test_same_key_same_body_returns_the_original(stores: Stores) -> None:
    first, _ = await stores.events.append(new_event())
    stores.clock.advance(5)
    again, created = await stores.events.append(new_event())
    assert not created
    assert again.id == first.id and again.created_at == first.created_at


async def test_same_key_other_body_conflicts(stores: Stores) -> None:
    await stores.events.append(new_event())
    with pytest.raises(IdempotencyConflict):
        await stores.events.append(new_event(body_hash="h2"))
    assert len(await stores.events.list_in_state(EventState.ACCEPTED, 10)) == 1


async def test_concurrent_appends_of_one_key_store_exactly_one(stores: Stores) -> None:
    results = await asyncio.gather(*(stores.events.append(new_event("burst")) for _ in range(50)))
    assert sum(created for _, created in results) == 1
    assert len({r.id for r, _ in results}) == 1
    assert len(await stores.events.list_in_state(EventState.ACCEPTED, 100)) == 1


async def test_outcomes_are_kept_in_order(stores: Stores) -> None:
    record, _ = await stores.events.append(new_event())
    for i in range(5):
        stores.clock.advance(1)
        await stores.events.add_outcome(
            record.id, Outcome(kind="channel", target=f"c{i}", status="published", detail=str(i))
        )
    got = await stores.events.get(record.id)
    assert [o.target for o in got.outcomes] == [f"c{i}" for i in range(5)]
    assert got.outcomes[0].at == record.created_at + 1  # stamped by the store's clock
    with pytest.raises(NotFound):
        await stores.events.add_outcome("missing", Outcome("k", "t", "s"))


async def test_states_and_listing(stores: Stores) -> None:
    ids = []
    for i in range(4):
        stores.clock.advance(1)
        record, _ = await stores.events.append(new_event(key=f"k{i}"))
        ids.append(record.id)
    await stores.events.set_state(ids[1], EventState.DISPATCHED)
    await stores.events.set_state(ids[2], EventState.FAILED)
    accepted = await stores.events.list_in_state(EventState.ACCEPTED, 10)
    assert [r.id for r in accepted] == [ids[0], ids[3]]  # oldest first
    assert [r.id for r in await stores.events.list_in_state(EventState.ACCEPTED, 1)] == [ids[0]]
    assert (await stores.events.get(ids[1])).state == EventState.DISPATCHED
    with pytest.raises(NotFound):
        await stores.events.set_state("missing", EventState.DISPATCHED)


async def test_concurrent_appends_with_two_bodies_store_one(stores: Stores) -> None:
    attempts = [new_event("contested", body_hash=f"h{i % 2}") for i in range(50)]
    results = await asyncio.gather(
        *(stores.events.append(e) for e in attempts), return_exceptions=True
    )
    stored = [r for r in results if not isinstance(r, BaseException)]
    assert sum(created for _, created in stored) == 1
    winner = next(r for r, created in stored if created)
    for attempt, result in zip(attempts, results, strict=True):
        if attempt.body_hash == winner.body_hash:
            assert not isinstance(result, BaseException) and result[0] == winner
        else:
            assert isinstance(result, IdempotencyConflict)
    assert len(await stores.events.list_in_state(EventState.ACCEPTED, 100)) == 1


async def test_replay_returns_outcomes_and_state_of_the_original(stores: Stores) -> None:
    first, _ = await stores.events.append(new_event())
    await stores.events.add_outcome(first.id, Outcome("channel", "orders:u1", "published"))
    await stores.events.set_state(first.id, EventState.DISPATCHED)
    again, created = await stores.events.append(new_event())
    assert not created
    assert again.state == EventState.DISPATCHED
    assert [o.target for o in again.outcomes] == ["orders:u1"]


async def test_reusing_an_event_id_with_another_key_conflicts(stores: Stores) -> None:
    first, _ = await stores.events.append(new_event("a"))
    with pytest.raises(Conflict):
        await stores.events.append(new_event("b", id=first.id))
    assert (await stores.events.get(first.id)) == first


async def test_optional_fields_round_trip(stores: Stores) -> None:
    e = new_event(actor=None, topic="orders", recipients=(), channels=(), payload={})
    record, _ = await stores.events.append(e)
    got = await stores.events.get(e.id)
    assert got == record
    assert (got.actor, got.topic, got.recipients, got.channels, got.payload) == (
        None,
        "orders",
        (),
        (),
        {},
    )
    assert got.send_at is None and got.outcomes == ()
    assert isinstance(got.created_at, float)


async def test_outcome_keeps_its_own_time_and_detail(stores: Stores) -> None:
    record, _ = await stores.events.append(new_event())
    await stores.events.add_outcome(
        record.id, Outcome("delivery", "email:u1", "failed", detail="550 mailbox", at=123.5)
    )
    [outcome] = (await stores.events.get(record.id)).outcomes
    assert outcome == Outcome("delivery", "email:u1", "failed", detail="550 mailbox", at=123.5)


async def test_outcomes_stay_with_their_event(stores: Stores) -> None:
    a, _ = await stores.events.append(new_event("a"))
    b, _ = await stores.events.append(new_event("b"))
    await stores.events.add_outcome(a.id, Outcome("channel", "x", "published"))
    await stores.events.add_outcome(b.id, Outcome("channel", "y", "published"))
    await stores.events.add_outcome(a.id, Outcome("channel", "z", "published"))
    assert [o.target for o in (await stores.events.get(a.id)).outcomes] == ["x", "z"]
    assert [o.target for o in (await stores.events.get(b.id)).outcomes] == ["y"]


async def test_listed_events_carry_their_outcomes(stores: Stores) -> None:
    a, _ = await stores.events.append(new_event("a"))
    stores.clock.advance(1)
    b, _ = await stores.events.append(new_event("b"))
    await stores.events.add_outcome(b.id, Outcome("channel", "x", "published"))
    await stores.events.add_outcome(b.id, Outcome("job", "y", "enqueued"))
    listed = await stores.events.list_in_state(EventState.ACCEPTED, 10)
    assert listed == [await stores.events.get(a.id), await stores.events.get(b.id)]
    assert [o.target for o in listed[1].outcomes] == ["x", "y"]
    assert await stores.events.list_in_state(EventState.FAILED, 10) == []


async def test_the_outbox_job_is_written_with_a_new_event_only(stores: Stores) -> None:
    def job(event_id: str) -> NewJob:
        return NewJob(kind="event.dispatch", payload={"event_id": event_id}, dedupe_key=event_id)

    e = new_event("outbox")
    record, created = await stores.events.append(e, then=job(e.id))
    assert created
    replay = new_event("outbox")
    _, created = await stores.events.append(replay, then=job(replay.id))
    assert not created
    with pytest.raises(IdempotencyConflict):
        other = new_event("outbox", body_hash="h2")
        await stores.events.append(other, then=job(other.id))
    claimed = await stores.jobs.claim("w", [Priority.TRANSACTIONAL, Priority.BULK], 10, 30.0)
    assert [j.payload for j in claimed] == [{"event_id": record.id}]  # one job, the original's


async def test_concurrent_appends_with_the_outbox_store_one_event_and_one_job(
    stores: Stores,
) -> None:
    events = [new_event("race") for _ in range(30)]
    results = await asyncio.gather(
        *(
            stores.events.append(
                e, then=NewJob(kind="event.dispatch", payload={"event_id": e.id}, dedupe_key=e.id)
            )
            for e in events
        )
    )
    assert sum(created for _, created in results) == 1
    claimed = await stores.jobs.claim("w", [Priority.TRANSACTIONAL], 100, 30.0)
    assert len(claimed) == 1 and claimed[0].payload == {"event_id": results[0][0].id}


async def test_transition_is_a_compare_and_set(stores: Stores) -> None:
    record, _ = await stores.events.append(new_event("cas"))
    assert await stores.events.transition(record.id, EventState.ACCEPTED, EventState.CANCELLED)
    assert not await stores.events.transition(record.id, EventState.ACCEPTED, EventState.DISPATCHED)
    got = await stores.events.get(record.id)
    assert got is not None and got.state == EventState.CANCELLED
    with pytest.raises(NotFound):
        await stores.events.transition("missing", EventState.ACCEPTED, EventState.CANCELLED)
    other, _ = await stores.events.append(new_event("cas-race"))
    results = await asyncio.gather(
        stores.events.transition(other.id, EventState.ACCEPTED, EventState.CANCELLED),
        stores.events.transition(other.id, EventState.ACCEPTED, EventState.DISPATCHED),
    )
    assert sorted(results) == [False, True]  # exactly one wins


async def test_get_by_key_finds_the_event_stored_under_it(stores: Stores) -> None:
    a, _ = await stores.events.append(new_event("order-42"))
    b, _ = await stores.events.append(new_event("order-43", body_hash="h2"))
    await stores.events.add_outcome(a.id, Outcome("channel", "orders:u1", "published"))
    await stores.events.set_state(a.id, EventState.DISPATCHED)
    got = await stores.events.get_by_key("order-42")
    assert got == await stores.events.get(a.id)
    assert got is not None and got.id == a.id and got.state == EventState.DISPATCHED
    assert [o.target for o in got.outcomes] == ["orders:u1"]
    other = await stores.events.get_by_key("order-43")
    assert other is not None and other.id == b.id and other.body_hash == "h2"
    assert await stores.events.get_by_key("order-44") is None
    assert await stores.events.get_by_key(a.id) is None  # an event id is not a key
    assert await stores.events.get_by_key("ORDER-42") is None  # keys match exactly


async def test_a_replay_leaves_the_key_on_the_original(stores: Stores) -> None:
    first, _ = await stores.events.append(new_event("once"))
    await stores.events.append(new_event("once"))
    with pytest.raises(IdempotencyConflict):
        await stores.events.append(new_event("once", body_hash="h2"))
    got = await stores.events.get_by_key("once")
    assert got is not None and got.id == first.id and got.body_hash == "h1"


# -- retention -------------------------------------------------------------------------------


def linked(stores: Stores) -> Any:
    """The event store, seeing the runs and campaigns that refer to events: the SQL stores
    share one database, the memory one asks the other memory stores."""
    if stores.backend == "memory":

        async def referenced(event_id: str) -> bool:
            if await stores.runs.count_runs(event_id):
                return True
            campaigns = await stores.campaigns.page(after=None, limit=1_000_000)
            return any(c.event_id == event_id for c in campaigns)

        stores.events.referenced = referenced
    return stores.events


async def stored(stores: Stores, key: str, state: EventState, **kw: Any) -> EventRecord:
    record, _ = await stores.events.append(new_event(key, **kw))
    if state is not EventState.ACCEPTED:
        await stores.events.set_state(record.id, state)
    return dataclasses.replace(record, state=state)


async def test_prune_deletes_old_settled_events_that_nothing_refers_to(stores: Stores) -> None:
    events = linked(stores)
    t = stores.clock.now()
    dispatched = await stored(stores, "dispatched", EventState.DISPATCHED)
    await events.add_outcome(dispatched.id, Outcome("channel", "orders:u1", "published"))
    failed = await stored(stores, "failed", EventState.FAILED)
    cancelled = await stored(stores, "cancelled", EventState.CANCELLED)
    accepted = await stored(stores, "accepted", EventState.ACCEPTED)  # its dispatch is to run
    scheduled = await stored(stores, "scheduled", EventState.CANCELLED, send_at=t + 10 * DAY)
    with_run = await stored(stores, "with-run", EventState.DISPATCHED)
    r = Run("r1", with_run.id, "wf", "u1", Priority.TRANSACTIONAL, created_at=t)
    await stores.runs.commit([RunWrite(dataclasses.replace(r, state=RunState.DONE))])
    of_campaign = await stored(stores, "campaign:c1", EventState.DISPATCHED)
    campaign = Campaign(
        id="c1",
        workflow="wf",
        topic="news",
        payload={},
        rate=10.0,
        state=CampaignState.SCHEDULED,
        event_id=of_campaign.id,
        created_at=t,
        updated_at=t,
        start_at=t + 90 * DAY,
    )
    await stores.campaigns.create(campaign, then=NewJob("campaign.tick", {"campaign": "c1"}))
    stores.clock.advance(7 * DAY)
    recent = await stored(stores, "recent", EventState.DISPATCHED)
    cutoff = t + 5 * DAY

    assert await events.prune(cutoff, 100) == 3
    assert await events.prune(cutoff, 100) == 0
    for gone in (dispatched, failed, cancelled):
        assert await events.get(gone.id) is None
        assert await events.get_by_key(gone.idempotency_key) is None
    for kept in (accepted, scheduled, with_run, of_campaign, recent):
        got = await events.get(kept.id)
        assert got is not None and got.state is kept.state
        assert await events.get_by_key(kept.idempotency_key) == got
    # The key is free again: the same request stores a new event, without the old outcomes.
    again, created = await events.append(new_event("dispatched", id=dispatched.id))
    assert created and again.outcomes == ()
    got = await events.get(dispatched.id)
    assert got is not None and got.outcomes == () and got.state is EventState.ACCEPTED
    # Once its runs are gone, the event goes too.
    assert await stores.runs.prune(cutoff, 100) == 1
    assert await events.prune(cutoff, 100) == 1
    assert await events.get(with_run.id) is None
    assert await events.get(of_campaign.id) is not None


async def test_prune_deletes_at_most_limit_events_per_call(stores: Stores) -> None:
    events = linked(stores)
    for i in range(5):
        await stored(stores, f"k{i}", EventState.DISPATCHED)
    stores.clock.advance(DAY)
    before = stores.clock.now()
    assert [await events.prune(before, 2) for _ in range(4)] == [2, 2, 1, 0]
    assert await events.list_in_state(EventState.DISPATCHED, 10) == []
