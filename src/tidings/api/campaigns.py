"""Campaigns API (scope `publish`): paced bulk sends of a workflow to a topic or a segment,
with progress, pause, resume and cancel."""

from __future__ import annotations

from typing import Annotated, Any, Self

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from tidings.api.auth import require, services
from tidings.api.problems import problem_responses
from tidings.errors import NotFound
from tidings.ports.campaigns import Campaign
from tidings.services.campaigns import (
    MAX_CHANNEL_RATE,
    MAX_RATE,
    CampaignService,
    ChannelProgress,
    Progress,
)
from tidings.types import Scope

router = APIRouter(
    prefix="/v1/campaigns", tags=["campaigns"], dependencies=[Depends(require(Scope.PUBLISH))]
)
PROBLEM = problem_responses(401, 403, 404, 409, 422)
Key = Annotated[str, Field(min_length=1, max_length=200)]


class CampaignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: Key | None = Field(None, description="Your id; a retry with it creates nothing new.")
    workflow: Key = Field(description="The key of a defined workflow (its event type).")
    topic: Key | None = Field(None, description="Every member of this topic; or give `segment`.")
    segment: Key | None = Field(
        None, description="A segment's key: its topic and filter are copied into the campaign."
    )
    payload: dict[str, Any] = Field(default_factory=dict)
    rate: Annotated[float, Field(gt=0, le=MAX_RATE)] | None = Field(
        None, description="Recipients per second."
    )
    rates: dict[str, Annotated[float, Field(gt=0, le=MAX_CHANNEL_RATE)]] | None = Field(
        None,
        description="Messages per second per channel (in_app, email, sms, push, webpush, "
        "webhook); a recipient costs one message per channel step of the workflow.",
    )
    start_at: float | None = Field(None, description="Epoch seconds; default now.")


class CampaignOut(BaseModel):
    id: str
    workflow: str
    topic: str | None
    segment: str | None
    filter: Any = Field(description="The segment's filter as it was when the campaign began.")
    payload: Any
    rate: float | None
    rates: dict[str, float] | None
    state: str
    event_id: str
    total: int | None
    cursor: str | None
    enqueued: int
    start_at: float | None
    started_at: float | None
    finished_at: float | None
    created_at: float
    updated_at: float

    @classmethod
    def of(cls, c: Campaign, **extra: Any) -> Self:
        return cls(
            id=c.id,
            workflow=c.workflow,
            topic=c.topic,
            segment=c.segment,
            filter=c.filter,
            payload=c.payload,
            rate=c.rate,
            rates=None if c.rates is None else dict(c.rates),
            state=c.state.value,
            event_id=c.event_id,
            total=c.total,
            cursor=c.cursor,
            enqueued=c.enqueued,
            start_at=c.start_at,
            started_at=c.started_at,
            finished_at=c.finished_at,
            created_at=c.created_at,
            updated_at=c.updated_at,
            **extra,
        )


class ChannelOut(BaseModel):
    rate: float | None = Field(description="The set messages per second; null: not limited.")
    per_recipient: int = Field(description="Messages a recipient costs: the channel steps.")
    messages: int = Field(description="Messages handed out: recipients x per_recipient.")
    achieved_rate: float | None = Field(description="Messages handed out per second.")

    @classmethod
    def of(cls, p: ChannelProgress) -> ChannelOut:
        return cls(
            rate=p.rate,
            per_recipient=p.per_recipient,
            messages=p.messages,
            achieved_rate=p.achieved_rate,
        )


class ProgressOut(BaseModel):
    total: int | None
    enqueued: int
    delivered: int = Field(description="Runs of the campaign's event that are done.")
    runs: dict[str, int] = Field(description="Runs of the campaign's event per state.")
    achieved_rate: float | None = Field(description="Recipients handed out per second.")
    pace: float | None = Field(description="Recipients per second the rates allow.")
    channels: dict[str, ChannelOut] = Field(
        description="Per channel of the workflow: its rate, cost and achieved rate."
    )
    eta_seconds: float | None

    @classmethod
    def of(cls, p: Progress) -> ProgressOut:
        return cls(
            total=p.total,
            enqueued=p.campaign.enqueued,
            delivered=p.delivered,
            runs=p.runs,
            achieved_rate=p.achieved_rate,
            pace=p.pace,
            channels={ch: ChannelOut.of(x) for ch, x in p.channels.items()},
            eta_seconds=p.eta_seconds,
        )


class CampaignWithProgress(CampaignOut):
    progress: ProgressOut


def campaigns(request: Request) -> CampaignService:
    found = services(request).campaigns
    if found is None:  # pragma: no cover - the runtime always builds one
        raise NotFound("campaigns are not configured")
    return found


@router.post("", status_code=201, responses=PROBLEM, summary="Create a campaign")
async def create(request: Request, body: CampaignIn) -> CampaignOut:
    c = await campaigns(request).create(
        workflow=body.workflow,
        topic=body.topic,
        segment=body.segment,
        payload=body.payload,
        rate=body.rate,
        rates=body.rates,
        start_at=body.start_at,
        campaign_id=body.id,
    )
    return CampaignOut.of(c)


@router.get("", summary="Campaigns, by id")
async def page(
    request: Request,
    after: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[CampaignOut]:
    return [CampaignOut.of(c) for c in await campaigns(request).page(after=after, limit=limit)]


@router.get("/{campaign_id}", responses=PROBLEM, summary="A campaign with its progress")
async def get(request: Request, campaign_id: str) -> CampaignWithProgress:
    p = await campaigns(request).progress(campaign_id)
    return CampaignWithProgress.of(p.campaign, progress=ProgressOut.of(p))


@router.post("/{campaign_id}/pause", responses=PROBLEM)
async def pause(request: Request, campaign_id: str) -> CampaignOut:
    return CampaignOut.of(await campaigns(request).pause(campaign_id))


@router.post("/{campaign_id}/resume", responses=PROBLEM)
async def resume(request: Request, campaign_id: str) -> CampaignOut:
    return CampaignOut.of(await campaigns(request).resume(campaign_id))


@router.post("/{campaign_id}/cancel", responses=PROBLEM)
async def cancel(request: Request, campaign_id: str) -> CampaignOut:
    return CampaignOut.of(await campaigns(request).cancel(campaign_id))
