"""In-process schedule store (reference for the contract suite)."""

from __future__ import annotations

import dataclasses

from tidings.errors import Conflict, NotFound
from tidings.ports.schedules import Schedule, ScheduleState


class MemoryScheduleStore:
    def __init__(self) -> None:
        self._items: dict[str, Schedule] = {}

    async def create(self, schedule: Schedule) -> Schedule:
        if schedule.id in self._items:
            raise Conflict(f"schedule {schedule.id} exists", field="id")
        self._items[schedule.id] = schedule
        return schedule

    async def get(self, schedule_id: str) -> Schedule:
        found = self._items.get(schedule_id)
        if found is None:
            raise NotFound(f"schedule {schedule_id} not found")
        return found

    async def for_subscriber(self, subscriber: str) -> list[Schedule]:
        return sorted(
            (s for s in self._items.values() if s.subscriber == subscriber),
            key=lambda s: (s.created_at, s.id),
        )

    async def update(
        self,
        schedule_id: str,
        *,
        state: ScheduleState | None = None,
        next_at: float | None = None,
        timezone: str | None = None,
    ) -> Schedule:
        s = await self.get(schedule_id)
        s = dataclasses.replace(
            s,
            state=state if state is not None else s.state,
            next_at=next_at if next_at is not None else s.next_at,
            timezone=timezone if timezone is not None else s.timezone,
        )
        self._items[schedule_id] = s
        return s

    async def fired(self, schedule_id: str, at: float, next_at: float | None) -> Schedule:
        s = await self.get(schedule_id)
        if s.last_fired_at is not None and s.last_fired_at >= at:
            return s  # recorded already
        s = dataclasses.replace(s, last_fired_at=at, fired=s.fired + 1, next_at=next_at)
        self._items[schedule_id] = s
        return s
