"""Campaigns API (scope `publish`): paced bulk sends of a workflow to a topic, with progress,
pause, resume and cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from tidings.api.auth import require, services
from tidings.errors import NotFound
from tidings.ports.campaigns import Campaign
from tidings.services.campaigns import MAX_RATE, CampaignService, Progress
from tidings.types import Scope

router = APIRouter(
    prefix="/v1/campaigns", tags=["campaigns"], dependencies=[Depends(require(Scope.PUBLISH))]
)
PROBLEM: dict[int | str, dict[str, Any]] = {
    s: {"content": {"application/problem+json": {}}} for s in (401, 403, 404, 409, 422)
}
Key = Annotated[str, Field(min_length=1, max_length=200)]


class CampaignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: Key | None = Field(None, description="Your id; a retry with it creates nothing new.")
    workflow: Key = Field(description="The key of a defined workflow (its event type).")
    topic: Key
    payload: dict[str, Any] = Field(default_factory=dict)
    rate: Annotated[float, Field(gt=0, le=MAX_RATE, description="Recipients per second.")]
    start_at: float | None = Field(None, description="Epoch seconds; default now.")


class CampaignOut(BaseModel):
    id: str
    workflow: str
    topic: str
    payload: Any
    rate: float
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
    def of(cls, c: Campaign) -> CampaignOut:
        return cls(
            id=c.id,
            workflow=c.workflow,
            topic=c.topic,
            payload=c.payload,
            rate=c.rate,
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
        )


class ProgressOut(BaseModel):
    total: int | None
    enqueued: int
    delivered: int = Field(description="Runs of the campaign's event that are done.")
    runs: dict[str, int] = Field(description="Runs of the campaign's event per state.")
    achieved_rate: float | None = Field(description="Recipients handed out per second.")
    eta_seconds: float | None

    @classmethod
    def of(cls, p: Progress) -> ProgressOut:
        return cls(
            total=p.total,
            enqueued=p.campaign.enqueued,
            delivered=p.delivered,
            runs=p.runs,
            achieved_rate=p.achieved_rate,
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
        payload=body.payload,
        rate=body.rate,
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
    return CampaignWithProgress(
        **CampaignOut.of(p.campaign).model_dump(), progress=ProgressOut.of(p)
    )


@router.post("/{campaign_id}/pause", responses=PROBLEM)
async def pause(request: Request, campaign_id: str) -> CampaignOut:
    return CampaignOut.of(await campaigns(request).pause(campaign_id))


@router.post("/{campaign_id}/resume", responses=PROBLEM)
async def resume(request: Request, campaign_id: str) -> CampaignOut:
    return CampaignOut.of(await campaigns(request).resume(campaign_id))


@router.post("/{campaign_id}/cancel", responses=PROBLEM)
async def cancel(request: Request, campaign_id: str) -> CampaignOut:
    return CampaignOut.of(await campaigns(request).cancel(campaign_id))
