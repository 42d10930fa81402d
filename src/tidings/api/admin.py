"""Admin endpoints (admin scope): API keys and the dead-letter queue."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from tidings.api.auth import require, services
from tidings.api.problems import problem_responses
from tidings.errors import InvalidInput
from tidings.services.deadletters import MAX_SCAN, DeadFilter, DeadLetters
from tidings.types import ApiKey, Job, Scope

router = APIRouter(prefix="/v1/admin", tags=["admin"])
ADMIN = Depends(require(Scope.ADMIN))
PROBLEM = problem_responses(401, 403, 404, 422)


class ApiKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=100)]
    scopes: Annotated[list[Scope], Field(min_length=1)]


class ApiKeyOut(BaseModel):
    id: str
    name: str
    prefix: str
    scopes: list[Scope]
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def of(cls, k: ApiKey) -> ApiKeyOut:
        return cls(
            id=k.id,
            name=k.name,
            prefix=k.prefix,
            scopes=sorted(k.scopes),
            created_at=_dt(k.created_at),
            revoked_at=_dt(k.revoked_at) if k.revoked_at else None,
        )


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The secret; shown only in this response.")


class DeadJobOut(BaseModel):
    id: str
    kind: str
    lane: str
    payload: dict[str, Any]
    attempts: int
    last_error: str | None
    created_at: datetime
    messages: list[dict[str, Any]] | None = Field(
        default=None,
        description="One dead letter's view only: the messages a delivery job carries, as "
        "they stand (event, recipient, channel, provider, status, error)",
    )

    @classmethod
    def of(cls, j: Job) -> DeadJobOut:
        return cls(
            id=j.id,
            kind=j.kind,
            lane=j.lane.value,
            payload=j.payload,
            attempts=j.attempts,
            last_error=j.last_error,
            created_at=_dt(j.created_at),
        )


@router.post("/apikeys", status_code=201, responses=PROBLEM, dependencies=[ADMIN])
async def create_key(request: Request, body: ApiKeyIn) -> ApiKeyCreated:
    key, secret = await services(request).apikeys.create(body.name, frozenset(body.scopes))
    return ApiKeyCreated(**ApiKeyOut.of(key).model_dump(), key=secret)


@router.get("/apikeys", responses=PROBLEM, dependencies=[ADMIN])
async def list_keys(request: Request) -> list[ApiKeyOut]:
    return [ApiKeyOut.of(k) for k in await services(request).apikeys.list()]


@router.delete("/apikeys/{key_id}", status_code=204, responses=PROBLEM, dependencies=[ADMIN])
async def revoke_key(request: Request, key_id: str) -> None:
    await services(request).apikeys.revoke(key_id)


@router.get("/dlq", responses=PROBLEM, dependencies=[ADMIN])
async def list_dead(
    request: Request,
    kind: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[DeadJobOut]:
    return [DeadJobOut.of(j) for j in await services(request).jobs.list_dead(limit, kind)]


class DeadFilterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Annotated[str | None, Field(max_length=100)] = None
    error_contains: Annotated[str | None, Field(min_length=1, max_length=500)] = None
    all: bool = False  # no filter: every dead job, only when asked for in so many words
    limit: Annotated[int, Field(ge=1, le=MAX_SCAN)] = 1000

    def selection(self) -> DeadFilter:
        """The filter; an empty body selects nothing (as the CLI asks for `--all`)."""
        if self.kind is None and self.error_contains is None and not self.all:
            raise InvalidInput(
                'give "kind" and/or "error_contains", or "all": true for every dead job',
                field="all",
            )
        return DeadFilter(self.kind, self.error_contains, self.limit)


class DeadBatchOut(BaseModel):
    count: int
    ids: list[str]


@router.post(
    "/dlq/replay",
    responses=PROBLEM,
    dependencies=[ADMIN],
    summary="Replay every dead job matching a filter (kind, text in the last error)",
)
async def replay_matching(request: Request, body: DeadFilterIn) -> DeadBatchOut:
    ids = await DeadLetters(services(request).jobs).replay(body.selection())
    return DeadBatchOut(count=len(ids), ids=ids)


@router.post(
    "/dlq/discard",
    responses=PROBLEM,
    dependencies=[ADMIN],
    summary="Discard every dead job matching a filter",
)
async def discard_matching(request: Request, body: DeadFilterIn) -> DeadBatchOut:
    ids = await DeadLetters(services(request).jobs).discard(body.selection())
    return DeadBatchOut(count=len(ids), ids=ids)


@router.get("/dlq/{job_id}", responses=PROBLEM, dependencies=[ADMIN], summary="Inspect one")
async def get_dead(request: Request, job_id: str) -> DeadJobOut:
    found = services(request)
    job = await DeadLetters(found.jobs).get(job_id)
    out = DeadJobOut.of(job)
    if found.notify is not None:
        out.messages = await found.notify.job_messages(job.payload)
    return out


@router.post("/dlq/{job_id}/replay", status_code=204, responses=PROBLEM, dependencies=[ADMIN])
async def replay_dead(request: Request, job_id: str) -> None:
    await services(request).jobs.replay(job_id)


@router.delete("/dlq/{job_id}", status_code=204, responses=PROBLEM, dependencies=[ADMIN])
async def discard_dead(request: Request, job_id: str) -> None:
    await services(request).jobs.discard(job_id)


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)
