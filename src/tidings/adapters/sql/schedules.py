"""Schedules in SQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.adapters.sql.engine import reader, writer
from tidings.adapters.sql.tables import schedules
from tidings.errors import Conflict, NotFound
from tidings.ports.schedules import Schedule, ScheduleState


class SqlScheduleStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._read = reader(engine)

    async def create(self, schedule: Schedule) -> Schedule:
        try:
            async with writer(self._engine) as conn:
                await conn.execute(
                    insert(schedules).values(
                        id=schedule.id,
                        subscriber=schedule.subscriber,
                        timezone=schedule.timezone,
                        recurrence=schedule.recurrence,
                        event_type=schedule.event_type,
                        payload=schedule.payload,
                        state=schedule.state.value,
                        next_at=schedule.next_at,
                        last_fired_at=schedule.last_fired_at,
                        fired=schedule.fired,
                        created_at=schedule.created_at,
                    )
                )
        except IntegrityError:
            raise Conflict(f"schedule {schedule.id} exists", field="id") from None
        return schedule

    async def get(self, schedule_id: str) -> Schedule:
        async with self._read.connect() as conn:
            row = (
                await conn.execute(select(schedules).where(schedules.c.id == schedule_id))
            ).one_or_none()
        if row is None:
            raise NotFound(f"schedule {schedule_id} not found")
        return _schedule(row._mapping)

    async def for_subscriber(self, subscriber: str) -> list[Schedule]:
        async with self._read.connect() as conn:
            rows = await conn.execute(
                select(schedules)
                .where(schedules.c.subscriber == subscriber)
                .order_by(schedules.c.created_at, schedules.c.id)
            )
            return [_schedule(r._mapping) for r in rows]

    async def update(
        self,
        schedule_id: str,
        *,
        state: ScheduleState | None = None,
        next_at: float | None = None,
        timezone: str | None = None,
    ) -> Schedule:
        values: dict[str, Any] = {}
        if state is not None:
            values["state"] = state.value
        if next_at is not None:
            values["next_at"] = next_at
        if timezone is not None:
            values["timezone"] = timezone
        if values:
            async with writer(self._engine) as conn:
                result = await conn.execute(
                    update(schedules).where(schedules.c.id == schedule_id).values(**values)
                )
            if result.rowcount == 0:
                raise NotFound(f"schedule {schedule_id} not found")
        return await self.get(schedule_id)

    async def fired(self, schedule_id: str, at: float, next_at: float | None) -> Schedule:
        s = schedules.c
        async with writer(self._engine) as conn:
            result = await conn.execute(
                update(schedules)
                .where(s.id == schedule_id, (s.last_fired_at.is_(None)) | (s.last_fired_at < at))
                .values(last_fired_at=at, fired=s.fired + 1, next_at=next_at)
            )
            if result.rowcount == 0:
                exists = (await conn.execute(select(s.id).where(s.id == schedule_id))).one_or_none()
                if exists is None:
                    raise NotFound(f"schedule {schedule_id} not found")
        return await self.get(schedule_id)


def _schedule(m: Any) -> Schedule:
    return Schedule(
        id=m["id"],
        subscriber=m["subscriber"],
        timezone=m["timezone"],
        recurrence=m["recurrence"],
        event_type=m["event_type"],
        payload=m["payload"],
        state=ScheduleState(m["state"]),
        created_at=m["created_at"],
        next_at=m["next_at"],
        last_fired_at=m["last_fired_at"],
        fired=m["fired"],
    )
