"""Outgoing webhook endpoints API (scope `admin`): create (the secret is shown once), list,
read, change, delete, rotate the secret, enable and disable."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from tidings.api.auth import require, services
from tidings.api.problems import problem_responses
from tidings.ports.providers import WebhookEndpoint
from tidings.types import Scope

router = APIRouter(
    prefix="/v1/webhooks/endpoints",
    tags=["webhooks"],
    dependencies=[Depends(require(Scope.ADMIN))],
)
PROBLEM = problem_responses(401, 403, 404, 409, 422)
EventTypes = Annotated[list[Annotated[str, Field(max_length=200)]], Field(max_length=100)]


class EndpointIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: Annotated[str, Field(min_length=1, max_length=2048)]
    description: Annotated[str, Field(max_length=1000)] = ""
    event_types: EventTypes = Field(
        default_factory=list, description="Event types to send; empty: every type"
    )
    secret: str | None = Field(
        default=None, description="whsec_<base64 of 24-64 bytes>; generated when absent"
    )


class EndpointPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: Annotated[str, Field(min_length=1, max_length=2048)] | None = None
    description: Annotated[str, Field(max_length=1000)] | None = None
    event_types: EventTypes | None = None


class RotateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grace: Annotated[float, Field(ge=0, le=30 * 24 * 3600)] | None = Field(
        default=None,
        description="Seconds the old secret keeps signing (default: the configured grace)",
    )
    secret: str | None = None


class DisableIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Annotated[str, Field(min_length=1, max_length=500)] = "disabled by an operator"


class EndpointOut(BaseModel):
    id: str
    url: str
    description: str
    event_types: list[str]
    enabled: bool
    disabled_reason: str | None
    disabled_at: float | None
    failures: int
    failing_since: float | None
    previous_secret_expires_at: float | None
    created_at: float
    updated_at: float

    @classmethod
    def of(cls, e: WebhookEndpoint) -> EndpointOut:
        return cls(
            id=e.id,
            url=e.url,
            description=e.description,
            event_types=list(e.event_types),
            enabled=e.enabled,
            disabled_reason=e.disabled_reason,
            disabled_at=e.disabled_at,
            failures=e.failures,
            failing_since=e.failing_since,
            previous_secret_expires_at=e.previous_secret_expires_at,
            created_at=e.created_at,
            updated_at=e.updated_at,
        )


class EndpointWithSecret(EndpointOut):
    secret: str = Field(description="Shown only here: store it to verify signatures")

    @classmethod
    def with_secret(cls, e: WebhookEndpoint) -> EndpointWithSecret:
        return cls(**EndpointOut.of(e).model_dump(), secret=e.secret)


class EndpointPage(BaseModel):
    items: list[EndpointOut]
    next_cursor: str | None


@router.post("", status_code=201, responses=PROBLEM, summary="Create an endpoint")
async def create(request: Request, body: EndpointIn) -> EndpointWithSecret:
    endpoint = await services(request).webhooks.create(
        body.url,
        description=body.description,
        event_types=tuple(body.event_types),
        secret=body.secret,
    )
    return EndpointWithSecret.with_secret(endpoint)


@router.get("", responses=PROBLEM, summary="Endpoints in id order, a page at a time")
async def list_endpoints(
    request: Request,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> EndpointPage:
    found = await services(request).webhooks.page(cursor, limit + 1)
    more = len(found) > limit
    items = found[:limit]
    return EndpointPage(
        items=[EndpointOut.of(e) for e in items],
        next_cursor=items[-1].id if more and items else None,
    )


@router.get("/{endpoint_id}", responses=PROBLEM, summary="An endpoint (without its secret)")
async def get(request: Request, endpoint_id: str) -> EndpointOut:
    return EndpointOut.of(await services(request).webhooks.get(endpoint_id))


@router.patch("/{endpoint_id}", responses=PROBLEM, summary="Change URL, description or filter")
async def update(request: Request, endpoint_id: str, body: EndpointPatch) -> EndpointOut:
    endpoint = await services(request).webhooks.update(
        endpoint_id,
        url=body.url,
        description=body.description,
        event_types=None if body.event_types is None else tuple(body.event_types),
    )
    return EndpointOut.of(endpoint)


@router.delete("/{endpoint_id}", status_code=204, responses=PROBLEM, summary="Delete")
async def delete(request: Request, endpoint_id: str) -> Response:
    await services(request).webhooks.delete(endpoint_id)
    return Response(status_code=204)


@router.post(
    "/{endpoint_id}/rotate-secret",
    responses=PROBLEM,
    summary="A new signing secret (shown once); the old one signs too for the grace period",
)
async def rotate_secret(
    request: Request, endpoint_id: str, body: RotateIn | None = None
) -> EndpointWithSecret:
    b = body or RotateIn()
    endpoint = await services(request).webhooks.rotate_secret(
        endpoint_id, grace=b.grace, secret=b.secret
    )
    return EndpointWithSecret.with_secret(endpoint)


@router.post(
    "/{endpoint_id}/enable", responses=PROBLEM, summary="Enable again (ends the failure streak)"
)
async def enable(request: Request, endpoint_id: str) -> EndpointOut:
    return EndpointOut.of(await services(request).webhooks.enable(endpoint_id))


@router.post("/{endpoint_id}/disable", responses=PROBLEM, summary="Stop sending to it")
async def disable(request: Request, endpoint_id: str, body: DisableIn | None = None) -> EndpointOut:
    reason = (body or DisableIn()).reason
    return EndpointOut.of(await services(request).webhooks.disable(endpoint_id, reason))
