"""Recurring schedules on the job queue, with a controllable clock: one event per occurrence
in the subscriber's local time, none missed or doubled across a crash, pause/resume/cancel,
and a zone change applying from the next occurrence."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from tidings.adapters.clock import ManualClock
from tidings.adapters.memory import MemoryEventStore, MemoryJobQueue
from tidings.adapters.memory.schedules import MemoryScheduleStore
from tidings.errors import Conflict, InvalidInput
from tidings.services.ingest import IngestService
from tidings.services.schedules import FIRE_JOB, ScheduleService
from tidings.types import EventState, Priority

BERLIN = ZoneInfo("Europe/Berlin")
START = datetime(2026, 3, 27, 12, 0, tzinfo=UTC).timestamp()  # a Friday; DST starts Sunday


class Kit:
    def __init__(self) -> None:
        self.clock = ManualClock(START)
        self.jobs = MemoryJobQueue(self.clock)
        self.events = MemoryEventStore(self.clock, self.jobs)
        self.ingest = IngestService(self.events, self.jobs, self.clock, max_payload_bytes=65536)
        self.store = MemoryScheduleStore()
        self.svc = ScheduleService(self.store, self.jobs, self.ingest, self.clock)

    async def run_due(self, *, crash: bool = False) -> int:
        """Claim due fire jobs and run them; `crash`: run but never complete (the worker
        died), so the lease lapses and the job is claimed again."""
        ran = 0
        for job in await self.jobs.claim("w", [Priority.TRANSACTIONAL], 10, 30.0):
            if job.kind != FIRE_JOB:
                await self.jobs.complete(job.id, job.lease_token or "")
                continue
            await self.svc.fire(job)
            ran += 1
            if not crash:
                await self.jobs.complete(job.id, job.lease_token or "")
        return ran

    async def until(self, when: datetime) -> None:
        """Advance the clock minute by minute, running what comes due."""
        while self.clock.now() < when.timestamp():
            self.clock.advance(60)
            await self.run_due()

    async def occurrences(self) -> list[datetime]:
        found = await self.events.list_in_state(EventState.ACCEPTED, 1000)
        return sorted(
            datetime.fromtimestamp(e.payload["occurrence"], UTC)
            .astimezone(BERLIN)
            .replace(tzinfo=None)
            for e in found
            if e.type == "digest.daily"
        )


async def daily(kit: Kit, at: str = "18:00") -> str:
    s = await kit.svc.create(
        subscriber="alice",
        timezone="Europe/Berlin",
        recurrence={"frequency": "daily", "at": at},
        event_type="digest.daily",
        payload={"kind": "daily"},
    )
    return s.id


async def test_one_event_per_local_occurrence_across_dst() -> None:
    kit = Kit()
    await daily(kit)
    await kit.until(datetime(2026, 3, 31, 0, 0, tzinfo=UTC))
    assert await kit.occurrences() == [datetime(2026, 3, d, 18, 0) for d in (27, 28, 29, 30)]
    events = await kit.events.list_in_state(EventState.ACCEPTED, 10)
    assert {e.recipients for e in events} == {("alice",)}


async def test_a_crash_mid_fire_neither_misses_nor_doubles() -> None:
    kit = Kit()
    sid = await daily(kit)
    kit.clock.advance(datetime(2026, 3, 27, 17, 0, tzinfo=UTC).timestamp() - START)
    assert await kit.run_due(crash=True) == 1  # fired, but the worker died before completing
    kit.clock.advance(31)  # the lease lapses
    assert await kit.run_due() == 1  # claimed and run again
    assert await kit.occurrences() == [datetime(2026, 3, 27, 18, 0)]
    s = await kit.store.get(sid)
    assert s.fired == 1
    await kit.until(datetime(2026, 3, 29, 0, 0, tzinfo=UTC))
    assert await kit.occurrences() == [datetime(2026, 3, 27, 18), datetime(2026, 3, 28, 18)]


async def test_pause_resume_and_cancel() -> None:
    kit = Kit()
    sid = await daily(kit, "09:00")
    await kit.svc.pause(sid)
    await kit.until(datetime(2026, 3, 30, 12, 0, tzinfo=UTC))
    assert await kit.occurrences() == []  # paused: the missed ones are skipped
    resumed = await kit.svc.resume(sid)
    assert resumed.next_at == datetime(2026, 3, 31, 7, 0, tzinfo=UTC).timestamp()
    await kit.until(datetime(2026, 4, 1, 12, 0, tzinfo=UTC))
    assert await kit.occurrences() == [datetime(2026, 3, 31, 9), datetime(2026, 4, 1, 9)]
    await kit.svc.cancel(sid)
    await kit.until(datetime(2026, 4, 3, 12, 0, tzinfo=UTC))
    assert len(await kit.occurrences()) == 2
    with pytest.raises(Conflict):
        await kit.svc.resume(sid)


async def test_a_new_time_zone_applies_from_the_next_occurrence() -> None:
    kit = Kit()
    sid = await daily(kit, "08:00")
    await kit.until(datetime(2026, 3, 28, 8, 0, tzinfo=UTC))  # the 28th 08:00 Berlin fired
    await kit.svc.set_timezone(sid, "America/New_York")
    await kit.until(datetime(2026, 3, 30, 13, 0, tzinfo=UTC))
    found = await kit.events.list_in_state(EventState.ACCEPTED, 10)
    times = sorted(datetime.fromtimestamp(e.payload["occurrence"], UTC) for e in found)
    # Berlin 08:00 on the 28th; the 29th was already queued in Berlin time; then New York
    assert times[0] == datetime(2026, 3, 28, 7, 0, tzinfo=UTC)
    assert times[-1] == datetime(2026, 3, 30, 12, 0, tzinfo=UTC)  # 08:00 EDT


@pytest.mark.parametrize(
    ("recurrence", "timezone", "field"),
    [
        ({"frequency": "hourly"}, "UTC", "recurrence.frequency"),
        ({"frequency": "daily", "at": "25:00"}, "UTC", "recurrence.at"),
        ({"frequency": "weekly", "at": "09:00"}, "UTC", "recurrence.weekdays"),
        ({"frequency": "monthly", "monthday": 0}, "UTC", "recurrence.monthday"),
        ({"frequency": "rrule", "rule": "FREQ=NEVER"}, "UTC", "recurrence.rule"),
        ({"frequency": "daily", "when": "now"}, "UTC", "recurrence.when"),
        ({"frequency": "daily"}, "Mars/Base", "timezone"),
    ],
)
async def test_bad_schedules_are_refused(
    recurrence: dict[str, object], timezone: str, field: str
) -> None:
    kit = Kit()
    with pytest.raises(InvalidInput) as err:
        await kit.svc.create(
            subscriber="a",
            timezone=timezone,
            recurrence=recurrence,
            event_type="x",
            payload={},
        )
    assert err.value.field == field
    assert await kit.jobs.claim("w", [Priority.TRANSACTIONAL], 10, 30.0) == []  # nothing queued
