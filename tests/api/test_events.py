from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from tests.api.conftest import Api
from tidings.services.dispatch import Dispatcher
from tidings.services.ingest import DISPATCH_JOB
from tidings.types import Job, JobState, NewEvent, NewJob, Priority, Scope

EVENT = {
    "type": "order.shipped",
    "actor": "shop",
    "recipients": ["u1"],
    "channels": ["orders:u1"],
    "payload": {"order": 42},
}


async def wait_state(api: Api, event_id: str, state: str, timeout: float = 5.0) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        r = await api.client.get(f"/v1/events/{event_id}", headers=api.auth())
        assert r.status_code == 200
        body = r.json()
        if body["state"] == state:
            return body
        assert asyncio.get_running_loop().time() < deadline, body
        await asyncio.sleep(0.02)


async def count_events(api: Api) -> int:
    async with api.runtime.engine.connect() as conn:
        return int((await conn.execute(text("SELECT count(*) FROM events"))).scalar_one())


async def test_accept_then_dispatch_to_channels(api: Api) -> None:
    r = await api.client.post("/v1/events", json=EVENT, headers=api.auth())
    assert r.status_code == 202, r.text
    accepted = r.json()
    assert r.headers["location"] == f"/v1/events/{accepted['id']}"
    assert "idempotent-replayed" not in r.headers
    body = await wait_state(api, accepted["id"], "dispatched")
    assert body["type"] == "order.shipped"
    assert body["payload"] == {"order": 42}
    [outcome] = body["outcomes"]
    assert outcome["kind"] == "channel"
    assert outcome["target"] == "orders:u1"
    assert outcome["status"] == "published"
    assert "offset=1" in outcome["detail"]
    history = await api.runtime.broker.history("orders:u1", limit=-1)
    assert [p.offset for p in history.publications] == [1]
    assert b'"order":42' in history.publications[0].data


async def test_same_key_same_body_returns_original(api: Api) -> None:
    headers = {**api.auth(), "Idempotency-Key": "k-1"}
    first = await api.client.post("/v1/events", json=EVENT, headers=headers)
    second = await api.client.post(
        "/v1/events", json=dict(reversed(EVENT.items())), headers=headers
    )
    assert first.status_code == second.status_code == 202
    assert second.json() == first.json()
    assert second.headers["idempotent-replayed"] == "true"
    assert await count_events(api) == 1


async def test_body_id_is_the_idempotency_key(api: Api) -> None:
    first = await api.client.post("/v1/events", json={**EVENT, "id": "ext-7"}, headers=api.auth())
    again = await api.client.post("/v1/events", json={**EVENT, "id": "ext-7"}, headers=api.auth())
    assert first.json()["id"] == again.json()["id"]
    assert first.json()["idempotency_key"] == "ext-7"


async def test_idempotency_keys_are_global_across_api_keys(api: Api) -> None:
    """Two services with their own API keys share one key space: the second sender of the
    same key and body gets the first one's event, and a different body is a conflict."""
    _, other = await api.runtime.services.apikeys.create("billing", frozenset({Scope.PUBLISH}))
    first = await api.client.post(
        "/v1/events", json=EVENT, headers={**api.auth(), "Idempotency-Key": "order-9"}
    )
    again = await api.client.post(
        "/v1/events", json=EVENT, headers={**api.auth(other), "Idempotency-Key": "order-9"}
    )
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    clash = await api.client.post(
        "/v1/events",
        json={**EVENT, "payload": {"order": 99}},
        headers={**api.auth(other), "Idempotency-Key": "order-9"},
    )
    assert clash.status_code == 409
    assert await count_events(api) == 1


async def test_same_key_different_body_is_409(api: Api) -> None:
    headers = {**api.auth(), "Idempotency-Key": "k-2"}
    assert (await api.client.post("/v1/events", json=EVENT, headers=headers)).status_code == 202
    r = await api.client.post(
        "/v1/events", json={**EVENT, "payload": {"order": 43}}, headers=headers
    )
    assert r.status_code == 409
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["status"] == 409
    assert problem["type"].endswith("idempotency-conflict")
    assert await count_events(api) == 1


async def test_concurrent_identical_requests_store_one_event(api: Api) -> None:
    headers = {**api.auth(), "Idempotency-Key": "burst"}
    responses = await asyncio.gather(
        *(api.client.post("/v1/events", json=EVENT, headers=headers) for _ in range(25))
    )
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(1 for r in responses if "idempotent-replayed" not in r.headers) == 1
    assert await count_events(api) == 1
    event_id = responses[0].json()["id"]
    body = await wait_state(api, event_id, "dispatched")
    assert len(body["outcomes"]) == 1  # published once


async def test_send_at_holds_dispatch(api: Api) -> None:
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    r = await api.client.post("/v1/events", json={**EVENT, "send_at": later}, headers=api.auth())
    assert r.status_code == 202
    await asyncio.sleep(0.2)
    got = (await api.client.get(f"/v1/events/{r.json()['id']}", headers=api.auth())).json()
    assert got["state"] == "accepted"
    assert got["outcomes"] == []
    depth = await api.runtime.services.jobs.depth()
    assert depth.queued == {"transactional": 1}


async def test_unknown_event_is_404_problem(api: Api) -> None:
    r = await api.client.get("/v1/events/nope", headers=api.auth())
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"] == "event nope not found"


async def test_cancel_an_event_held_for_later(api: Api) -> None:
    c, h = api.client, api.auth()
    body = {
        "type": "reminder",
        "channels": ["orders:1"],
        "payload": {},
        "send_at": "2099-01-01T09:00:00Z",
    }
    r = await c.post("/v1/events", json=body, headers=h)
    event_id = r.json()["id"]
    r = await c.post(f"/v1/events/{event_id}/cancel", headers=h)
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    r = await c.post(f"/v1/events/{event_id}/cancel", headers=h)
    assert r.status_code == 409 and "is cancelled" in r.json()["detail"]
    assert (await c.post("/v1/events/nope/cancel", headers=h)).status_code == 404
    # the dispatch job, when it comes, finds the event cancelled and publishes nothing
    await run_dispatch_job(api, event_id)
    got = (await c.get(f"/v1/events/{event_id}", headers=h)).json()
    assert got["state"] == "cancelled" and got["outcomes"] == []


async def run_dispatch_job(api: Api, event_id: str) -> None:
    """Run the event's dispatch job now, as the worker would when `send_at` comes."""
    job = Job(
        id="j",
        kind="event.dispatch",
        payload={"event_id": event_id},
        lane=Priority.TRANSACTIONAL,
        state=JobState.RUNNING,
        run_at=0.0,
        attempts=1,
        max_attempts=3,
        dedupe_key=None,
        lease_token="t",
        locked_until=None,
        last_error=None,
        created_at=0.0,
    )
    await Dispatcher(api.runtime.services.ingest._events, api.runtime.hub).handle(job)


HELD = {
    "type": "reminder",
    "channels": ["orders:held"],
    "payload": {"order": 7},
    "send_at": "2099-01-01T09:00:00Z",
}


async def test_cancel_by_idempotency_key_stops_a_held_event(api: Api) -> None:
    c, h = api.client, api.auth()
    r = await c.post("/v1/events", json=HELD, headers={**h, "Idempotency-Key": "txn-held-1"})
    assert r.status_code == 202, r.text
    event_id = r.json()["id"]
    r = await c.post("/v1/events/cancel", json={"idempotency_key": "txn-held-1"}, headers=h)
    assert r.status_code == 200, r.text
    cancelled = r.json()
    assert cancelled["id"] == event_id and cancelled["idempotency_key"] == "txn-held-1"
    assert cancelled["state"] == "cancelled" and cancelled["outcomes"] == []
    assert cancelled["payload"] == {"order": 7}
    await run_dispatch_job(api, event_id)
    got = (await c.get(f"/v1/events/{event_id}", headers=h)).json()
    assert got["state"] == "cancelled" and got["outcomes"] == []
    history = await api.runtime.broker.history("orders:held", limit=-1)
    assert history.publications == ()


async def test_cancel_by_key_accepts_the_body_id(api: Api) -> None:
    c, h = api.client, api.auth()
    r = await c.post("/v1/events", json={**HELD, "id": "ext-held"}, headers=h)
    event_id = r.json()["id"]
    r = await c.post("/v1/events/cancel", json={"idempotency_key": "ext-held"}, headers=h)
    assert r.status_code == 200 and r.json()["id"] == event_id
    assert r.json()["state"] == "cancelled"


async def test_cancel_by_key_cancels_only_that_event(api: Api) -> None:
    c, h = api.client, api.auth()
    a = await c.post("/v1/events", json=HELD, headers={**h, "Idempotency-Key": "txn-a"})
    b = await c.post("/v1/events", json=HELD, headers={**h, "Idempotency-Key": "txn-b"})
    r = await c.post("/v1/events/cancel", json={"idempotency_key": "txn-a"}, headers=h)
    assert r.json()["id"] == a.json()["id"]
    other = (await c.get(f"/v1/events/{b.json()['id']}", headers=h)).json()
    assert other["state"] == "accepted"


async def test_cancel_by_unknown_key_is_404_problem(api: Api) -> None:
    r = await api.client.post(
        "/v1/events/cancel", json={"idempotency_key": "txn-nope"}, headers=api.auth()
    )
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["status"] == 404 and "txn-nope" in problem["detail"]


async def test_cancel_by_key_twice_is_409(api: Api) -> None:
    c, h = api.client, api.auth()
    r = await c.post("/v1/events", json=HELD, headers={**h, "Idempotency-Key": "txn-twice"})
    event_id = r.json()["id"]
    first = await c.post("/v1/events/cancel", json={"idempotency_key": "txn-twice"}, headers=h)
    assert first.status_code == 200
    again = await c.post("/v1/events/cancel", json={"idempotency_key": "txn-twice"}, headers=h)
    assert again.status_code == 409
    assert again.headers["content-type"] == "application/problem+json"
    assert f"event {event_id} is cancelled" in again.json()["detail"]
    by_id = await c.post(f"/v1/events/{event_id}/cancel", headers=h)
    assert by_id.status_code == 409


async def test_cancel_by_key_of_a_dispatched_event_keeps_what_went_out(api: Api) -> None:
    c, h = api.client, api.auth()
    r = await c.post("/v1/events", json=EVENT, headers={**h, "Idempotency-Key": "txn-sent"})
    event_id = r.json()["id"]
    await wait_state(api, event_id, "dispatched")
    r = await c.post("/v1/events/cancel", json={"idempotency_key": "txn-sent"}, headers=h)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["state"] == "cancelled"
    assert [(o["target"], o["status"]) for o in body["outcomes"]] == [("orders:u1", "published")]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "idempotency_key"),
        ({"idempotency_key": ""}, "idempotency_key"),
        ({"idempotency_key": "k" * 256}, "idempotency_key"),
        ({"idempotency_key": 7}, "idempotency_key"),
        ({"idempotency_key": "k", "transaction_id": "k"}, "transaction_id"),
    ],
)
async def test_cancel_by_key_with_a_bad_body_is_422(api: Api, body: dict, field: str) -> None:
    r = await api.client.post("/v1/events/cancel", json=body, headers=api.auth())
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert field in [e["field"] for e in r.json()["errors"]]


async def test_cancel_by_key_needs_an_api_key(api: Api) -> None:
    r = await api.client.post("/v1/events/cancel", json={"idempotency_key": "k"})
    assert r.status_code == 401


async def test_a_bad_recipient_is_refused_and_nothing_is_stored(api: Api) -> None:
    body = {"type": "comment.created", "recipients": ["u05", "bad id"], "payload": {}}
    r = await api.client.post(
        "/v1/events", json=body, headers={**api.auth(), "Idempotency-Key": "bad-recipient"}
    )
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == "recipients.1"
    assert await count_events(api) == 0
    async with api.runtime.engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM jobs"))).scalar_one() == 0
    # the key is still free: the corrected event is accepted under it
    body["recipients"] = ["u05"]
    r = await api.client.post(
        "/v1/events", json=body, headers={**api.auth(), "Idempotency-Key": "bad-recipient"}
    )
    assert r.status_code == 202, r.text


async def test_a_stored_bad_recipient_is_recorded_and_the_others_notified(api: Api) -> None:
    """An event stored before ingest checked recipient ids: its dispatch records the bad id
    as not sent, notifies the valid recipient and completes on its first attempt."""
    h = api.auth()
    workflow = {
        "steps": [
            {"id": "inapp", "type": "in_app", "content": {"title": "New comment", "body": "-"}}
        ]
    }
    r = await api.client.put("/v1/workflows/comment.created", json=workflow, headers=h)
    assert r.status_code == 200, r.text
    r = await api.client.put("/v1/subscribers/u05", json={}, headers=h)
    assert r.status_code == 201, r.text
    event = NewEvent(
        id="old-event",
        type="comment.created",
        idempotency_key="old-event",
        body_hash="-",
        actor=None,
        recipients=("u05", "bad id", "bad id"),
        topic=None,
        channels=(),
        payload={},
        priority=Priority.TRANSACTIONAL,
        send_at=None,
    )
    job = NewJob(kind=DISPATCH_JOB, payload={"event_id": event.id}, dedupe_key="dispatch:old")
    await api.runtime.services.ingest._events.append(event, then=job)

    got = await wait_state(api, event.id, "dispatched")
    assert [(o["kind"], o["target"], o["status"], o["detail"]) for o in got["outcomes"]] == [
        (
            "recipient",
            "bad id",
            "not_sent",
            "not a subscriber id: must be 1..200 characters of A-Z a-z 0-9 _ . @ : = + -",
        )
    ]
    inbox = await api.client.get("/v1/subscribers/u05/inbox", headers=h)
    assert [i["title"] for i in inbox.json()["items"]] == ["New comment"]
    async with api.runtime.engine.connect() as conn:
        rows = (
            await conn.execute(
                text("SELECT state, attempts, last_error FROM jobs WHERE kind = :k"),
                {"k": DISPATCH_JOB},
            )
        ).all()
    assert [tuple(r) for r in rows] == [("done", 1, None)]
