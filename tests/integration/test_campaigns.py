"""Campaigns end to end on the embedded runtime (SQLite) with a manual clock: the workers run
due jobs with `run_once`, the clock moves one second at a time, so the tick schedule is the
only thing that paces the send.

The 1,000 subscribers u00000..u00999 have profiles derived from their number `i`: locale `de`
when i % 4 == 0 (else `en`), an email address when i is even, and data
`{"plan": "pro" if i % 5 == 0 else "free", "orders": i % 10, "tags": ["vip"] if i % 7 == 0
else []}`."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select, update

from tests.api.conftest import make_settings
from tidings.adapters.clock import ManualClock
from tidings.adapters.sql.tables import inbox_items, jobs, subscribers, topic_members, topics
from tidings.config import NotifySettings, WorkerSettings
from tidings.errors import InvalidInput, NotFound
from tidings.ports.campaigns import Campaign, CampaignState
from tidings.services import campaigns as campaigns_module
from tidings.services import segments as segments_module
from tidings.services.campaigns import TICK_JOB, CampaignService
from tidings.services.segments import SegmentService
from tidings.types import Job, JobState, Priority
from tidings.wiring import Runtime, build_runtime, migrate

WORKFLOWS = """
workflows:
  - key: promo
    steps:
      - id: inapp
        type: in_app
        content: {title: "Sale", body: "{{ payload.text }}"}
  - key: mixed
    steps:
      - id: inapp
        type: in_app
        content: {title: "Sale", body: "{{ payload.text }}"}
      - id: mail
        type: email
        content: {subject: "Sale", text: "{{ payload.text }}"}
      - id: reminder
        type: email
        content: {subject: "Still on", text: "{{ payload.text }}"}
"""
MEMBERS = 1000


def profile(i: int) -> dict[str, Any]:
    return {
        "locale": "de" if i % 4 == 0 else "en",
        "email": f"u{i}@example.com" if i % 2 == 0 else None,
        "data": {
            "plan": "pro" if i % 5 == 0 else "free",
            "orders": i % 10,
            "tags": ["vip"] if i % 7 == 0 else [],
        },
    }


@dataclass
class Env:
    runtime: Runtime
    clock: ManualClock

    @property
    def campaigns(self) -> CampaignService:
        found = self.runtime.services.campaigns
        assert found is not None
        return found

    @property
    def segments(self) -> SegmentService:
        found = self.runtime.services.segments
        assert found is not None
        return found

    async def recipients(self) -> list[str]:
        """Subscribers with an in-app item, each as often as they have one."""
        async with self.runtime.engine.connect() as conn:
            rows = await conn.execute(
                select(inbox_items.c.subscriber_id).order_by(inbox_items.c.subscriber_id)
            )
            return [r[0] for r in rows]

    async def drain(self) -> int:
        """Run every due job (and the jobs they make due) until none is left."""
        total = 0
        for _ in range(200):
            ran = await self.runtime.pools[-1].run_once(500)
            total += ran
            if not ran:
                return total
        raise AssertionError("jobs keep coming")

    async def seconds(self, n: int) -> None:
        """Run what is due, then let one second pass; n times."""
        for _ in range(n):
            await self.drain()
            self.clock.advance(1.0)

    async def items(self) -> tuple[int, int]:
        """(in-app items, distinct recipients among them)."""
        async with self.runtime.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(func.count(), func.count(func.distinct(inbox_items.c.subscriber_id)))
                )
            ).one()
        return int(row[0]), int(row[1])

    async def start(self, rate: float = 100.0) -> Campaign:
        return await self.campaigns.create(
            workflow="promo", topic="all", payload={"text": "50% off"}, rate=rate
        )


def tick_job(c: Campaign, n: int, at: float) -> Job:
    """A `campaign.tick` job for tick `n`, as a worker would hold it."""
    return Job(
        id=f"replayed-{n}",
        kind=TICK_JOB,
        payload={"campaign": c.id, "tick": n, "at": at},
        lane=Priority.BULK,
        state=JobState.RUNNING,
        run_at=at,
        attempts=1,
        max_attempts=10,
        dedupe_key=None,
        lease_token="t",
        locked_until=None,
        last_error=None,
        created_at=at,
    )


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    (tmp_path / "workflows.yaml").write_text(WORKFLOWS)
    clock = ManualClock()
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path}/campaigns.db",
        notify=NotifySettings(workflows=[str(tmp_path / "workflows.yaml")]),
    )
    settings.worker = WorkerSettings(enabled=False, lease_seconds=30.0)
    migrate(settings)
    runtime = build_runtime(settings, clock=clock)
    now = clock.now()
    ids = [f"u{i:05d}" for i in range(MEMBERS)]
    async with runtime.engine.begin() as conn:
        await conn.execute(insert(topics), [{"key": "all", "name": "All", "created_at": now}])
        await conn.execute(
            insert(subscribers),
            [
                {"id": sid, **profile(i), "created_at": now, "updated_at": now}
                for i, sid in enumerate(ids)  # phone and timezone stay NULL
            ],
        )
        await conn.execute(
            insert(topic_members),
            [{"topic_key": "all", "subscriber_id": i, "created_at": now} for i in ids],
        )
    await runtime.start()
    try:
        yield Env(runtime, clock)
    finally:
        await runtime.stop()


async def test_a_campaign_is_paced_by_its_rate_and_reaches_everyone_once(env: Env) -> None:
    c = await env.start(rate=100)
    assert c.state is CampaignState.RUNNING
    await env.seconds(5)
    assert await env.items() == (500, 500)
    p = await env.campaigns.progress(c.id)
    assert (p.total, p.campaign.enqueued, p.delivered) == (MEMBERS, 500, 500)
    assert p.eta_seconds == pytest.approx(5.0)
    await env.seconds(5)
    assert await env.items() == (MEMBERS, MEMBERS)
    await env.seconds(1)  # the tick that finds no member left
    p = await env.campaigns.progress(c.id)
    assert p.campaign.state is CampaignState.COMPLETED
    assert (p.campaign.enqueued, p.delivered, p.runs) == (MEMBERS, MEMBERS, {"done": MEMBERS})
    assert p.achieved_rate == pytest.approx(100.0)
    assert p.eta_seconds is None
    await env.seconds(3)
    assert await env.items() == (MEMBERS, MEMBERS)


async def test_pause_stops_and_resume_goes_on_from_the_cursor(env: Env) -> None:
    c = await env.start(rate=100)
    await env.seconds(3)
    assert await env.items() == (300, 300)
    paused = await env.campaigns.pause(c.id)
    assert paused.state is CampaignState.PAUSED
    assert (await env.campaigns.pause(c.id)).state is CampaignState.PAUSED  # a no-op
    await env.seconds(4)
    assert await env.items() == (300, 300)
    resumed = await env.campaigns.resume(c.id)
    assert resumed.state is CampaignState.RUNNING and resumed.cursor == "u00299"
    await env.seconds(3)
    assert await env.items() == (600, 600)
    # paused and resumed again before the pending tick ran: still one tick per second
    await env.campaigns.pause(c.id)
    await env.campaigns.resume(c.id)
    await env.seconds(5)
    assert await env.items() == (MEMBERS, MEMBERS)
    await env.seconds(1)
    assert (await env.campaigns.get(c.id)).state is CampaignState.COMPLETED


async def test_cancel_stops_and_is_final(env: Env) -> None:
    c = await env.start(rate=100)
    await env.seconds(2)
    cancelled = await env.campaigns.cancel(c.id)
    assert cancelled.state is CampaignState.CANCELLED and cancelled.finished_at is not None
    await env.seconds(5)
    assert await env.items() == (200, 200)
    p = await env.campaigns.progress(c.id)
    assert p.eta_seconds is None and p.campaign.enqueued == 200


async def test_a_repeated_tick_hands_out_nothing_twice(env: Env) -> None:
    c = await env.start(rate=100)
    tick = tick_job(c, 0, env.clock.now())
    # Two workers running the same tick at once (a lease that ran out), then a replay after
    # the commit (a crash before the job was marked done): one advance, one set of batches.
    await asyncio.gather(env.campaigns.tick(tick), env.campaigns.tick(tick))
    await env.campaigns.tick(tick)
    stored = await env.campaigns.get(c.id)
    assert (stored.ticks, stored.enqueued, stored.cursor) == (1, 100, "u00099")
    await env.drain()  # also runs the original tick 0 job: it finds tick 0 done
    assert await env.items() == (100, 100)
    async with env.runtime.engine.connect() as conn:
        kinds = dict(
            (
                await conn.execute(
                    select(jobs.c.kind, func.count())
                    .where(jobs.c.payload["campaign"].as_string() == c.id)
                    .group_by(jobs.c.kind)
                )
            ).all()
        )
    assert kinds == {TICK_JOB: 2}  # tick 0 and tick 1, once each
    await env.seconds(11)
    assert await env.items() == (MEMBERS, MEMBERS)


async def test_a_fractional_rate_and_a_late_start(env: Env) -> None:
    c = await env.campaigns.create(
        workflow="promo",
        topic="all",
        payload={"text": "soon"},
        rate=0.5,
        start_at=env.clock.now() + 10,
    )
    assert c.state is CampaignState.SCHEDULED
    # Before the first tick the topic's size now is the total the estimate uses.
    p = await env.campaigns.progress(c.id)
    assert (p.campaign.total, p.total) == (None, MEMBERS)
    assert p.eta_seconds == pytest.approx(10 + MEMBERS / 0.5)
    await env.seconds(10)
    assert await env.items() == (0, 0)
    await env.seconds(6)  # ticks at +10 .. +15: one member every other second
    assert await env.items() == (3, 3)
    assert (await env.campaigns.get(c.id)).state is CampaignState.RUNNING


async def test_a_short_stall_is_caught_up_and_a_long_one_restarts_the_pace(env: Env) -> None:
    c = await env.start(rate=100)
    await env.seconds(2)  # ticks due at 0 and 1
    assert (await env.campaigns.get(c.id)).enqueued == 200
    env.clock.advance(4.0)  # the workers stall: the ticks due at 2..6 are late
    await env.drain()
    assert (await env.campaigns.get(c.id)).enqueued == 700  # caught up at once
    env.clock.advance(20.0)  # a stall longer than MAX_LAG: the tick due at 7 runs at 26
    await env.drain()
    # That tick only: the pace restarts from it, the 19 s behind are not caught up and no
    # second tick goes out at the same moment.
    assert (await env.campaigns.get(c.id)).enqueued == 800
    env.clock.advance(0.5)
    await env.drain()
    assert (await env.campaigns.get(c.id)).enqueued == 800
    env.clock.advance(0.5)  # one interval after the late tick
    await env.drain()
    assert (await env.campaigns.get(c.id)).enqueued == 900
    env.clock.advance(1.0)
    await env.drain()
    assert (await env.campaigns.get(c.id)).enqueued == MEMBERS
    assert await env.items() == (MEMBERS, MEMBERS)


async def test_subscribers_who_join_after_the_cursor_are_reached(env: Env) -> None:
    c = await env.start(rate=100)
    await env.seconds(2)
    assert (await env.campaigns.get(c.id)).cursor == "u00199"
    now = env.clock.now()
    late = ["u00150x", "u00500x", "zz"]  # one sorts before the cursor, two after it
    async with env.runtime.engine.begin() as conn:
        await conn.execute(
            insert(subscribers),
            [{"id": i, "data": {}, "created_at": now, "updated_at": now} for i in late],
        )
        await conn.execute(
            insert(topic_members),
            [{"topic_key": "all", "subscriber_id": i, "created_at": now} for i in late],
        )
    await env.seconds(10)
    done = await env.campaigns.get(c.id)
    assert done.state is CampaignState.COMPLETED
    assert (done.total, done.enqueued) == (MEMBERS, MEMBERS + 2)
    reached = await env.recipients()
    assert "u00500x" in reached and "zz" in reached and "u00150x" not in reached
    assert len(reached) == len(set(reached)) == MEMBERS + 2


async def test_a_segment_campaign_reaches_exactly_its_subscribers_once(env: Env) -> None:
    spec = {"subscriber.locale": "de", "subscriber.data.plan": "pro"}
    seg, created = await env.segments.put("de-pro", name="German pros", topic="all", filter=spec)
    assert created and seg.filter == spec
    chosen = [f"u{i:05d}" for i in range(MEMBERS) if i % 20 == 0]  # de and pro
    assert await env.segments.count("de-pro") == len(chosen) == 50
    c = await env.campaigns.create(
        workflow="promo", segment="de-pro", payload={"text": "for you"}, rate=20
    )
    assert (c.topic, c.segment, c.filter) == ("all", "de-pro", spec)
    p = await env.campaigns.progress(c.id)
    assert (p.total, p.eta_seconds) == (None, None)  # a filter is counted by the first tick
    await env.seconds(1)
    first = await env.campaigns.get(c.id)
    assert (first.total, first.enqueued, first.cursor) == (50, 20, chosen[19])
    assert await env.recipients() == chosen[:20]
    # The walk reads profiles as it reaches them: u00500 leaves the segment before it is
    # reached, and editing the segment changes nothing for the campaign (it took a copy).
    async with env.runtime.engine.begin() as conn:
        await conn.execute(
            update(subscribers).where(subscribers.c.id == "u00500").values(locale="en")
        )
    await env.segments.put("de-pro", name=None, topic=None, filter={"subscriber.locale": "en"})
    await env.seconds(5)
    done = await env.campaigns.progress(c.id)
    assert done.campaign.state is CampaignState.COMPLETED
    assert (done.total, done.campaign.enqueued, done.delivered) == (50, 49, 49)
    assert await env.recipients() == [i for i in chosen if i != "u00500"]


async def test_deleting_its_segment_leaves_a_running_campaign_alone(env: Env) -> None:
    spec = {"subscriber.data.plan": "pro"}
    await env.segments.put("pros", name=None, topic="all", filter=spec)
    chosen = [f"u{i:05d}" for i in range(MEMBERS) if i % 5 == 0]
    c = await env.campaigns.create(
        workflow="promo", segment="pros", payload={"text": "for you"}, rate=100
    )
    await env.seconds(1)
    assert (await env.campaigns.get(c.id)).enqueued == 100
    await env.segments.delete("pros")
    with pytest.raises(NotFound):
        await env.segments.get("pros")
    await env.seconds(3)
    done = await env.campaigns.progress(c.id)
    assert done.campaign.state is CampaignState.COMPLETED
    assert (done.campaign.segment, done.campaign.filter) == ("pros", spec)
    assert (done.total, done.campaign.enqueued, done.delivered) == (200, 200, 200)
    assert await env.recipients() == chosen


async def test_a_segment_preview_page_looks_at_a_bounded_number_of_candidates(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page of a sparse segment's members stops after `PREVIEW_EXAMINE` candidates: it
    may hold fewer ids than asked for, and its cursor goes on from the last one looked at."""
    monkeypatch.setattr(segments_module, "PREVIEW_EXAMINE", 100)
    await env.segments.put(
        "vips", name=None, topic=None, filter={"subscriber.data.tags": {"contains": "vip"}}
    )
    chosen = [f"u{i:05d}" for i in range(MEMBERS) if i % 7 == 0]
    page = await env.segments.members("vips", cursor=None, limit=50)
    assert page.ids == chosen[:15]  # u00000..u00099 looked at, 15 of them VIPs
    assert page.next_cursor is not None
    seen, cursor, pages = list(page.ids), page.next_cursor, 1
    while cursor is not None:
        page = await env.segments.members("vips", cursor=cursor, limit=50)
        seen += page.ids
        cursor, pages = page.next_cursor, pages + 1
    assert seen == chosen
    assert pages >= MEMBERS // 100  # every page looked at no more than 100


async def test_a_sparse_segment_is_walked_a_bounded_number_per_tick(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(campaigns_module, "SCAN_PAGE", 50)
    monkeypatch.setattr(campaigns_module, "MAX_EXAMINE", 100)
    # `contains` on a data list is evaluated in Python, page by page
    await env.segments.put(
        "vips", name=None, topic=None, filter={"subscriber.data.tags": {"contains": "vip"}}
    )
    chosen = [f"u{i:05d}" for i in range(MEMBERS) if i % 7 == 0]
    c = await env.campaigns.create(
        workflow="promo", segment="vips", payload={"text": "hi"}, rate=100
    )
    assert c.topic is None
    await env.seconds(1)
    first = await env.campaigns.get(c.id)
    # at most 100 subscribers looked at: u00000..u00099, of whom 15 are VIPs
    assert (first.total, first.enqueued, first.cursor) == (len(chosen), 15, "u00099")
    await env.seconds(10)
    done = await env.campaigns.get(c.id)
    assert done.state is CampaignState.COMPLETED and done.enqueued == len(chosen) == 143
    assert await env.recipients() == chosen


async def test_rates_per_channel_pace_by_the_tightest_channel(env: Env) -> None:
    # `mixed` sends one in-app message and two emails per recipient: 250 emails/s allow 125
    # recipients/s, 5,000 in-app/s would allow 5,000.
    c = await env.campaigns.create(
        workflow="mixed",
        topic="all",
        payload={"text": "sale"},
        rates={"email": 250, "in_app": 5000},
    )
    assert c.rate is None and c.rates == {"email": 250.0, "in_app": 5000.0}
    handed = []
    for _ in range(8):
        await env.seconds(1)
        stored = await env.campaigns.get(c.id)
        handed.append(stored.enqueued)
        assert stored.messages == {"in_app": stored.enqueued, "email": 2 * stored.enqueued}
    assert handed == [125 * k for k in range(1, 9)]
    p = await env.campaigns.progress(c.id)
    assert p.pace == 125.0 and p.eta_seconds == 0.0
    await env.seconds(1)  # the tick that finds no one left
    p = await env.campaigns.progress(c.id)
    assert p.campaign.state is CampaignState.COMPLETED and p.achieved_rate == 125.0
    email, inapp = p.channels["email"], p.channels["in_app"]
    assert (email.rate, email.per_recipient, email.messages) == (250.0, 2, 2 * MEMBERS)
    assert (inapp.rate, inapp.per_recipient, inapp.messages) == (5000.0, 1, MEMBERS)
    assert email.achieved_rate == 250.0 and inapp.achieved_rate == 125.0
    assert await env.items() == (MEMBERS, MEMBERS)


async def test_a_slow_channel_hands_out_one_recipient_at_a_time(env: Env) -> None:
    # 3.2 emails/s at two emails a recipient: 1.6 recipients/s, one every 0.625 s
    c = await env.campaigns.create(
        workflow="mixed", topic="all", payload={"text": "hi"}, rates={"email": 3.2}, rate=1000
    )
    handed = []
    for _ in range(6):
        await env.drain()
        handed.append((await env.campaigns.get(c.id)).enqueued)
        env.clock.advance(1.0)
    assert handed == [1, 2, 4, 5, 7, 9]  # floor(1.6 t) + 1 after t seconds
    stored = await env.campaigns.get(c.id)
    assert stored.messages == {"in_app": 9, "email": 18}


async def test_a_replayed_segment_tick_adds_nobody(env: Env) -> None:
    await env.segments.put(
        "de",
        name=None,
        topic=None,
        filter={"subscriber.locale": "de", "subscriber.email": {"exists": True}},
    )
    c = await env.campaigns.create(
        workflow="mixed", segment="de", payload={"text": "hi"}, rates={"email": 40, "in_app": 1000}
    )
    replay = tick_job(c, 0, env.clock.now())
    await asyncio.gather(env.campaigns.tick(replay), env.campaigns.tick(replay))
    await env.campaigns.tick(replay)
    stored = await env.campaigns.get(c.id)
    assert (stored.ticks, stored.enqueued, stored.cursor) == (1, 20, "u00076")
    assert stored.messages == {"in_app": 20, "email": 40}
    await env.drain()  # the original tick 0 finds it done
    assert await env.recipients() == [f"u{i:05d}" for i in range(0, 80, 4)]
    async with env.runtime.engine.connect() as conn:
        ticks = (
            await conn.execute(
                select(func.count()).where(
                    jobs.c.kind == TICK_JOB, jobs.c.payload["campaign"].as_string() == c.id
                )
            )
        ).scalar_one()
    assert ticks == 2  # tick 0 and tick 1, once each
    await env.seconds(14)
    done = await env.campaigns.get(c.id)
    assert done.state is CampaignState.COMPLETED and done.enqueued == 250
    assert await env.recipients() == [f"u{i:05d}" for i in range(0, MEMBERS, 4)]


@pytest.mark.parametrize(
    ("rate", "rates", "field"),
    [
        (None, None, "rate"),
        (0.0, None, "rate"),
        (10_001.0, None, "rate"),
        (math.nan, None, "rate"),
        (math.inf, None, "rate"),
        (None, {"fax": 1.0}, "rates.fax"),
        (None, {"in_app": 0.0}, "rates.in_app"),
        (None, {"in_app": 100_001.0}, "rates.in_app"),
        (None, {"in_app": math.nan}, "rates.in_app"),
        (None, {"email": 10.0}, "rates"),  # `promo` sends no email
    ],
)
async def test_the_service_itself_refuses_a_bad_pace(
    env: Env, rate: float | None, rates: dict[str, float] | None, field: str
) -> None:
    """The CLI creates through the service, so it checks the pace without the API's model."""
    with pytest.raises(InvalidInput) as exc:
        await env.campaigns.create(
            workflow="promo", topic="all", payload={}, rate=rate, rates=rates
        )
    assert exc.value.field == field
    assert await env.campaigns.page(after=None, limit=10) == []


async def test_a_tick_that_finds_the_workflow_gone_pauses_the_campaign(env: Env) -> None:
    workflows = env.runtime.services.notify
    assert workflows is not None
    await workflows.workflows.put(
        "short-lived",
        {"steps": [{"id": "inapp", "type": "in_app", "content": {"title": "t", "body": "b"}}]},
    )
    c = await env.campaigns.create(
        workflow="short-lived", topic="all", payload={"text": "hi"}, rate=100
    )
    await env.seconds(1)
    assert (await env.campaigns.get(c.id)).enqueued == 100
    await workflows.workflows.delete("short-lived")
    await env.seconds(3)
    paused = await env.campaigns.get(c.id)
    assert (paused.state, paused.enqueued) == (CampaignState.PAUSED, 100)
