"""Recurring schedules API (scope `publish`): a subscriber's cadence that triggers events."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from tidings.api.auth import require, services
from tidings.api.problems import problem_responses
from tidings.ports.schedules import Schedule
from tidings.types import Scope

router = APIRouter(
    prefix="/v1/schedules", tags=["schedules"], dependencies=[Depends(require(Scope.PUBLISH))]
)
PROBLEM = problem_responses(401, 403, 404, 409, 422)
Id = Annotated[str, Field(min_length=1, max_length=200)]


class EventSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Annotated[str, Field(min_length=1, max_length=200)]
    payload: dict[str, Any] = Field(default_factory=dict)


class ScheduleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: Id | None = None
    subscriber: Id
    timezone: Annotated[str, Field(min_length=1, max_length=64)]
    recurrence: dict[str, Any] = Field(
        description='{"frequency": "daily"|"weekly"|"monthly"|"rrule", "at": "HH:MM", '
        '"weekdays": [0..6], "monthday": 1..31, "rule": "FREQ=..."}'
    )
    event: EventSpec


class TimezoneIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    timezone: Annotated[str, Field(min_length=1, max_length=64)]


class ScheduleOut(BaseModel):
    id: str
    subscriber: str
    timezone: str
    recurrence: dict[str, Any]
    event: EventSpec
    state: str
    next_at: float | None
    last_fired_at: float | None
    fired: int

    @classmethod
    def of(cls, s: Schedule) -> ScheduleOut:
        payload = s.payload if isinstance(s.payload, dict) else {}
        return cls(
            id=s.id,
            subscriber=s.subscriber,
            timezone=s.timezone,
            recurrence=s.recurrence,
            event=EventSpec(type=s.event_type, payload=payload),
            state=s.state.value,
            next_at=s.next_at,
            last_fired_at=s.last_fired_at,
            fired=s.fired,
        )


@router.post("", status_code=201, responses=PROBLEM, summary="Create a recurring schedule")
async def create(request: Request, body: ScheduleIn) -> ScheduleOut:
    s = await services(request).schedules.create(
        subscriber=body.subscriber,
        timezone=body.timezone,
        recurrence=body.recurrence,
        event_type=body.event.type,
        payload=body.event.payload,
        schedule_id=body.id,
    )
    return ScheduleOut.of(s)


@router.get("", summary="A subscriber's schedules")
async def for_subscriber(
    request: Request, subscriber: Annotated[str, Query(min_length=1, max_length=200)]
) -> list[ScheduleOut]:
    found = await services(request).schedules.store.for_subscriber(subscriber)
    return [ScheduleOut.of(s) for s in found]


@router.get("/{schedule_id}", responses=PROBLEM)
async def get(request: Request, schedule_id: str) -> ScheduleOut:
    return ScheduleOut.of(await services(request).schedules.store.get(schedule_id))


@router.post("/{schedule_id}/pause", responses=PROBLEM)
async def pause(request: Request, schedule_id: str) -> ScheduleOut:
    return ScheduleOut.of(await services(request).schedules.pause(schedule_id))


@router.post("/{schedule_id}/resume", responses=PROBLEM)
async def resume(request: Request, schedule_id: str) -> ScheduleOut:
    return ScheduleOut.of(await services(request).schedules.resume(schedule_id))


@router.put("/{schedule_id}/timezone", responses=PROBLEM)
async def set_timezone(request: Request, schedule_id: str, body: TimezoneIn) -> ScheduleOut:
    return ScheduleOut.of(
        await services(request).schedules.set_timezone(schedule_id, body.timezone)
    )


@router.delete("/{schedule_id}", responses=PROBLEM, summary="Cancel")
async def cancel(request: Request, schedule_id: str) -> ScheduleOut:
    return ScheduleOut.of(await services(request).schedules.cancel(schedule_id))
