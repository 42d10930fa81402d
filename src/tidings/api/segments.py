"""Segments API (scope `publish`): named audiences for campaigns, a topic and/or a filter over
subscriber profiles, with a count and a preview of the subscribers they hold now."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from tidings.api.auth import require, services
from tidings.api.problems import problem_responses
from tidings.api.subscribers import Cursor
from tidings.core.subscribers import ID_PATTERN
from tidings.errors import NotFound
from tidings.ports.segments import Segment
from tidings.services.segments import MAX_PAGE, SegmentService
from tidings.types import Scope

router = APIRouter(
    prefix="/v1/segments", tags=["segments"], dependencies=[Depends(require(Scope.PUBLISH))]
)
PROBLEM = problem_responses(401, 403, 404, 422)
SegmentKey = Annotated[str, Path(min_length=1, max_length=200, pattern=ID_PATTERN)]
FILTER_HELP = (
    "A condition over subscriber fields in the workflow condition language: paths "
    "subscriber.id|email|phone|locale|timezone or subscriber.data.<field>, operators "
    'eq ne gt gte lt lte in contains exists, and/or/not. Example: {"subscriber.locale": '
    '{"in": ["de", "de-AT"]}, "subscriber.data.orders": {"gte": 3}}.'
)


class SegmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    topic: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        None, description="Only members of this topic; default every subscriber."
    )
    filter: dict[str, Any] | None = Field(None, description=FILTER_HELP)


class SegmentOut(BaseModel):
    key: str
    name: str
    topic: str | None
    filter: Any
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, s: Segment) -> SegmentOut:
        return cls(
            key=s.key,
            name=s.name,
            topic=s.topic,
            filter=s.filter,
            created_at=datetime.fromtimestamp(s.created_at, UTC),
            updated_at=datetime.fromtimestamp(s.updated_at, UTC),
        )


class CountOut(BaseModel):
    count: int = Field(description="Subscribers the segment holds now.")


class MembersOut(BaseModel):
    items: list[str] = Field(description="Subscriber ids, ascending.")
    next_cursor: str | None = Field(
        description="A page looks at a bounded number of candidates: it may hold fewer than "
        "`limit` ids and still have a next page. null at the end."
    )


def segments(request: Request) -> SegmentService:
    found = services(request).segments
    if found is None:  # pragma: no cover - the runtime always builds one
        raise NotFound("segments are not configured")
    return found


@router.put("/{key}", responses=PROBLEM, summary="Create or replace a segment")
async def put(request: Request, response: Response, key: SegmentKey, body: SegmentIn) -> SegmentOut:
    s, created = await segments(request).put(
        key, name=body.name, topic=body.topic, filter=body.filter
    )
    response.status_code = 201 if created else 200
    return SegmentOut.of(s)


@router.get("", summary="Segments, by key")
async def page(
    request: Request,
    after: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> list[SegmentOut]:
    return [SegmentOut.of(s) for s in await segments(request).page(after=after, limit=limit)]


@router.get("/{key}", responses=PROBLEM, summary="A segment")
async def get(request: Request, key: SegmentKey) -> SegmentOut:
    return SegmentOut.of(await segments(request).get(key))


@router.delete("/{key}", status_code=204, responses=PROBLEM, summary="Delete a segment")
async def delete(request: Request, key: SegmentKey) -> None:
    await segments(request).delete(key)


@router.get("/{key}/count", responses=PROBLEM, summary="How many subscribers it holds now")
async def count(request: Request, key: SegmentKey) -> CountOut:
    return CountOut(count=await segments(request).count(key))


@router.get("/{key}/subscribers", responses=PROBLEM, summary="The subscribers it holds now")
async def members(
    request: Request,
    key: SegmentKey,
    cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> MembersOut:
    found = await segments(request).members(key, cursor=cursor, limit=limit)
    return MembersOut(items=found.ids, next_cursor=found.next_cursor)
