"""Campaigns: a paced bulk send of one workflow to the members of a topic.

Creating a campaign stores ONE event through ingest (type = the workflow's key, bulk, no
recipients: the dispatcher fans nothing out itself) and the campaign row with its first
`campaign.tick` job. Each tick reads the next members after the campaign's cursor (at most
`rate x tick` of them) and, in ONE transaction, advances the cursor, enqueues them as
`notify.batch` jobs of at most `BATCH` recipients for the campaign's event and enqueues the
next tick one tick after this one was due: the pace comes from the schedule of the tick jobs,
nothing sleeps. The advance is a compare-and-set on the tick number, and every job carries a
dedupe key (`campaign:<id>:<first recipient>`, `campaign:<id>:tick:<n>`), so a tick repeated
after a crash, before or after its commit, hands out nothing twice; the runs themselves are
idempotent per event, workflow and recipient on top of that.

Pause and cancel stop the next tick; the batches already enqueued (at most one tick's worth)
still run. Resume enqueues a tick at once (deduplicated per resume) that goes on from the
cursor. A tick that falls more than `MAX_LAG` seconds behind its schedule (the workers were
busy or down) schedules the next one from now instead of catching up in a burst.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from tidings.errors import Conflict, InvalidInput, NotFound
from tidings.ports.campaigns import (
    ACTIVE_STATES,
    FINAL_STATES,
    Campaign,
    CampaignState,
    CampaignStore,
)
from tidings.ports.clock import Clock
from tidings.ports.notify import RunState, RunStore
from tidings.ports.subscribers import TopicStore
from tidings.services.ingest import EventInput, IngestService
from tidings.services.notify import BATCH_JOB
from tidings.services.worker import PermanentJobError
from tidings.services.workflows import WorkflowRegistry
from tidings.types import JSON, Job, NewJob, Priority

log = logging.getLogger(__name__)

TICK_JOB = "campaign.tick"
MAX_RATE = 10_000.0  # recipients per second
PER_TICK = 1000  # members read and handed out per tick at most
BATCH = 100  # recipients per notify.batch job (the bulk batch size)
MAX_LAG = 5.0  # seconds a tick may run behind its schedule before the pace restarts from now


def tick_seconds(rate: float) -> float:
    """One second, shorter for rates above `PER_TICK`/s so that a tick never hands out more
    than `PER_TICK` members (10,000/s: a tick every 0.1 s)."""
    return 1.0 if rate <= PER_TICK else PER_TICK / rate


def planned(rate: float, ticks: int) -> int:
    """How many members the first `ticks` ticks hand out (fractional rates accumulate:
    0.5/s is one member every other tick)."""
    return math.floor(rate * tick_seconds(rate) * ticks + 1e-9)


@dataclass(frozen=True, slots=True)
class Progress:
    campaign: Campaign
    runs: dict[str, int]  # run state -> count, for the campaign's event
    delivered: int  # runs done
    achieved_rate: float | None  # recipients handed out per second since the first tick
    eta_seconds: float | None  # until every member is handed out, at the set rate

    @property
    def total(self) -> int | None:
        return self.campaign.total


class CampaignService:
    def __init__(
        self,
        store: CampaignStore,
        ingest: IngestService,
        topics: TopicStore,
        workflows: WorkflowRegistry,
        runs: RunStore,
        clock: Clock,
        on_enqueue: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self._ingest = ingest
        self._topics = topics
        self._workflows = workflows
        self._runs = runs
        self._clock = clock
        self._on_enqueue = on_enqueue

    # -- commands ----------------------------------------------------------------------------

    async def create(
        self,
        *,
        workflow: str,
        topic: str,
        payload: JSON,
        rate: float,
        start_at: float | None = None,
        campaign_id: str | None = None,
    ) -> Campaign:
        """Validate, store the campaign's event and the campaign with its first tick. With an
        id, a retry after a failure goes on where the first attempt stopped (the event is
        ingested with the idempotency key `campaign:<id>`)."""
        if not (0 < rate <= MAX_RATE) or math.isnan(rate):
            raise InvalidInput(f"rate is > 0 and <= {MAX_RATE:,.0f} per second", field="rate")
        if await self._workflows.get(workflow) is None:
            raise InvalidInput(f"no workflow {workflow!r}", field="workflow")
        try:
            await self._topics.get(topic)
        except NotFound:
            raise InvalidInput(f"unknown topic {topic!r}", field="topic") from None
        cid = campaign_id or str(uuid.uuid4())
        try:
            existing = await self.store.get(cid)
        except NotFound:
            existing = None
        if existing is not None:
            raise Conflict(f"campaign {cid} exists", field="id")
        result = await self._ingest.ingest(
            EventInput(type=workflow, payload=payload, priority=Priority.BULK),
            idempotency_key=f"campaign:{cid}",
        )
        now = self._clock.now()
        first = max(now, start_at) if start_at is not None else now
        campaign = Campaign(
            id=cid,
            workflow=workflow,
            topic=topic,
            payload=payload,
            rate=float(rate),
            state=CampaignState.SCHEDULED if first > now else CampaignState.RUNNING,
            event_id=result.event.id,
            created_at=now,
            updated_at=now,
            start_at=start_at,
        )
        created = await self.store.create(
            campaign, then=_tick(cid, 0, first, f"campaign:{cid}:tick:0")
        )
        self._woken()
        return created

    async def pause(self, campaign_id: str) -> Campaign:
        c = await self.store.get(campaign_id)
        if c.state is CampaignState.PAUSED:
            return c
        if c.state in FINAL_STATES:
            raise Conflict(f"campaign {campaign_id} is {c.state.value}", field="state")
        done = await self.store.transition(
            campaign_id, expect=ACTIVE_STATES, state=CampaignState.PAUSED, at=self._clock.now()
        )
        return done or await self._settled(campaign_id, CampaignState.PAUSED)

    async def resume(self, campaign_id: str) -> Campaign:
        c = await self.store.get(campaign_id)
        if c.state in ACTIVE_STATES:
            return c
        if c.state in FINAL_STATES:
            raise Conflict(f"campaign {campaign_id} is {c.state.value}", field="state")
        now = self._clock.now()
        at = max(now, c.start_at or now)
        n = c.resumes + 1
        done = await self.store.transition(
            campaign_id,
            expect={CampaignState.PAUSED},
            state=CampaignState.SCHEDULED if at > now else CampaignState.RUNNING,
            at=now,
            resumes=n,
            jobs=[_tick(c.id, c.ticks, at, f"campaign:{c.id}:resume:{n}")],
        )
        if done is None:
            return await self._settled(campaign_id, CampaignState.RUNNING)
        self._woken()
        return done

    async def cancel(self, campaign_id: str) -> Campaign:
        c = await self.store.get(campaign_id)
        if c.state is CampaignState.CANCELLED:
            return c
        if c.state is CampaignState.COMPLETED:
            raise Conflict(f"campaign {campaign_id} is completed", field="state")
        now = self._clock.now()
        done = await self.store.transition(
            campaign_id,
            expect={CampaignState.SCHEDULED, CampaignState.RUNNING, CampaignState.PAUSED},
            state=CampaignState.CANCELLED,
            at=now,
            finished_at=now,
        )
        return done or await self._settled(campaign_id, CampaignState.CANCELLED)

    async def _settled(self, campaign_id: str, wanted: CampaignState) -> Campaign:
        """A concurrent change won the compare-and-set: the campaign as it now stands, if it
        is where the caller wanted it, else a conflict."""
        c = await self.store.get(campaign_id)
        if c.state is wanted or (wanted is CampaignState.RUNNING and c.state in ACTIVE_STATES):
            return c
        raise Conflict(f"campaign {campaign_id} is {c.state.value}", field="state")

    # -- the tick ----------------------------------------------------------------------------

    async def tick(self, job: Job) -> None:
        """The `campaign.tick` job handler."""
        cid = str(job.payload.get("campaign", ""))
        n = job.payload.get("tick")
        due = job.payload.get("at")
        if not isinstance(n, int) or not isinstance(due, int | float):
            raise PermanentJobError("a campaign.tick job needs its tick number and instant")
        try:
            c = await self.store.get(cid)
        except NotFound:
            raise PermanentJobError(f"campaign {cid} not found") from None
        if c.state not in ACTIVE_STATES or c.ticks != n:
            return  # paused, cancelled, completed, or this tick ran already
        now = self._clock.now()
        total = await self._topics.count(c.topic) if c.total is None else None
        want = planned(c.rate, n + 1) - planned(c.rate, n)
        try:
            members = (
                await self._topics.members(c.topic, after=c.cursor, limit=want) if want else []
            )
        except NotFound:
            log.warning("campaign topic was deleted", extra={"campaign": cid, "topic": c.topic})
            members, want = [], 1
        jobs = [
            NewJob(
                kind=BATCH_JOB,
                payload={
                    "event_id": c.event_id,
                    "workflow": c.workflow,
                    "recipients": members[i : i + BATCH],
                },
                lane=Priority.BULK,
                dedupe_key=f"campaign:{cid}:{members[i]}",
            )
            for i in range(0, len(members), BATCH)
        ]
        finished = len(members) < want
        if not finished:
            nxt = float(due) + tick_seconds(c.rate)
            if nxt < now - MAX_LAG:
                nxt = now
            jobs.append(_tick(cid, n + 1, nxt, f"campaign:{cid}:tick:{n + 1}"))
        wrote = await self.store.advance(
            cid,
            expect=c.state,
            tick=n,
            cursor=members[-1] if members else c.cursor,
            enqueued=c.enqueued + len(members),
            state=CampaignState.COMPLETED if finished else CampaignState.RUNNING,
            jobs=jobs,
            at=now,
            total=total,
            started_at=now if c.started_at is None else None,
            finished_at=now if finished else None,
        )
        if wrote and jobs:
            self._woken()

    # -- reading -----------------------------------------------------------------------------

    async def get(self, campaign_id: str) -> Campaign:
        return await self.store.get(campaign_id)

    async def page(self, *, after: str | None, limit: int) -> list[Campaign]:
        return await self.store.page(after=after, limit=limit)

    async def progress(self, campaign_id: str) -> Progress:
        c = await self.store.get(campaign_id)
        counts = await self._runs.count_runs(c.event_id)
        now = self._clock.now()
        achieved = None
        if c.started_at is not None:
            elapsed = (c.finished_at or now) - c.started_at
            achieved = c.enqueued / elapsed if elapsed > 0 else None
        eta = None
        if c.state in ACTIVE_STATES:
            left = (c.total if c.total is not None else await self._topics.count(c.topic)) - (
                c.enqueued
            )
            eta = max(left, 0) / c.rate
            if c.state is CampaignState.SCHEDULED and c.start_at is not None:
                eta += max(c.start_at - now, 0.0)
        return Progress(
            campaign=c,
            runs={state.value: n for state, n in counts.items()},
            delivered=counts.get(RunState.DONE, 0),
            achieved_rate=achieved,
            eta_seconds=eta,
        )

    def _woken(self) -> None:
        if self._on_enqueue is not None:
            self._on_enqueue()


def _tick(campaign_id: str, n: int, at: float, dedupe_key: str) -> NewJob:
    return NewJob(
        kind=TICK_JOB,
        payload={"campaign": campaign_id, "tick": n, "at": at},
        lane=Priority.BULK,
        run_at=at,
        dedupe_key=dedupe_key,
    )
