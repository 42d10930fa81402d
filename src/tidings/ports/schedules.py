"""Port of recurring schedules: per-subscriber cadences that trigger events."""

from __future__ import annotations

import enum
from typing import Any, Protocol

from tidings.records import record
from tidings.types import JSON


class ScheduleState(enum.StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    CANCELLED = "cancelled"


@record
class Schedule:
    id: str
    subscriber: str
    timezone: str
    recurrence: dict[str, Any]  # frequency, at, weekdays, monthday, rule
    event_type: str
    payload: JSON
    state: ScheduleState
    created_at: float
    next_at: float | None = None
    last_fired_at: float | None = None
    fired: int = 0


class ScheduleStore(Protocol):
    """Contract: `create` refuses an existing id with `Conflict`; unknown ids raise
    `NotFound`; `fired` records an occurrence once: recording the same `at` again changes
    nothing (a re-run after a crash)."""

    async def create(self, schedule: Schedule) -> Schedule: ...

    async def get(self, schedule_id: str) -> Schedule: ...

    async def for_subscriber(self, subscriber: str) -> list[Schedule]: ...

    async def update(
        self,
        schedule_id: str,
        *,
        state: ScheduleState | None = None,
        next_at: float | None = None,
        timezone: str | None = None,
    ) -> Schedule: ...

    async def fired(self, schedule_id: str, at: float, next_at: float | None) -> Schedule: ...
