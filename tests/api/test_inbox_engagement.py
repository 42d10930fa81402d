"""In-app engagement over HTTP, on SQLite and PostgreSQL: a mark in the inbox (one item, by
ids, up to a watermark, all) is recorded on the item's notification message and wakes the
run waiting for it; a status reported for an in-app message marks its inbox item, with the
live counts. Neither side echoes the other."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.api.conftest import Api, admin_sql, make_settings, open_api
from tidings.adapters.clock import ManualClock
from tidings.config import InboxSettings
from tidings.services import notify as notify_module

SECRET = "inbox-engagement-secret"
TIMEOUT = 600.0  # the workflow's wait: 10 min
WORKFLOW: dict[str, Any] = {
    "steps": [
        {"id": "inapp", "type": "in_app", "content": {"title": "Comment", "body": "New reply"}},
        {
            "id": "email",
            "type": "email",
            "content": {"subject": "New reply", "text": "You have a reply"},
            "wait_for": {"step": "inapp", "status": "seen", "timeout": "10m"},
        },
    ]
}


class Env:
    def __init__(self, api: Api, clock: ManualClock) -> None:
        self.api = api
        self.clock = clock
        self.c = api.client
        self.h = api.auth()


@pytest.fixture(params=["sqlite", "postgres"])
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    database = f"tidings_test_engagement_{os.getpid()}"
    pg_url: str | None = None
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/api.db"
    else:
        pg_url = request.getfixturevalue("pg_url")  # skips, or under CI fails, without PG
        await admin_sql(pg_url, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        await admin_sql(pg_url, f"CREATE DATABASE {database}")
        url = pg_url.rsplit("/", 1)[0] + "/" + database
    settings = make_settings(url, inbox=InboxSettings(hmac_secret=SECRET))
    try:
        clock = ManualClock(1_800_000_000.0)
        async for api in open_api(settings, clock):
            r = await api.client.put("/v1/workflows/reply", json=WORKFLOW, headers=api.auth())
            assert r.status_code == 200, r.text
            yield Env(api, clock)
    finally:
        if pg_url is not None:
            await admin_sql(pg_url, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def as_sub(subscriber: str) -> dict[str, str]:
    digest = hmac.new(SECRET.encode(), subscriber.encode(), hashlib.sha256).hexdigest()
    return {"X-Subscriber-Id": subscriber, "X-Subscriber-Hash": digest}


async def notify(env: Env, *recipients: str) -> str:
    """Trigger the workflow for the recipients; the event id once every run waits."""
    for sid in recipients:
        r = await env.c.put(
            f"/v1/subscribers/{sid}", json={"email": f"{sid}@x.test"}, headers=env.h
        )
        assert r.status_code in (200, 201), r.text
    r = await env.c.post(
        "/v1/events", json={"type": "reply", "recipients": list(recipients)}, headers=env.h
    )
    assert r.status_code == 202, r.text
    event_id: str = r.json()["id"]
    await settle(env, event_id, lambda runs: all(run["state"] == "waiting" for run in runs))
    return event_id


async def settle(env: Env, event_id: str, done: Any) -> dict[str, Any]:
    """The event's report once `done(runs)` holds (real time passes, the clock does not)."""
    report: dict[str, Any] = {}
    for _ in range(300):
        r = await env.c.get(f"/v1/events/{event_id}/notifications", headers=env.h)
        assert r.status_code == 200, r.text
        report = r.json()
        if report["runs"] and done(report["runs"]):
            return report
        await asyncio.sleep(0.02)
    raise AssertionError(f"runs did not settle: {report['runs']}")


def by_recipient(report: dict[str, Any], channel: str = "in_app") -> dict[str, dict[str, Any]]:
    return {m["recipient"]: m for m in report["messages"] if m["channel"] == channel}


def step_of(report: dict[str, Any], recipient: str, step: str) -> dict[str, Any]:
    [entry] = [
        t
        for t in report["trail"]
        if t["type"] == "step" and t["recipient"] == recipient and t["step"] == step
    ]
    return entry


def inbox_reports(report: dict[str, Any], recipient: str) -> list[str]:
    """The engagement the inbox recorded on the recipient's message, in trail order."""
    return [
        t["status"]
        for t in report["trail"]
        if t["type"] == "delivery" and t["recipient"] == recipient and t.get("source") == "inbox"
    ]


async def test_seeing_the_item_ends_the_wait_at_once_without_the_email(env: Env) -> None:
    sent_at = env.clock.now()
    event_id = await notify(env, "ana", "bob")
    message = by_recipient(await settle(env, event_id, lambda runs: True))["ana"]
    env.clock.advance(120)
    seen_at = env.clock.now()

    r = await env.c.post(f"/v1/inbox/items/{message['id']}/seen", headers=as_sub("ana"))
    assert r.status_code == 200, r.text

    def ana_done(runs: list[dict[str, Any]]) -> bool:
        return any(run["recipient"] == "ana" and run["state"] == "done" for run in runs)

    report = await settle(env, event_id, ana_done)
    assert env.clock.now() < sent_at + TIMEOUT  # the deadline never came
    email = step_of(report, "ana", "email")
    assert (email["outcome"], email["reason"]) == ("not_needed", "inapp_seen")
    assert "ana" not in by_recipient(report, "email")  # no email message was made
    got = (await env.c.get(f"/v1/messages/{message['id']}", headers=env.h)).json()
    assert got["engagement"] == {"seen": seen_at}
    assert inbox_reports(report, "ana") == ["seen"]
    # bob saw nothing: his run still waits for the deadline
    assert {run["recipient"]: run["state"] for run in report["runs"]}["bob"] == "waiting"

    # marking again changes nothing and records nothing more
    env.clock.advance(5)
    r = await env.c.post(f"/v1/subscribers/ana/inbox/items/{message['id']}/seen", headers=env.h)
    assert r.status_code == 200, r.text
    report = await settle(env, event_id, ana_done)
    assert inbox_reports(report, "ana") == ["seen"]
    got = (await env.c.get(f"/v1/messages/{message['id']}", headers=env.h)).json()
    assert got["engagement"] == {"seen": seen_at}


async def test_mark_all_read_records_read_on_every_message_in_one_batch(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = [await notify(env, "ana") for _ in range(3)]
    # an item added straight to the inbox has no message: it is marked, nothing more
    r = await env.c.post("/v1/subscribers/ana/inbox", json={"title": "by hand"}, headers=env.h)
    assert r.status_code == 201, r.text
    r = await env.c.post(
        "/v1/subscribers/ana/inbox",
        json={"title": "by hand, with an event", "event_id": "not-a-notification"},
        headers=env.h,
    )
    assert r.status_code == 201, r.text
    runs = env.api.runtime.services.notify.runs
    calls: list[int] = []
    update_messages = runs.update_messages

    async def counted(updates: Any, *, at: float) -> Any:
        calls.append(len(updates))
        return await update_messages(updates, at=at)

    monkeypatch.setattr(runs, "update_messages", counted)
    env.clock.advance(30)
    read_at = env.clock.now()

    r = await env.c.post("/v1/inbox/mark", json={"action": "read"}, headers=as_sub("ana"))
    assert r.status_code == 200, r.text
    assert r.json() == {"changed": 5, "counts": {"unread": 0, "unseen": 0}}
    assert calls == [3]  # the three messages in one write
    for event_id in events:
        report = await settle(env, event_id, lambda runs: runs[0]["state"] == "done")
        message = by_recipient(report)["ana"]
        assert message["engagement"] == {"seen": read_at, "read": read_at}
        assert sorted(inbox_reports(report, "ana")) == ["read", "seen"]
        assert step_of(report, "ana", "email")["outcome"] == "not_needed"


async def test_bulk_marks_report_in_chunks_and_only_what_changed(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(notify_module, "INBOX_REPORT_CHUNK", 2)
    events = [await notify(env, "ana") for _ in range(3)]
    ids = [by_recipient(await settle(env, e, lambda runs: True))["ana"]["id"] for e in events]
    runs = env.api.runtime.services.notify.runs
    calls: list[int] = []
    update_messages = runs.update_messages

    async def counted(updates: Any, *, at: float) -> Any:
        calls.append(len(updates))
        return await update_messages(updates, at=at)

    monkeypatch.setattr(runs, "update_messages", counted)
    me = as_sub("ana")
    r = await env.c.post("/v1/inbox/mark", json={"action": "seen", "ids": ids[:1]}, headers=me)
    assert r.json()["changed"] == 1 and calls == [1]
    # up to the watermark of a page showing all three: the first is seen already
    watermark = (await env.c.get("/v1/inbox", headers=me)).json()["watermark"]
    env.clock.advance(10)
    r = await env.c.post("/v1/inbox/mark", json={"action": "seen", "until": watermark}, headers=me)
    assert r.json()["changed"] == 2 and calls == [1, 2]
    r = await env.c.post("/v1/inbox/mark", json={"action": "archived", "ids": ids}, headers=me)
    assert r.json()["changed"] == 3 and calls == [1, 2, 2, 1]  # chunks of two
    # undoing a state is no engagement; marking unknown ids is no error
    r = await env.c.post("/v1/inbox/mark", json={"action": "unarchived", "ids": ids}, headers=me)
    assert r.json()["changed"] == 3
    r = await env.c.post("/v1/inbox/mark", json={"action": "seen", "ids": ["nope"]}, headers=me)
    assert r.status_code == 200 and r.json()["changed"] == 0
    assert calls == [1, 2, 2, 1]
    for message_id in ids:
        got = (await env.c.get(f"/v1/messages/{message_id}", headers=env.h)).json()
        assert set(got["engagement"]) == {"seen", "archived"}


async def test_a_reported_status_marks_the_inbox_item_with_live_counts(env: Env) -> None:
    event_id = await notify(env, "ana")
    message = by_recipient(await settle(env, event_id, lambda runs: True))["ana"]
    me = as_sub("ana")
    assert (await env.c.get("/v1/inbox/counts", headers=me)).json() == {"unread": 1, "unseen": 1}
    env.clock.advance(60)
    seen_at = env.clock.now()

    r = await env.c.post(
        f"/v1/messages/{message['id']}/status", json={"status": "seen"}, headers=env.h
    )
    assert r.status_code == 200, r.text
    assert r.json()["engagement"] == {"seen": seen_at}
    item = (await env.c.get(f"/v1/inbox/items/{message['id']}", headers=me)).json()
    assert item["seen_at"] is not None and item["read_at"] is None
    assert (await env.c.get("/v1/inbox/counts", headers=me)).json() == {"unread": 1, "unseen": 0}
    history = await env.api.runtime.services.hub.history("inbox:#ana", limit=10)
    live = [orjson.loads(p.data) for p in history.publications]
    assert live[-1] == {"type": "counts", "unread": 1, "unseen": 0}
    assert live[-2]["type"] == "item" and live[-2]["item"]["seen_at"] is not None
    report = await settle(env, event_id, lambda runs: runs[0]["state"] == "done")
    assert step_of(report, "ana", "email")["reason"] == "inapp_seen"

    # reading reported later: the item is read, and the message is not reported twice
    r = await env.c.post(
        f"/v1/messages/{message['id']}/status", json={"status": "read"}, headers=env.h
    )
    assert r.status_code == 200, r.text
    assert set(r.json()["engagement"]) == {"seen", "read"}
    assert (await env.c.get("/v1/inbox/counts", headers=me)).json() == {"unread": 0, "unseen": 0}
    report = await settle(env, event_id, lambda runs: runs[0]["state"] == "done")
    reported = [
        (t["status"], t.get("source"))
        for t in report["trail"]
        if t["type"] == "delivery" and t.get("reported")
    ]
    assert reported == [("seen", None), ("read", None)]  # no echo from the inbox
