"""Campaigns end to end on the embedded runtime (SQLite) with a manual clock: the workers run
due jobs with `run_once`, the clock moves one second at a time, so the tick schedule is the
only thing that paces the send."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select

from tests.api.conftest import make_settings
from tidings.adapters.clock import ManualClock
from tidings.adapters.sql.tables import inbox_items, jobs, subscribers, topic_members, topics
from tidings.config import NotifySettings, WorkerSettings
from tidings.ports.campaigns import Campaign, CampaignState
from tidings.services.campaigns import TICK_JOB, CampaignService
from tidings.types import Job, JobState, Priority
from tidings.wiring import Runtime, build_runtime, migrate

WORKFLOWS = """
workflows:
  - key: promo
    steps:
      - id: inapp
        type: in_app
        content: {title: "Sale", body: "{{ payload.text }}"}
"""
MEMBERS = 1000


@dataclass
class Env:
    runtime: Runtime
    clock: ManualClock

    @property
    def campaigns(self) -> CampaignService:
        found = self.runtime.services.campaigns
        assert found is not None
        return found

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
                {"id": i, "data": {}, "created_at": now, "updated_at": now}
                for i in ids  # the other columns are nullable
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
    tick = Job(
        id="replayed",
        kind=TICK_JOB,
        payload={"campaign": c.id, "tick": 0, "at": env.clock.now()},
        lane=Priority.BULK,
        state=JobState.RUNNING,
        run_at=env.clock.now(),
        attempts=1,
        max_attempts=10,
        dedupe_key=None,
        lease_token="t",
        locked_until=None,
        last_error=None,
        created_at=env.clock.now(),
    )
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
    await env.seconds(10)
    assert await env.items() == (0, 0)
    await env.seconds(6)  # ticks at +10 .. +15: one member every other second
    assert await env.items() == (3, 3)
    assert (await env.campaigns.get(c.id)).state is CampaignState.RUNNING
