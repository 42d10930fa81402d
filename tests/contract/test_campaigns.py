"""Contract of the campaign store on memory, SQLite and PostgreSQL: the row and its jobs are
written together, and `advance`/`transition` are compare-and-sets."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from tests.contract.conftest import Stores
from tidings.errors import Conflict, NotFound
from tidings.ports.campaigns import Campaign, CampaignState
from tidings.types import NewJob, Priority

BOTH = [Priority.TRANSACTIONAL, Priority.BULK]
RUNNING = CampaignState.RUNNING


def campaign(cid: str = "c1", at: float = 1.0) -> Campaign:
    return Campaign(
        id=cid,
        workflow="promo",
        topic="all",
        payload={"text": "sale", "n": [1, 2]},
        rate=100.0,
        state=RUNNING,
        event_id=f"e-{cid}",
        created_at=at,
        updated_at=at,
    )


def tick(cid: str, n: int) -> NewJob:
    return NewJob(
        "campaign.tick",
        {"campaign": cid, "tick": n},
        lane=Priority.BULK,
        dedupe_key=f"campaign:{cid}:tick:{n}",
    )


def batch(cid: str, first: str) -> NewJob:
    return NewJob(
        "notify.batch",
        {"recipients": [first]},
        lane=Priority.BULK,
        dedupe_key=f"campaign:{cid}:{first}",
    )


async def kinds(stores: Stores) -> list[str]:
    claimed = await stores.jobs.claim("w", BOTH, 100, 30.0)
    return sorted(j.kind for j in claimed)


async def test_create_stores_the_campaign_with_its_first_tick(stores: Stores) -> None:
    created = await stores.campaigns.create(campaign(), then=tick("c1", 0))
    assert created == campaign()
    assert await stores.campaigns.get("c1") == created
    with pytest.raises(Conflict) as exc:
        await stores.campaigns.create(campaign(), then=tick("c1", 9))
    assert exc.value.field == "id"
    [job] = await stores.jobs.claim("w", BOTH, 10, 30.0)
    assert (job.kind, job.payload, job.lane) == (
        "campaign.tick",
        {"campaign": "c1", "tick": 0},
        Priority.BULK,
    )
    with pytest.raises(NotFound):
        await stores.campaigns.get("nope")


async def test_a_campaign_to_a_segment_paced_per_channel_round_trips(stores: Stores) -> None:
    c = dataclasses.replace(
        campaign("seg"),
        topic=None,
        rate=None,
        segment="de-pro",
        filter={"subscriber.locale": "de", "subscriber.data.orders": {"gte": 3}},
        rates={"email": 100.0, "in_app": 5000.0},
    )
    assert await stores.campaigns.create(c, then=tick("seg", 0)) == c
    stored = await stores.campaigns.get("seg")
    assert stored == c and stored.messages == {}
    assert await stores.campaigns.advance(
        "seg",
        expect=RUNNING,
        tick=0,
        cursor="u9",
        enqueued=50,
        state=RUNNING,
        jobs=[],
        at=2.0,
        messages={"email": 100, "in_app": 50},
    )
    assert (await stores.campaigns.get("seg")).messages == {"email": 100, "in_app": 50}
    assert await stores.campaigns.advance(
        "seg",
        expect=RUNNING,
        tick=1,
        cursor="v2",
        enqueued=60,
        state=RUNNING,
        jobs=[],
        at=3.0,
        messages={"email": 120, "in_app": 60, "sms": 0},
    )
    after = await stores.campaigns.get("seg")
    assert (after.ticks, after.messages) == (2, {"email": 120, "in_app": 60, "sms": 0})
    assert (after.segment, after.filter, after.rates) == (c.segment, c.filter, c.rates)


async def test_page_lists_by_id(stores: Stores) -> None:
    for cid in ("c3", "c1", "c2"):
        await stores.campaigns.create(campaign(cid), then=tick(cid, 0))
    assert [c.id for c in await stores.campaigns.page(after=None, limit=2)] == ["c1", "c2"]
    assert [c.id for c in await stores.campaigns.page(after="c2", limit=2)] == ["c3"]


async def test_advance_writes_the_row_and_its_jobs_once(stores: Stores) -> None:
    await stores.campaigns.create(campaign(), then=tick("c1", 0))
    await stores.jobs.claim("w", BOTH, 10, 30.0)
    jobs = [batch("c1", "a"), batch("c1", "c"), tick("c1", 1)]
    args = dict(
        expect=RUNNING,
        tick=0,
        cursor="d",
        enqueued=4,
        state=RUNNING,
        jobs=jobs,
        at=5.0,
        messages={},
    )
    assert await stores.campaigns.advance("c1", **args, total=10, started_at=5.0)
    stored = await stores.campaigns.get("c1")
    assert (stored.ticks, stored.cursor, stored.enqueued, stored.total) == (1, "d", 4, 10)
    assert (stored.started_at, stored.updated_at, stored.finished_at) == (5.0, 5.0, None)
    # The same tick again (a replay): refused, nothing written, nothing enqueued.
    assert not await stores.campaigns.advance("c1", **args)
    assert await stores.campaigns.get("c1") == stored
    assert await kinds(stores) == ["campaign.tick", "notify.batch", "notify.batch"]
    # The next tick completes it; a job with a dedupe key seen before is a no-op.
    assert await stores.campaigns.advance(
        "c1",
        expect=RUNNING,
        tick=1,
        cursor="e",
        enqueued=5,
        state=CampaignState.COMPLETED,
        jobs=[batch("c1", "a"), batch("c1", "e")],
        at=6.0,
        messages={},
        finished_at=6.0,
    )
    done = await stores.campaigns.get("c1")
    assert (done.state, done.ticks, done.total, done.started_at, done.finished_at) == (
        CampaignState.COMPLETED,
        2,
        10,
        5.0,
        6.0,
    )
    assert await kinds(stores) == ["notify.batch"]


async def test_advance_refuses_a_changed_state(stores: Stores) -> None:
    await stores.campaigns.create(campaign(), then=tick("c1", 0))
    paused = await stores.campaigns.transition(
        "c1", expect={RUNNING}, state=CampaignState.PAUSED, at=2.0
    )
    assert paused is not None and paused.state is CampaignState.PAUSED
    assert not await stores.campaigns.advance(
        "c1",
        expect=RUNNING,
        tick=0,
        cursor="a",
        enqueued=1,
        state=RUNNING,
        jobs=[batch("c1", "a")],
        at=3.0,
        messages={"in_app": 1},
    )
    stored = await stores.campaigns.get("c1")
    assert (stored.enqueued, stored.messages) == (0, {})
    assert await kinds(stores) == ["campaign.tick"]  # the first tick only


async def test_concurrent_advances_of_one_tick_write_once(stores: Stores) -> None:
    await stores.campaigns.create(campaign(), then=tick("c1", 0))
    results = await asyncio.gather(
        *(
            stores.campaigns.advance(
                "c1",
                expect=RUNNING,
                tick=0,
                cursor=f"m{i}",
                enqueued=1,
                state=RUNNING,
                jobs=[batch("c1", f"m{i}")],
                at=2.0,
                messages={"in_app": 1},
            )
            for i in range(4)
        )
    )
    assert sorted(results) == [False, False, False, True]
    assert (await kinds(stores)).count("notify.batch") == 1


async def test_transition_is_a_compare_and_set_with_its_jobs(stores: Stores) -> None:
    await stores.campaigns.create(campaign(), then=tick("c1", 0))
    await stores.jobs.claim("w", BOTH, 10, 30.0)
    await stores.campaigns.transition("c1", expect={RUNNING}, state=CampaignState.PAUSED, at=2.0)
    resume = NewJob("campaign.tick", {"campaign": "c1"}, dedupe_key="campaign:c1:resume:1")
    resumed = await stores.campaigns.transition(
        "c1",
        expect={CampaignState.PAUSED},
        state=RUNNING,
        at=3.0,
        resumes=1,
        jobs=[resume],
    )
    assert resumed == dataclasses.replace(campaign(), state=RUNNING, resumes=1, updated_at=3.0)
    # Not in an expected state: nothing written, nothing enqueued.
    assert (
        await stores.campaigns.transition(
            "c1",
            expect={CampaignState.PAUSED},
            state=RUNNING,
            at=4.0,
            resumes=2,
            jobs=[NewJob("campaign.tick", {}, dedupe_key="campaign:c1:resume:2")],
        )
        is None
    )
    assert (await stores.campaigns.get("c1")).resumes == 1
    assert await kinds(stores) == ["campaign.tick"]
    cancelled = await stores.campaigns.transition(
        "c1", expect={RUNNING}, state=CampaignState.CANCELLED, at=5.0, finished_at=5.0
    )
    assert cancelled is not None and cancelled.finished_at == 5.0
    with pytest.raises(NotFound):
        await stores.campaigns.transition("nope", expect={RUNNING}, state=RUNNING, at=1.0)
