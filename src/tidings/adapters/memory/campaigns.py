"""In-process campaign store (reference for the contract suite)."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence

from tidings.adapters.memory.columns import json_copy
from tidings.adapters.memory.jobs import MemoryJobQueue
from tidings.errors import Conflict, NotFound
from tidings.ports.campaigns import Campaign, CampaignState
from tidings.types import NewJob


class MemoryCampaignStore:
    """Every method checks what it writes first and does not suspend between its first write
    and its last (the job queue is a memory one), so each is one transaction with respect to
    other coroutines."""

    def __init__(self, jobs: MemoryJobQueue) -> None:
        self._jobs = jobs
        self._items: dict[str, Campaign] = {}

    async def create(self, campaign: Campaign, *, then: NewJob) -> Campaign:
        if campaign.id in self._items:
            raise Conflict(f"campaign {campaign.id} exists", field="id")
        stored = dataclasses.replace(
            campaign,
            payload=json_copy(campaign.payload),
            filter=json_copy(campaign.filter),
            rates=json_copy(campaign.rates),
            messages=json_copy(campaign.messages),
        )
        await self._write(stored, [then])
        return stored

    async def get(self, campaign_id: str) -> Campaign:
        found = self._items.get(campaign_id)
        if found is None:
            raise NotFound(f"campaign {campaign_id} not found")
        return found

    async def page(self, *, after: str | None, limit: int) -> list[Campaign]:
        ids = sorted(i for i in self._items if after is None or i > after)
        return [self._items[i] for i in ids[:limit]]

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
    ) -> bool:
        c = await self.get(campaign_id)
        if c.state is not expect or c.ticks != tick:
            return False
        changed = dataclasses.replace(
            c,
            ticks=tick + 1,
            cursor=cursor,
            enqueued=enqueued,
            state=state,
            updated_at=at,
            messages=json_copy(messages),
            total=c.total if total is None else total,
            started_at=c.started_at if started_at is None else started_at,
            finished_at=c.finished_at if finished_at is None else finished_at,
        )
        await self._write(changed, jobs)
        return True

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
    ) -> Campaign | None:
        c = await self.get(campaign_id)
        if c.state not in expect:
            return None
        c = dataclasses.replace(
            c,
            state=state,
            updated_at=at,
            resumes=c.resumes if resumes is None else resumes,
            finished_at=c.finished_at if finished_at is None else finished_at,
        )
        await self._write(c, jobs)
        return c

    async def _write(self, c: Campaign, jobs: Sequence[NewJob]) -> None:
        """Store `c` and enqueue `jobs`, or, when a job's payload is not JSON, neither."""
        stored = [dataclasses.replace(j, payload=json_copy(j.payload)) for j in jobs]
        self._items[c.id] = c
        for job in stored:
            await self._jobs.enqueue(job)  # does not suspend: nothing runs in between
