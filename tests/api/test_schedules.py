"""Schedules API: create, read, pause/resume, time zone, cancel, and clear errors."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from tests.api.conftest import Api, make_settings
from tidings.adapters.clock import ManualClock
from tidings.types import EventState
from tidings.wiring import build_runtime, migrate

BODY = {
    "id": "alice-daily",
    "subscriber": "alice",
    "timezone": "Europe/Lisbon",
    "recurrence": {"frequency": "weekly", "at": "09:00", "weekdays": [0]},
    "event": {"type": "digest.weekly", "payload": {"topics": ["news"]}},
}


async def test_schedule_life(api: Api) -> None:
    c, h = api.client, api.auth()
    r = await c.post("/v1/schedules", json=BODY, headers=h)
    assert r.status_code == 201, r.text
    s = r.json()
    assert s["state"] == "active" and s["next_at"] > 0 and s["fired"] == 0
    assert (await c.post("/v1/schedules", json=BODY, headers=h)).status_code == 409
    listed = (await c.get("/v1/schedules?subscriber=alice", headers=h)).json()
    assert [x["id"] for x in listed] == ["alice-daily"]
    assert (await c.post("/v1/schedules/alice-daily/pause", headers=h)).json()["state"] == "paused"
    r = await c.post("/v1/schedules/alice-daily/resume", headers=h)
    assert r.json()["state"] == "active"
    r = await c.put(
        "/v1/schedules/alice-daily/timezone", json={"timezone": "Asia/Tokyo"}, headers=h
    )
    assert r.json()["timezone"] == "Asia/Tokyo"
    assert (await c.delete("/v1/schedules/alice-daily", headers=h)).json()["state"] == "cancelled"
    assert (await c.post("/v1/schedules/alice-daily/resume", headers=h)).status_code == 409
    assert (await c.get("/v1/schedules/nope", headers=h)).status_code == 404


async def test_bad_schedules_name_the_field(api: Api) -> None:
    c, h = api.client, api.auth()
    bad = {**BODY, "recurrence": {"frequency": "weekly", "at": "9am", "weekdays": [0]}}
    r = await c.post("/v1/schedules", json=bad, headers=h)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "recurrence.at"
    r = await c.post("/v1/schedules", json={**BODY, "timezone": "Nowhere/Land"}, headers=h)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "timezone"
    r = await c.post("/v1/schedules", json={**BODY, "extra": 1}, headers=h)
    assert r.status_code == 422
    assert (await c.post("/v1/schedules", json=BODY)).status_code == 401


async def test_a_restart_neither_misses_nor_doubles(tmp_path: Path) -> None:
    """Create a schedule, stop the process, start a new one on the same database with the
    clock past two occurrences: its workers fire each once, in order."""
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/restart.db")
    migrate(settings)
    clock = ManualClock(datetime(2026, 6, 1, 6, 0, tzinfo=UTC).timestamp())
    first = build_runtime(settings, clock)
    await first.start()
    s = await first.services.schedules.create(
        subscriber="alice",
        timezone="Europe/Berlin",
        recurrence={"frequency": "daily", "at": "09:00"},
        event_type="digest.daily",
        payload={},
    )
    await first.stop()  # nothing fired yet: 09:00 Berlin is 07:00 UTC

    clock.advance(26 * 3600)  # the next process starts a day and two hours later
    second = build_runtime(settings, clock)
    await second.start()
    try:
        for _ in range(300):
            got = await second.services.schedules.store.get(s.id)
            if got.fired >= 2:
                break
            await asyncio.sleep(0.02)
        got = await second.services.schedules.store.get(s.id)
        assert got.fired == 2  # June 1 and June 2, 09:00 Berlin
        await asyncio.sleep(0.2)  # nothing more comes
        events = [
            e
            for state in EventState
            for e in await second.services.ingest._events.list_in_state(state, 100)
            if e.type == "digest.daily"
        ]
        occurrences = sorted(e.payload["occurrence"] for e in events)
        assert occurrences == [
            datetime(2026, 6, 1, 7, 0, tzinfo=UTC).timestamp(),
            datetime(2026, 6, 2, 7, 0, tzinfo=UTC).timestamp(),
        ]
        assert got.next_at == datetime(2026, 6, 3, 7, 0, tzinfo=UTC).timestamp()
    finally:
        await second.stop()
