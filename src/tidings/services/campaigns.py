"""Campaigns: a paced bulk send of one workflow to a topic or a segment.

Creating a campaign stores ONE event through ingest (type = the workflow's key, bulk, no
recipients: the dispatcher fans nothing out itself) and the campaign row with its first
`campaign.tick` job. The audience is a topic's members or a segment (a topic and/or a filter
over subscriber profiles, copied into the campaign when it is created). Each tick walks the
audience after the campaign's cursor (`Audiences.scan`, keyset paging in id order, bounded
per step) for the next recipients, at most one tick's worth, and, in ONE transaction,
advances the cursor, enqueues them as `notify.batch` jobs of at most `batch_size`
(`notify.bulk_batch_size`) recipients for the campaign's event and enqueues the next tick:
the pace comes from the schedule of the tick jobs, nothing sleeps. The advance is a
compare-and-set on the tick number, and every job carries a dedupe key
(`campaign:<id>:<first recipient>`, `campaign:<id>:tick:<n>`), so a tick repeated after a
crash, before or after its commit, hands out nothing twice; the runs themselves are
idempotent per event, workflow and recipient on top of that.

The pace is `rate` recipients per second and/or `rates`, messages per second per channel.
A recipient costs one message per channel step of the workflow on each channel, so the
recipients per second a channel allows is its rate over that cost, and the pace is the
smallest of these and `rate` (`pace`). A tick hands out floor(pace) recipients, at least
one, and the next tick follows n / pace seconds after this one was due (`tick_plan`): no tick
hands out more messages on a channel than its rate allows over the interval to the next tick,
and the average is the pace.

Pause and cancel stop the next tick; the batches already enqueued still run (ticks enqueue
theirs whether or not earlier ones have run: under a backlog, several ticks' worth). Resume
enqueues a tick at once (deduplicated per resume) that goes on from the cursor. When the
next tick would be due more than `MAX_LAG` seconds ago (the workers were busy or down), the
pace restarts from the late tick (the next is due one interval after it) rather than
catching up in a burst; a shorter delay is caught up at once, so after a short stall up to
about `MAX_LAG` seconds' worth goes out quickly. A tick that finds the workflow gone pauses
the campaign.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections import Counter
from collections.abc import Callable, Mapping

from tidings.core.notify import ChannelStep, Workflow
from tidings.core.notify.fields import channel
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
from tidings.ports.segments import Audience, Audiences, SegmentStore
from tidings.ports.subscribers import TopicStore
from tidings.records import record
from tidings.services.ingest import EventInput, IngestService
from tidings.services.notify import NotifyConfig, batch_job
from tidings.services.segments import audience_of
from tidings.services.worker import PermanentJobError
from tidings.services.workflows import WorkflowRegistry
from tidings.types import JSON, Job, NewJob, Priority

log = logging.getLogger(__name__)

TICK_JOB = "campaign.tick"
MAX_RATE = 10_000.0  # recipients per second
MAX_CHANNEL_RATE = 100_000.0  # messages per second on one channel
PER_TICK = 1000  # recipients handed out per tick at most
MAX_LAG = 5.0  # seconds a tick may run behind its schedule before the pace restarts from now
SCAN_PAGE = 1000  # candidates one step of the audience walk looks at
PARSED_KEPT = 1000  # campaign audiences a service keeps parsed
MAX_EXAMINE = 10 * PER_TICK  # candidates one tick looks at, at most (sparse segments)


def channel_costs(workflow: Workflow) -> dict[str, int]:
    """Messages one recipient costs per channel: the workflow's channel steps on it. An upper
    bound: a step whose condition fails, a channel the subscriber turned off or has no
    address for sends nothing."""
    return dict(Counter(s.channel.value for s in workflow.steps if isinstance(s, ChannelStep)))


def pace(
    rate: float | None, rates: Mapping[str, float] | None, costs: Mapping[str, int]
) -> float | None:
    """Recipients per second: the smallest of `rate` and, for each channel in `rates` that
    the workflow sends on, its messages per second over what one recipient costs on it.
    None when nothing bounds it."""
    bounds = [] if rate is None else [rate]
    bounds += [r / costs[ch] for ch, r in (rates or {}).items() if costs.get(ch)]
    return min(bounds) if bounds else None


def tick_plan(recipients_per_second: float) -> tuple[int, float]:
    """(recipients a tick hands out, seconds from its due time to the next tick's):
    floor(pace), at least one and at most `PER_TICK`, then the next tick n / pace seconds
    later. 100/s: 100 every second; 33.3/s: 33 every 0.99 s; 0.5/s: one every 2 s;
    10,000/s: 1,000 every 0.1 s."""
    n = min(PER_TICK, max(1, math.floor(recipients_per_second + 1e-9)))
    return n, n / recipients_per_second


@record
class ChannelProgress:
    rate: float | None  # the set messages per second; None: not limited on this channel
    per_recipient: int  # messages one recipient costs on it (channel steps)
    messages: int  # messages handed out: recipients handed out x their cost, per tick
    achieved_rate: float | None  # messages handed out per second since the first tick


@record
class Progress:
    campaign: Campaign
    runs: dict[str, int]  # run state -> count, for the campaign's event
    delivered: int  # runs done
    achieved_rate: float | None  # recipients handed out per second since the first tick
    eta_seconds: float | None  # until every recipient is handed out, at the pace
    pace: float | None  # recipients per second the rates allow now
    channels: dict[str, ChannelProgress]
    # The audience's size at the first tick; before it, a topic's size now (None for a
    # filter, which only the first tick counts).
    total: int | None


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
        *,
        audiences: Audiences,
        segments: SegmentStore,
        batch_size: int = NotifyConfig().bulk_batch_size,
    ) -> None:
        self.store = store
        self._ingest = ingest
        self._topics = topics
        self._workflows = workflows
        self._runs = runs
        self._clock = clock
        self._on_enqueue = on_enqueue
        self._audiences = audiences
        self._segments = segments
        self._batch_size = batch_size
        self._parsed: dict[str, Audience] = {}  # campaign id -> its audience, parsed once

    # -- commands ----------------------------------------------------------------------------

    async def create(
        self,
        *,
        workflow: str,
        payload: JSON,
        rate: float | None = None,
        rates: Mapping[str, float] | None = None,
        topic: str | None = None,
        segment: str | None = None,
        start_at: float | None = None,
        campaign_id: str | None = None,
    ) -> Campaign:
        """Validate, store the campaign's event and the campaign with its first tick. The
        audience is a topic or a segment (its topic and filter are copied); the pace is `rate`
        recipients per second and/or `rates` messages per second per channel. With an id, a
        retry after a failure goes on where the first attempt stopped (the event is ingested
        with the idempotency key `campaign:<id>`)."""
        if (topic is None) == (segment is None):
            raise InvalidInput("give a topic or a segment (one of them)", field="topic")
        _check_rates(rate, rates)
        found = await self._workflows.get(workflow)
        if found is None:
            raise InvalidInput(f"no workflow {workflow!r}", field="workflow")
        costs = channel_costs(found)
        if pace(rate, rates, costs) is None:
            raise InvalidInput(
                f"workflow {workflow!r} sends on none of the channels in rates (it sends on "
                f"{', '.join(sorted(costs)) or 'no channel'}); give a rate for one of them or "
                "a rate in recipients per second",
                field="rates",
            )
        filter_: JSON | None = None
        if segment is not None:
            try:
                seg = await self._segments.get(segment)
            except NotFound:
                raise InvalidInput(f"unknown segment {segment!r}", field="segment") from None
            topic, filter_ = seg.topic, seg.filter
        if topic is not None:
            try:
                await self._topics.get(topic)
            except NotFound:
                where = "topic" if segment is None else "segment"
                raise InvalidInput(f"unknown topic {topic!r}", field=where) from None
        cid = campaign_id or str(uuid.uuid4())
        if campaign_id is not None:  # a retry: no event for an id that is taken
            try:
                await self.store.get(cid)
            except NotFound:
                pass
            else:
                raise Conflict(f"campaign {cid} exists", field="id")
        result = await self._ingest.ingest(
            EventInput(type=workflow, payload=payload, priority=Priority.BULK),
            idempotency_key=f"campaign:{cid}",
        )
        now = self._clock.now()
        first, state = _first_tick(start_at, now)
        campaign = Campaign(
            id=cid,
            workflow=workflow,
            topic=topic,
            payload=payload,
            rate=None if rate is None else float(rate),
            state=state,
            event_id=result.event.id,
            created_at=now,
            updated_at=now,
            start_at=start_at,
            segment=segment,
            filter=filter_,
            rates=None if rates is None else {ch: float(r) for ch, r in rates.items()},
        )
        created = await self.store.create(
            campaign, then=_tick(cid, 0, first, f"campaign:{cid}:tick:0")
        )
        self._woken()
        return created

    async def pause(self, campaign_id: str) -> Campaign:
        done = await self.store.transition(
            campaign_id, expect=ACTIVE_STATES, state=CampaignState.PAUSED, at=self._clock.now()
        )
        return done or _settled(await self.store.get(campaign_id), CampaignState.PAUSED)

    async def resume(self, campaign_id: str) -> Campaign:
        c = await self.store.get(campaign_id)
        if c.state is not CampaignState.PAUSED:
            return _settled(c, CampaignState.RUNNING)
        now = self._clock.now()
        at, state = _first_tick(c.start_at, now)
        n = c.resumes + 1
        done = await self.store.transition(
            campaign_id,
            expect={CampaignState.PAUSED},
            state=state,
            at=now,
            resumes=n,
            jobs=[_tick(c.id, c.ticks, at, f"campaign:{c.id}:resume:{n}")],
        )
        if done is None:
            return _settled(await self.store.get(campaign_id), CampaignState.RUNNING)
        self._woken()
        return done

    async def cancel(self, campaign_id: str) -> Campaign:
        now = self._clock.now()
        done = await self.store.transition(
            campaign_id,
            expect=set(CampaignState) - FINAL_STATES,
            state=CampaignState.CANCELLED,
            at=now,
            finished_at=now,
        )
        return done or _settled(await self.store.get(campaign_id), CampaignState.CANCELLED)

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
        workflow = await self._workflows.get(c.workflow)
        if workflow is None:
            log.warning("campaign workflow is gone: paused", extra={"campaign": cid})
            await self.store.transition(cid, expect={c.state}, state=CampaignState.PAUSED, at=now)
            return
        costs = channel_costs(workflow)
        want, interval = tick_plan(pace(c.rate, c.rates, costs) or MAX_RATE)
        audience = self._audience(c)
        try:
            total = await self._audiences.count(audience) if c.total is None else None
            recipients, cursor, finished = await self._walk(audience, c.cursor, want)
        except NotFound:
            log.warning("campaign topic was deleted", extra={"campaign": cid, "topic": c.topic})
            total = 0 if c.total is None else None
            recipients, cursor, finished = [], c.cursor, True
        size = self._batch_size
        jobs = [
            batch_job(
                c.event_id,
                c.workflow,
                recipients[i : i + size],
                Priority.BULK,
                f"campaign:{cid}:{recipients[i]}",
            )
            for i in range(0, len(recipients), size)
        ]
        if not finished:
            nxt = float(due) + interval
            if nxt < now - MAX_LAG:
                nxt = now + interval  # the pace restarts from this (late) tick
            jobs.append(_tick(cid, n + 1, nxt, f"campaign:{cid}:tick:{n + 1}"))
        messages = dict(c.messages)
        for ch, cost in costs.items():
            messages[ch] = messages.get(ch, 0) + cost * len(recipients)
        wrote = await self.store.advance(
            cid,
            expect=c.state,
            tick=n,
            cursor=cursor,
            enqueued=c.enqueued + len(recipients),
            state=CampaignState.COMPLETED if finished else CampaignState.RUNNING,
            jobs=jobs,
            at=now,
            messages=messages,
            total=total,
            started_at=now if c.started_at is None else None,
            finished_at=now if finished else None,
        )
        if wrote and jobs:
            self._woken()

    def _audience(self, c: Campaign) -> Audience:
        """The campaign's audience, parsed at its first tick in this process: the topic and
        filter a campaign holds never change."""
        found = self._parsed.get(c.id)
        if found is None:
            try:
                found = audience_of(c.topic, c.filter)
            except InvalidInput as exc:
                raise PermanentJobError(f"campaign {c.id}: {exc.message}") from None
            if len(self._parsed) >= PARSED_KEPT:
                self._parsed.clear()
            self._parsed[c.id] = found
        return found

    async def _walk(
        self, audience: Audience, cursor: str | None, want: int
    ) -> tuple[list[str], str | None, bool]:
        """Up to `want` recipients after `cursor`, looking at no more than `MAX_EXAMINE`
        candidates: (recipients, the new cursor, whether no candidate is left)."""
        found: list[str] = []
        examined = 0
        while len(found) < want and examined < MAX_EXAMINE:
            step = await self._audiences.scan(
                audience,
                after=cursor,
                limit=want - len(found),
                examine=min(SCAN_PAGE, MAX_EXAMINE - examined),
            )
            found += step.ids
            examined += step.examined
            cursor = step.last or cursor
            if step.done:
                return found, cursor, True
        return found, cursor, False

    # -- reading -----------------------------------------------------------------------------

    async def get(self, campaign_id: str) -> Campaign:
        return await self.store.get(campaign_id)

    async def page(self, *, after: str | None, limit: int) -> list[Campaign]:
        return await self.store.page(after=after, limit=limit)

    async def progress(self, campaign_id: str) -> Progress:
        c = await self.store.get(campaign_id)
        counts = await self._runs.count_runs(c.event_id)
        now = self._clock.now()
        workflow = await self._workflows.get(c.workflow)
        costs = {} if workflow is None else channel_costs(workflow)
        recipients_per_second = pace(c.rate, c.rates, costs)
        elapsed = None
        if c.started_at is not None:
            elapsed = (c.finished_at or now) - c.started_at
            if elapsed <= 0:
                elapsed = None
        eta = None
        # Before the first tick the size is counted here, except for a filter: counting one
        # may read every candidate, which the first tick does once.
        total = c.total
        if total is None and c.filter is None and c.topic is not None:
            try:
                total = await self._audiences.count(Audience(c.topic))
            except NotFound:
                total = 0
        if c.state in ACTIVE_STATES and recipients_per_second is not None and total is not None:
            eta = max(total - c.enqueued, 0) / recipients_per_second
            if c.state is CampaignState.SCHEDULED and c.start_at is not None:
                eta += max(c.start_at - now, 0.0)
        channels = {
            ch: ChannelProgress(
                rate=(c.rates or {}).get(ch),
                per_recipient=costs.get(ch, 0),
                messages=c.messages.get(ch, 0),
                achieved_rate=None if elapsed is None else c.messages.get(ch, 0) / elapsed,
            )
            for ch in sorted(set(costs) | set(c.messages) | set(c.rates or {}))
        }
        return Progress(
            campaign=c,
            runs={state.value: n for state, n in counts.items()},
            delivered=counts.get(RunState.DONE, 0),
            achieved_rate=None if elapsed is None else c.enqueued / elapsed,
            eta_seconds=eta,
            pace=recipients_per_second,
            channels=channels,
            total=total,
        )

    def _woken(self) -> None:
        if self._on_enqueue is not None:
            self._on_enqueue()


def _settled(c: Campaign, wanted: CampaignState) -> Campaign:
    """A command that had nothing to change (the campaign was there already, is final, or a
    concurrent change won): the campaign as it stands, if it is where the caller wanted it
    (running: scheduled or running), else a conflict."""
    if c.state is wanted or (wanted is CampaignState.RUNNING and c.state in ACTIVE_STATES):
        return c
    raise Conflict(f"campaign {c.id} is {c.state.value}", field="state")


def _first_tick(start_at: float | None, now: float) -> tuple[float, CampaignState]:
    """When the next tick is due (now, or `start_at` if that is later) and the state until
    then."""
    at = max(now, start_at or now)
    return at, CampaignState.SCHEDULED if at > now else CampaignState.RUNNING


def _tick(campaign_id: str, n: int, at: float, dedupe_key: str) -> NewJob:
    return NewJob(
        kind=TICK_JOB,
        payload={"campaign": campaign_id, "tick": n, "at": at},
        lane=Priority.BULK,
        run_at=at,
        dedupe_key=dedupe_key,
    )


def _check_rates(rate: float | None, rates: Mapping[str, float] | None) -> None:
    if rate is None and not rates:
        raise InvalidInput(
            "give rate (recipients per second) or rates (messages per second per channel)",
            field="rate",
        )
    if rate is not None and not 0 < rate <= MAX_RATE:  # NaN too: it compares false
        raise InvalidInput(f"rate is > 0 and <= {MAX_RATE:,.0f} per second", field="rate")
    for ch, r in (rates or {}).items():
        channel(ch, f"rates.{ch}")
        if not 0 < r <= MAX_CHANNEL_RATE:
            raise InvalidInput(
                f"a channel's rate is > 0 and <= {MAX_CHANNEL_RATE:,.0f} messages per second",
                field=f"rates.{ch}",
            )
