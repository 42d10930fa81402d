"""Recurring schedules per subscriber ("daily at 18:00 my time", "Mondays 09:00"): each
occurrence triggers an event for the subscriber through the normal ingest.

Durability comes from the job queue: the next occurrence is a `schedule.fire` job with
`run_at` and a dedupe key per occurrence; workers claim it with a lease. Firing ingests the
event with the idempotency key `schedule:<id>:<occurrence>`, records the occurrence, then
enqueues the next one. A crash anywhere re-runs the job after its lease: the event replays,
the record holds, the next job is deduplicated. So a restart neither misses nor doubles an
occurrence. The next occurrence is computed on the schedule's time zone when it fires (a
changed zone applies from the next occurrence), with the DST and month-end rules of
`core.sendtime`. Paused schedules skip the occurrences they miss; resuming starts from now.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, time
from typing import Any

from tidings.core.sendtime import Frequency, Recurrence, zone
from tidings.errors import Conflict, InvalidInput
from tidings.ports.clock import Clock
from tidings.ports.jobs import JobQueue
from tidings.ports.schedules import Schedule, ScheduleState, ScheduleStore
from tidings.services.ingest import EventInput, IngestService
from tidings.services.worker import PermanentJobError
from tidings.types import JSON, Job, NewJob, Priority

FIRE_JOB = "schedule.fire"
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def parse_recurrence(spec: Any) -> Recurrence:
    if not isinstance(spec, dict):
        raise InvalidInput("recurrence is an object", field="recurrence")
    unknown = set(spec) - {"frequency", "at", "weekdays", "monthday", "rule"}
    if unknown:
        name = sorted(unknown)[0]
        raise InvalidInput(f"unknown field {name!r}", field=f"recurrence.{name}")
    try:
        frequency = Frequency(str(spec.get("frequency")))
    except ValueError:
        allowed = ", ".join(f.value for f in Frequency)
        raise InvalidInput(
            f"frequency must be one of {allowed}", field="recurrence.frequency"
        ) from None
    at_text = spec.get("at", "09:00")
    match = _CLOCK.match(at_text) if isinstance(at_text, str) else None
    if match is None:
        raise InvalidInput("at is a local time HH:MM", field="recurrence.at")
    weekdays = spec.get("weekdays", [])
    if not isinstance(weekdays, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in weekdays
    ):
        raise InvalidInput("weekdays is a list of 0 (Monday) .. 6", field="recurrence.weekdays")
    monthday = spec.get("monthday", 1)
    if not isinstance(monthday, int) or isinstance(monthday, bool):
        raise InvalidInput("monthday is 1..31", field="recurrence.monthday")
    rule = spec.get("rule", "")
    if not isinstance(rule, str):
        raise InvalidInput("rule is an RRULE string", field="recurrence.rule")
    try:
        return Recurrence(
            frequency,
            time(int(match.group(1)), int(match.group(2))),
            frozenset(weekdays),
            monthday,
            rule,
        )
    except InvalidInput as exc:
        raise InvalidInput(exc.message, field=f"recurrence.{exc.field}") from None


class ScheduleService:
    def __init__(
        self,
        store: ScheduleStore,
        jobs: JobQueue,
        ingest: IngestService,
        clock: Clock,
        on_enqueue: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self._jobs = jobs
        self._ingest = ingest
        self._clock = clock
        self._on_enqueue = on_enqueue

    def _next(self, schedule: Schedule, after: float) -> float:
        rec = parse_recurrence(schedule.recurrence)
        at = rec.next_after(datetime.fromtimestamp(after, UTC), zone(schedule.timezone))
        return at.timestamp()

    async def _enqueue(self, schedule: Schedule, at: float) -> None:
        await self._jobs.enqueue(
            NewJob(
                kind=FIRE_JOB,
                payload={"schedule": schedule.id, "at": at},
                lane=Priority.TRANSACTIONAL,
                run_at=at,
                dedupe_key=f"schedule:{schedule.id}:{at!r}",
            )
        )
        if self._on_enqueue is not None:
            self._on_enqueue()

    async def create(
        self,
        *,
        subscriber: str,
        timezone: str,
        recurrence: dict[str, Any],
        event_type: str,
        payload: JSON,
        schedule_id: str | None = None,
    ) -> Schedule:
        zone(timezone)
        parse_recurrence(recurrence)
        schedule = Schedule(
            id=schedule_id or str(uuid.uuid4()),
            subscriber=subscriber,
            timezone=timezone,
            recurrence=recurrence,
            event_type=event_type,
            payload=payload,
            state=ScheduleState.ACTIVE,
            created_at=self._clock.now(),
        )
        first = self._next(schedule, self._clock.now())
        schedule = await self.store.create(dataclasses.replace(schedule, next_at=first))
        await self._enqueue(schedule, first)
        return schedule

    async def pause(self, schedule_id: str) -> Schedule:
        s = await self.store.get(schedule_id)
        if s.state is ScheduleState.CANCELLED:
            raise Conflict(f"schedule {schedule_id} is cancelled", field="state")
        return await self.store.update(schedule_id, state=ScheduleState.PAUSED)

    async def resume(self, schedule_id: str) -> Schedule:
        s = await self.store.get(schedule_id)
        if s.state is ScheduleState.CANCELLED:
            raise Conflict(f"schedule {schedule_id} is cancelled", field="state")
        if s.state is ScheduleState.ACTIVE:
            return s
        nxt = self._next(s, self._clock.now())
        s = await self.store.update(schedule_id, state=ScheduleState.ACTIVE, next_at=nxt)
        await self._enqueue(s, nxt)
        return s

    async def cancel(self, schedule_id: str) -> Schedule:
        return await self.store.update(schedule_id, state=ScheduleState.CANCELLED)

    async def set_timezone(self, schedule_id: str, timezone: str) -> Schedule:
        """The subscriber moved: later occurrences follow the new zone."""
        zone(timezone)
        return await self.store.update(schedule_id, timezone=timezone)

    async def fire(self, job: Job) -> None:
        """The `schedule.fire` job handler."""
        schedule_id = str(job.payload.get("schedule", ""))
        raw_at = job.payload.get("at")
        if not isinstance(raw_at, int | float):
            raise PermanentJobError("a schedule.fire job needs its occurrence time")
        at = float(raw_at)
        s = await self.store.get(schedule_id)
        if s.state is not ScheduleState.ACTIVE or s.next_at is None:
            return  # paused or cancelled: the job lapses
        if at < s.next_at and s.last_fired_at != at:
            return  # an occurrence superseded by a resume
        payload: JSON = {"schedule": s.id, "occurrence": at, "data": s.payload}
        await self._ingest.ingest(
            EventInput(type=s.event_type, payload=payload, recipients=(s.subscriber,)),
            idempotency_key=f"schedule:{s.id}:{at!r}",
        )
        nxt = self._next(s, at)
        s = await self.store.fired(s.id, at, nxt)
        if s.state is ScheduleState.ACTIVE and s.next_at is not None:
            await self._enqueue(s, s.next_at)
