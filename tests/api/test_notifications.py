"""The notification API over HTTP: workflows defined through the API, the trail of an event
and of a subscriber, message reports; errors as problem+json naming the field."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.api.conftest import Api, make_settings, open_api
from tidings.config import NotifySettings

WORKFLOW: dict[str, Any] = {
    "name": "Order shipped",
    "steps": [
        {
            "id": "inapp",
            "type": "in_app",
            "content": {"title": "Order {{ payload.order }} shipped", "body": "On its way"},
        },
        {
            "id": "email",
            "type": "email",
            "content": {"subject": "Shipped", "text": "On its way"},
            "wait_for": {"step": "inapp", "status": "read", "timeout": "1h"},
        },
    ],
}


async def settle(api: Api, event_id: str, states: set[str]) -> dict[str, Any]:
    """The event's notification report once every run is in one of `states`."""
    for _ in range(200):
        r = await api.client.get(f"/v1/events/{event_id}/notifications", headers=api.auth())
        assert r.status_code == 200, r.text
        report: dict[str, Any] = r.json()
        if report["runs"] and {run["state"] for run in report["runs"]} <= states:
            return report
        await asyncio.sleep(0.02)
    raise AssertionError(f"runs did not reach {states}: {report}")


async def test_define_trigger_and_explain(api: Api) -> None:
    h = api.auth()
    r = await api.client.put("/v1/workflows/order.shipped", json=WORKFLOW, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["revision"] == 1
    again = await api.client.put("/v1/workflows/order.shipped", json=WORKFLOW, headers=h)
    assert again.json()["revision"] == 2
    listed = await api.client.get("/v1/workflows", headers=h)
    assert [w["key"] for w in listed.json()["items"]] == ["order.shipped"]

    await api.client.put("/v1/subscribers/ana", json={"email": "ana@example.com"}, headers=h)
    r = await api.client.post(
        "/v1/events",
        json={"type": "order.shipped", "recipients": ["ana"], "payload": {"order": 42}},
        headers=h,
    )
    assert r.status_code == 202, r.text
    event_id = r.json()["id"]
    report = await settle(api, event_id, {"waiting"})
    [run] = report["runs"]
    assert run["recipient"] == "ana" and run["wake_at"] is not None
    [message] = report["messages"]
    assert message["channel"] == "in_app" and message["status"] == "delivered"
    [step] = [t for t in report["trail"] if t["type"] == "step"]
    assert step["step"] == "inapp" and step["outcome"] == "sent"
    assert [d["stage"] for d in step["decisions"]] == [
        "preferences",
        "address",
        "schedule",
        "frequency_cap",
        "suppression",
        "idempotency",
    ]
    feed = await api.client.get("/v1/subscribers/ana/inbox", headers=h)
    assert feed.json()["items"][0]["title"] == "Order 42 shipped"

    # a click reported for the in-app message: the email is not needed any more
    r = await api.client.post(
        f"/v1/messages/{message['id']}/status", json={"status": "clicked"}, headers=h
    )
    assert r.status_code == 200, r.text
    assert "clicked" in r.json()["engagement"]
    report = await settle(api, event_id, {"done"})
    email = [t for t in report["trail"] if t["type"] == "step" and t["step"] == "email"]
    assert email[0]["outcome"] == "not_needed"

    mine = await api.client.get("/v1/subscribers/ana/notifications", headers=h)
    assert [m["id"] for m in mine.json()["messages"]] == [message["id"]]


async def test_any_event_type_can_have_a_workflow(api: Api) -> None:
    """Event types may hold `/` and `@` and run to 200 characters: so may workflow keys."""
    h = api.auth()
    one_step = {"steps": [{"id": "inapp", "type": "in_app", "content": {"body": "b"}}]}
    for key in ("billing/invoice@v2", "e" * 200):
        r = await api.client.put(f"/v1/workflows/{key}", json=one_step, headers=h)
        assert r.status_code == 200, r.text
        assert r.json()["key"] == key
        got = await api.client.get(f"/v1/workflows/{key}", headers=h)
        assert got.status_code == 200 and got.json()["key"] == key
    r = await api.client.post(
        "/v1/events", json={"type": "billing/invoice@v2", "recipients": ["ana"]}, headers=h
    )
    assert r.status_code == 202, r.text
    report = await settle(api, r.json()["id"], {"done"})
    assert [(m["workflow"], m["status"]) for m in report["messages"]] == [
        ("billing/invoice@v2", "delivered")
    ]
    too_long = await api.client.put(f"/v1/workflows/{'e' * 201}", json=one_step, headers=h)
    assert too_long.status_code == 422 and "1-200 characters" in too_long.json()["detail"]
    assert (
        await api.client.delete("/v1/workflows/billing/invoice@v2", headers=h)
    ).status_code == 204


async def test_message_ids_spell_out_the_recipient_and_work_as_path_segments(api: Api) -> None:
    """A message's id is its idempotency key: a prefix per event, channel and template
    version, then the recipient id (a long one hashed). Subscriber ids may hold
    `. + = : @ _ -`; such ids still name the message in URLs, and the inbox item has the
    message's id."""
    h = api.auth()
    await api.client.put("/v1/workflows/order.shipped", json=WORKFLOW, headers=h)
    odd, long_id = "ana.b+x=y:z@ex-1_", "s" * 60
    r = await api.client.post(
        "/v1/events",
        json={"type": "order.shipped", "recipients": [odd, long_id], "payload": {"order": 7}},
        headers=h,
    )
    assert r.status_code == 202, r.text
    report = await settle(api, r.json()["id"], {"waiting"})
    ids = {m["recipient"]: m["id"] for m in report["messages"]}
    assert ids[odd].endswith(odd) and len(ids[odd]) == 24 + len(odd)
    assert len(ids[long_id]) == 64 and ids[long_id][24] == "~"
    assert ids[odd][:24] == ids[long_id][:24]  # one prefix for the event's in-app step
    for recipient, message_id in ids.items():
        got = await api.client.get(f"/v1/messages/{message_id}", headers=h)
        assert got.status_code == 200, got.text
        assert got.json()["recipient"] == recipient
        feed = await api.client.get(f"/v1/subscribers/{recipient}/inbox", headers=h)
        assert [item["id"] for item in feed.json()["items"]] == [message_id]


async def test_bad_definitions_and_reports_are_problems_naming_the_field(api: Api) -> None:
    h = api.auth()
    bad = {"steps": [{"id": "a", "type": "email", "content": {"subject": "s"}, "wait_for": 3}]}
    r = await api.client.put("/v1/workflows/x", json=bad, headers=h)
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert "steps[0].wait_for" in r.text
    mismatch = await api.client.put("/v1/workflows/x", json={"key": "y", **WORKFLOW}, headers=h)
    assert mismatch.status_code == 422 and "key" in mismatch.text
    assert (await api.client.get("/v1/workflows/nope", headers=h)).status_code == 404
    assert (await api.client.delete("/v1/workflows/nope", headers=h)).status_code == 404
    assert (await api.client.get("/v1/messages/nope", headers=h)).status_code == 404
    r = await api.client.post("/v1/messages/nope/status", json={"status": "opened"}, headers=h)
    assert r.status_code == 422 and "status" in r.text
    r = await api.client.get("/v1/events/nope/notifications", headers=h)
    assert r.status_code == 404
    r = await api.client.post(
        "/v1/events", json={"type": "order.shipped", "topic": "nobody"}, headers=h
    )
    assert r.status_code == 422 and "topic" in r.text
    assert (await api.client.get("/v1/workflows")).status_code == 401


async def test_a_payload_that_breaks_a_templates_contract_is_refused_before_fanout(
    api: Api,
) -> None:
    admin, h = api.auth(api.admin_key), api.auth()
    c = api.client
    assert (
        await c.post(
            "/v1/templates", json={"id": "shipped", "name": "S", "channel": "in_app"}, headers=admin
        )
    ).status_code == 201
    version = {
        "locales": {"en": {"title": "Order {{ payload.order.id }}", "body": "Shipped"}},
        "variables": {
            "type": "object",
            "required": ["order"],
            "properties": {
                "order": {
                    "type": "object",
                    "required": ["id"],
                    "properties": {"id": {"type": "integer"}},
                }
            },
        },
    }
    assert (
        await c.post("/v1/templates/shipped/versions", json=version, headers=admin)
    ).status_code == 201
    assert (
        await c.post("/v1/templates/shipped/versions/1/publish", json={}, headers=admin)
    ).status_code == 200
    workflow = {"steps": [{"id": "inapp", "type": "in_app", "template": "shipped"}]}
    assert (await c.put("/v1/workflows/order.out", json=workflow, headers=h)).status_code == 200
    await c.put("/v1/subscribers/ana", json={}, headers=h)

    bad = await c.post(
        "/v1/events",
        json={"type": "order.out", "recipients": ["ana"], "payload": {"order": {"id": "x"}}},
        headers=h,
    )
    assert bad.status_code == 422, bad.text
    assert bad.json()["errors"][0]["field"] == "payload.order.id"
    assert await api.runtime.services.jobs.list_dead(10) == []
    depth = await api.runtime.services.jobs.depth()
    assert sum(depth.queued.values()) == 0  # no dispatch job: nothing was stored

    good = await c.post(
        "/v1/events",
        json={"type": "order.out", "recipients": ["ana"], "payload": {"order": {"id": 7}}},
        headers=h,
    )
    assert good.status_code == 202
    await settle(api, good.json()["id"], {"done"})
    feed = await c.get("/v1/subscribers/ana/inbox", headers=h)
    assert [i["title"] for i in feed.json()["items"]] == ["Order 7"]
    report = await settle(api, good.json()["id"], {"done"})
    assert report["messages"][0]["template_version"] == "shipped@1"


async def test_an_events_report_pages_by_recipient(api: Api) -> None:
    h = api.auth()
    one_step = {"steps": [WORKFLOW["steps"][0]]}
    assert (await api.client.put("/v1/workflows/paged", json=one_step, headers=h)).is_success
    people = [f"p{i}" for i in range(5)]
    for p in people:
        await api.client.put(f"/v1/subscribers/{p}", json={}, headers=h)
    r = await api.client.post(
        "/v1/events",
        json={"type": "paged", "recipients": people[::-1], "payload": {"order": 7}},
        headers=h,
    )
    event_id = r.json()["id"]
    for _ in range(200):
        first = await api.client.get(f"/v1/events/{event_id}/notifications?limit=2", headers=h)
        if first.json()["counts"] == {"done": 5}:
            break
        await asyncio.sleep(0.02)
    seen: list[list[str]] = []
    cursor: str | None = None
    while True:
        q = f"?limit=2&cursor={cursor}" if cursor else "?limit=2"
        page = (await api.client.get(f"/v1/events/{event_id}/notifications{q}", headers=h)).json()
        assert page["counts"] == {"done": 5}
        names = [run["recipient"] for run in page["runs"]]
        seen.append(names)
        # the page explains its recipients whole, and only them
        assert sorted(m["recipient"] for m in page["messages"]) == names
        assert sorted({t["recipient"] for t in page["trail"]}) == names
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [["p0", "p1"], ["p2", "p3"], ["p4"]]
    # a last page that is exactly full says it is the last
    whole = (await api.client.get(f"/v1/events/{event_id}/notifications?limit=5", headers=h)).json()
    assert len(whole["runs"]) == 5 and whole["next_cursor"] is None
    # the subscriber's trail pages the same way
    trail = (await api.client.get("/v1/subscribers/p0/notifications?limit=500", headers=h)).json()
    n = len(trail["trail"])
    assert n >= 1 and trail["next_cursor"] is None
    exact = await api.client.get(f"/v1/subscribers/p0/notifications?limit={n}", headers=h)
    assert len(exact.json()["trail"]) == n and exact.json()["next_cursor"] is None
    if n > 1:
        first = await api.client.get("/v1/subscribers/p0/notifications?limit=1", headers=h)
        assert first.json()["next_cursor"] is not None


async def test_explicit_recipients_are_bounded_by_notify_max_recipients(tmp_path: Path) -> None:
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path}/api.db",
        notify=NotifySettings(max_recipients=1500),
    )
    async for api in open_api(settings):
        h = api.auth()

        def body(n: int) -> dict[str, Any]:
            return {"type": "bulk.note", "recipients": [f"r{i}" for i in range(n)]}

        ok = await api.client.post("/v1/events", json=body(1200), headers=h)
        assert ok.status_code == 202, ok.text  # above the default of 1000: the setting rules
        r = await api.client.post("/v1/events", json=body(1501), headers=h)
        assert r.status_code == 422
        assert r.headers["content-type"].startswith("application/problem+json")
        assert "1501 recipients; at most 1500" in r.text
        assert "recipients" in r.text


async def test_a_subscribers_report_pages_its_trail_oldest_first_and_messages_newest_first(
    api: Api,
) -> None:
    """The trail comes in the order it was written, page after page, each entry once; the
    messages newest first; another subscriber's entries never appear."""
    h = api.auth()
    one_step = {
        "steps": [
            {"id": "inapp", "type": "in_app", "content": {"title": "{{ payload.n }}", "body": "b"}}
        ]
    }
    r = await api.client.put("/v1/workflows/note", json=one_step, headers=h)
    assert r.status_code == 200, r.text
    events = []
    for n in range(4):
        r = await api.client.post(
            "/v1/events",
            json={"type": "note", "recipients": ["ann", "bob"], "payload": {"n": n}},
            headers=h,
        )
        assert r.status_code == 202, r.text
        events.append(r.json()["id"])
        await settle(api, events[-1], {"done"})
    whole = (await api.client.get("/v1/subscribers/ann/notifications?limit=500", headers=h)).json()
    runs = [(await api.runtime.services.notify.event_report(e))["runs"] for e in events]
    ann_runs = [r["id"] for rs in runs for r in rs if r["recipient"] == "ann"]
    assert [t["run_id"] for t in whole["trail"] if t["type"] == "step"] == ann_runs
    assert {t["recipient"] for t in whole["trail"]} == {"ann"}
    assert [m["event_id"] for m in whole["messages"]] == events[::-1]
    paged, cursor = [], None
    while True:
        q = "?limit=1" + (f"&cursor={cursor}" if cursor else "")
        page = (await api.client.get(f"/v1/subscribers/ann/notifications{q}", headers=h)).json()
        paged += page["trail"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert paged == whole["trail"]
