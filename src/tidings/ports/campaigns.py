"""Port of campaigns: paced bulk sends of one workflow to a topic or a segment."""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping, Sequence
from dataclasses import field
from typing import Protocol

from tidings.records import record
from tidings.types import JSON, NewJob


class CampaignState(enum.StrEnum):
    SCHEDULED = "scheduled"  # created, its first tick is due at `start_at`
    RUNNING = "running"
    PAUSED = "paused"
    CANCELLED = "cancelled"
    COMPLETED = "completed"  # every member was handed to a batch


ACTIVE_STATES = frozenset({CampaignState.SCHEDULED, CampaignState.RUNNING})
FINAL_STATES = frozenset({CampaignState.CANCELLED, CampaignState.COMPLETED})


@record
class Campaign:
    """A campaign as stored.

    The audience is the members of `topic` (every subscriber when None) for whom `filter`
    holds; a campaign to a segment copies the segment's topic and filter when it is created
    (`segment` names it). The pace is `rate` recipients per second and/or `rates`, messages
    per second per channel; at least one is set.

    `cursor` is the last subscriber id the walk looked at (recipients are walked in id
    order), `enqueued` how many recipients were handed to batches, `messages` how many
    messages per channel those recipients cost (channel steps of the workflow), `ticks` how
    many ticks have advanced it (the next tick's number), `resumes` how many times it was
    resumed (the dedupe key of a resume's tick). `total` is the audience's size at the first
    tick."""

    id: str
    workflow: str
    topic: str | None
    payload: JSON
    rate: float | None  # recipients per second
    state: CampaignState
    event_id: str
    created_at: float
    updated_at: float
    start_at: float | None = None
    total: int | None = None
    cursor: str | None = None
    enqueued: int = 0
    ticks: int = 0
    resumes: int = 0
    started_at: float | None = None  # the first tick
    finished_at: float | None = None  # completed or cancelled
    segment: str | None = None
    filter: JSON | None = None
    rates: Mapping[str, float] | None = None  # channel -> messages per second
    messages: Mapping[str, int] = field(default_factory=dict)  # channel -> handed out


class CampaignStore(Protocol):
    """Contract:

    - `create` stores the campaign and enqueues `then` in ONE transaction; an id in use
      raises `Conflict(field="id")` and enqueues nothing.
    - `get` raises `NotFound` for an unknown id; `page` lists by id ascending after `after`.
    - `advance` is a compare-and-set: it writes only if the stored campaign is still in
      state `expect` with `ticks == tick`, and then, in ONE transaction, sets `ticks` to
      `tick + 1`, `cursor`, `enqueued`, `state`, `messages` (and `total`, `started_at`,
      `finished_at` when given) and enqueues `jobs` (a job whose dedupe key was enqueued
      before is a no-op). Returns whether it wrote; when it did not, nothing was written or
      enqueued.
    - `transition` is a compare-and-set on the state: when the stored state is in `expect`
      it sets `state` (and `resumes`, `finished_at` when given) and enqueues `jobs` in ONE
      transaction and returns the campaign as stored; otherwise it writes nothing and
      returns None. Unknown ids raise `NotFound`.
    """

    async def create(self, campaign: Campaign, *, then: NewJob) -> Campaign: ...

    async def get(self, campaign_id: str) -> Campaign: ...

    async def page(self, *, after: str | None, limit: int) -> list[Campaign]: ...

    async def advance(
        self,
        campaign_id: str,
        *,
        expect: CampaignState,
        tick: int,
        cursor: str | None,
        enqueued: int,
        state: CampaignState,
        jobs: Sequence[NewJob],
        at: float,
        messages: Mapping[str, int],
        total: int | None = None,
        started_at: float | None = None,
        finished_at: float | None = None,
    ) -> bool: ...

    async def transition(
        self,
        campaign_id: str,
        *,
        expect: Collection[CampaignState],
        state: CampaignState,
        at: float,
        resumes: int | None = None,
        finished_at: float | None = None,
        jobs: Sequence[NewJob] = (),
    ) -> Campaign | None: ...
