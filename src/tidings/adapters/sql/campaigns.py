"""Campaigns in SQL: the row and the jobs it hands out are written in one transaction."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, and_, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tidings.adapters.sql.engine import reader, writer
from tidings.adapters.sql.jobs import insert_jobs, job_row
from tidings.adapters.sql.tables import campaigns
from tidings.errors import Conflict, NotFound
from tidings.ports.campaigns import Campaign, CampaignState
from tidings.types import NewJob

_c = campaigns.c


class SqlCampaignStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._read = reader(engine)
        self._ins_job = insert_jobs(engine)

    async def create(self, campaign: Campaign, *, then: NewJob) -> Campaign:
        try:
            async with writer(self._engine) as conn:
                await conn.execute(insert(campaigns), _row(campaign))
                await conn.execute(self._ins_job, [job_row(then, campaign.created_at)])
        except IntegrityError:
            raise Conflict(f"campaign {campaign.id} exists", field="id") from None
        return await self.get(campaign.id)

    async def get(self, campaign_id: str) -> Campaign:
        async with self._read.connect() as conn:
            found = await _get(conn, campaign_id)
        if found is None:
            raise NotFound(f"campaign {campaign_id} not found")
        return found

    async def page(self, *, after: str | None, limit: int) -> list[Campaign]:
        query = select(campaigns).order_by(_c.id).limit(limit)
        if after is not None:
            query = query.where(_c.id > after)
        async with self._read.connect() as conn:
            return [_campaign(r._mapping) for r in await conn.execute(query)]

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
        values = {
            "ticks": tick + 1,
            "cursor": cursor,
            "enqueued": enqueued,
            "state": state.value,
            "updated_at": at,
            "messages": dict(messages),
            **_given(total=total, started_at=started_at, finished_at=finished_at),
        }
        expected = and_(_c.state == expect.value, _c.ticks == tick)
        async with writer(self._engine) as conn:
            return await self._swap(conn, campaign_id, expected, values, jobs, at)

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
        values = {
            "state": state.value,
            "updated_at": at,
            **_given(resumes=resumes, finished_at=finished_at),
        }
        expected = _c.state.in_([s.value for s in expect])
        async with writer(self._engine) as conn:
            wrote = await self._swap(conn, campaign_id, expected, values, jobs, at)
            found = await _get(conn, campaign_id)
        if found is None:
            raise NotFound(f"campaign {campaign_id} not found")
        return found if wrote else None

    async def _swap(
        self,
        conn: AsyncConnection,
        campaign_id: str,
        expected: ColumnElement[bool],
        values: dict[str, Any],
        jobs: Sequence[NewJob],
        at: float,
    ) -> bool:
        """The compare-and-set: write `values` if the row still holds `expected`, and then
        enqueue `jobs`; whether it wrote."""
        result = await conn.execute(
            update(campaigns).where(_c.id == campaign_id, expected).values(**values)
        )
        if result.rowcount and jobs:
            await conn.execute(self._ins_job, [job_row(j, at) for j in jobs])
        return bool(result.rowcount)


async def _get(conn: AsyncConnection, campaign_id: str) -> Campaign | None:
    row = (await conn.execute(select(campaigns).where(_c.id == campaign_id))).one_or_none()
    return None if row is None else _campaign(row._mapping)


def _given(**optional: Any) -> dict[str, Any]:
    """The optional columns that were given (None: keep what is stored)."""
    return {k: v for k, v in optional.items() if v is not None}


def _row(c: Campaign) -> dict[str, Any]:
    return {
        "id": c.id,
        "workflow": c.workflow,
        "topic": c.topic,
        "payload": c.payload,
        "rate": c.rate,
        "state": c.state.value,
        "event_id": c.event_id,
        "start_at": c.start_at,
        "total": c.total,
        "cursor": c.cursor,
        "enqueued": c.enqueued,
        "ticks": c.ticks,
        "resumes": c.resumes,
        "started_at": c.started_at,
        "finished_at": c.finished_at,
        "created_at": c.created_at,
        "updated_at": c.updated_at,
        "segment": c.segment,
        "filter": c.filter,
        "rates": None if c.rates is None else dict(c.rates),
        "messages": dict(c.messages),
    }


def _campaign(m: Any) -> Campaign:
    return Campaign(
        id=m["id"],
        workflow=m["workflow"],
        topic=m["topic"],
        payload=m["payload"],
        rate=None if m["rate"] is None else float(m["rate"]),
        state=CampaignState(m["state"]),
        event_id=m["event_id"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        start_at=m["start_at"],
        total=m["total"],
        cursor=m["cursor"],
        enqueued=m["enqueued"],
        ticks=m["ticks"],
        resumes=m["resumes"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        segment=m["segment"],
        filter=m["filter"],
        rates=m["rates"],
        messages=m["messages"] or {},
    )
