"""Inbox API: server and browser routes, idempotent adds, pages, counts, marks, auth, and
the live messages the service publishes."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.api.conftest import Api, make_settings, open_api
from tidings.adapters.clock import ManualClock
from tidings.adapters.memory.inbox import MemoryInboxStore
from tidings.config import InboxSettings
from tidings.core.tokens import connection_claims, encode_token
from tidings.ports.inbox import Mark
from tidings.services.inbox import InboxService

SECRET = "inbox-secret-for-tests"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path}/api.db",
        inbox=InboxSettings(hmac_secret=SECRET, max_data_bytes=1024),
    )
    async for a in open_api(settings):
        yield a


def as_sub(subscriber: str) -> dict[str, str]:
    digest = hmac.new(SECRET.encode(), subscriber.encode(), hashlib.sha256).hexdigest()
    return {"X-Subscriber-Id": subscriber, "X-Subscriber-Hash": digest}


async def add(api: Api, subscriber: str, title: str, **extra: Any) -> dict[str, Any]:
    r = await api.client.post(
        f"/v1/subscribers/{subscriber}/inbox", json={"title": title, **extra}, headers=api.auth()
    )
    assert r.status_code in (200, 201), r.text
    out: dict[str, Any] = r.json()
    return out


async def test_add_is_idempotent_on_event_subscriber_and_step(api: Api) -> None:
    c, h = api.client, api.auth()
    body = {"title": "Shipped", "body": "Your order", "event_id": "ev-1", "workflow": "order"}
    r1 = await c.post("/v1/subscribers/ana/inbox", json=body, headers=h)
    r2 = await c.post("/v1/subscribers/ana/inbox", json={**body, "title": "changed"}, headers=h)
    assert (r1.status_code, r2.status_code) == (201, 200)
    assert r2.json() == r1.json() and r1.json()["step"] == "in_app"
    r3 = await c.post("/v1/subscribers/ana/inbox", json={**body, "step": "digest"}, headers=h)
    assert r3.status_code == 201
    assert (await c.get("/v1/inbox/counts", headers=as_sub("ana"))).json() == {
        "unread": 2,
        "unseen": 2,
    }


async def test_bad_items_name_the_field(api: Api) -> None:
    c, h = api.client, api.auth()
    for body, field in (
        ({"title": ""}, "title"),
        ({"title": "x", "action_url": "javascript:alert(1)"}, "action_url"),
        ({"title": "x", "action_url": "/\\evil.example"}, "action_url"),
        ({"title": "x", "action_url": "/a\nb"}, "action_url"),
        ({"title": "x", "data": {"k": "v" * 2000}}, "data"),
        ({"title": "x", "colour": "red"}, "colour"),
    ):
        r = await c.post("/v1/subscribers/ana/inbox", json=body, headers=h)
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["field"] == field
    assert (await c.get("/v1/subscribers/ana/inbox", headers=h)).json()["items"] == []


async def test_feed_pages_newest_first_without_duplicates_or_gaps_while_inserting(
    api: Api,
) -> None:
    made = [(await add(api, "ana", f"m{i}"))["id"] for i in range(23)]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 5} | ({"cursor": cursor} if cursor else {})
        page = (await api.client.get("/v1/inbox", params=params, headers=as_sub("ana"))).json()
        seen += [i["id"] for i in page["items"]]
        await add(api, "ana", "newer")
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(made))
    assert page["channel"] == "inbox:#ana"


async def test_marks_counts_and_filters(api: Api) -> None:
    c, me = api.client, as_sub("ana")
    ids = [(await add(api, "ana", f"m{i}"))["id"] for i in range(6)]
    r = await c.post(f"/v1/inbox/items/{ids[0]}/read", headers=me)
    assert r.status_code == 200 and r.json()["read_at"] and r.json()["seen_at"]
    r = await c.post(f"/v1/inbox/items/{ids[1]}/archived", headers=me)
    assert r.json()["archived_at"]
    assert (await c.get("/v1/inbox/counts", headers=me)).json() == {"unread": 4, "unseen": 4}
    r = await c.post("/v1/inbox/mark", json={"action": "seen", "ids": ids[2:4]}, headers=me)
    assert r.json() == {"changed": 2, "counts": {"unread": 4, "unseen": 2}}
    unseen = (await c.get("/v1/inbox?status=unseen", headers=me)).json()["items"]
    assert [i["id"] for i in unseen] == [ids[5], ids[4]]
    archived = (await c.get("/v1/inbox?archived=only", headers=me)).json()["items"]
    assert [i["id"] for i in archived] == [ids[1]]
    # "mark all read" up to what the page showed: a newer item stays unread
    watermark = (await c.get("/v1/inbox?limit=2", headers=me)).json()["watermark"]
    late = (await add(api, "ana", "late"))["id"]
    r = await c.post("/v1/inbox/mark", json={"action": "read", "until": watermark}, headers=me)
    # (the archived unread item too: bulk marks cover archived items)
    assert r.json() == {"changed": 5, "counts": {"unread": 1, "unseen": 1}}
    unread = (await c.get("/v1/inbox?status=unread", headers=me)).json()["items"]
    assert [i["id"] for i in unread] == [late]
    r = await c.post(f"/v1/inbox/items/{ids[0]}/unread", headers=me)
    assert r.json()["read_at"] is None
    r = await c.post("/v1/inbox/mark", json={"action": "read"}, headers=me)
    assert r.json()["counts"] == {"unread": 0, "unseen": 0}
    r = await c.post(
        "/v1/inbox/mark", json={"action": "read", "ids": [ids[0]], "until": watermark}, headers=me
    )
    assert r.status_code == 422
    r = await c.post("/v1/inbox/mark", json={"action": "shred"}, headers=me)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "action"
    r = await c.post(f"/v1/inbox/items/{ids[0]}/shred", headers=me)
    assert r.status_code == 422


async def test_another_subscribers_items_are_invisible(api: Api) -> None:
    c = api.client
    theirs = (await add(api, "bob", "for bob"))["id"]
    mine = (await add(api, "ana", "for ana"))["id"]
    assert (await c.get(f"/v1/inbox/items/{theirs}", headers=as_sub("ana"))).status_code == 404
    assert (
        await c.post(f"/v1/inbox/items/{theirs}/read", headers=as_sub("ana"))
    ).status_code == 404
    r = await c.post(
        "/v1/inbox/mark", json={"action": "read", "ids": [theirs, mine]}, headers=as_sub("ana")
    )
    assert r.json()["changed"] == 1
    feed = (await c.get("/v1/inbox", headers=as_sub("ana"))).json()["items"]
    assert [i["id"] for i in feed] == [mine]
    bob = (await c.get(f"/v1/subscribers/bob/inbox/items/{theirs}", headers=api.auth())).json()
    assert bob["read_at"] is None


async def test_browser_auth(api: Api) -> None:
    c = api.client
    assert (await c.get("/v1/inbox")).status_code == 401
    wrong = {"X-Subscriber-Id": "ana", "X-Subscriber-Hash": "0" * 64}
    r = await c.get("/v1/inbox", headers=wrong)
    assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
    # bob's hash does not open ana's inbox
    r = await c.get("/v1/inbox", headers={**as_sub("bob"), "X-Subscriber-Id": "ana"})
    assert r.status_code == 401
    assert (await c.get("/v1/inbox", headers=api.auth())).status_code == 401  # API key
    bad = encode_token(connection_claims("ana", now=1e9), "w" * 64)
    assert (await c.get("/v1/inbox", headers={"Authorization": f"Bearer {bad}"})).status_code == 401
    expired = encode_token(connection_claims("ana", now=1e9, ttl=60), "t" * 64)
    r = await c.get("/v1/inbox", headers={"Authorization": f"Bearer {expired}"})
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    anonymous = encode_token(connection_claims("", now=1e9), "t" * 64)
    r = await c.get("/v1/inbox", headers={"Authorization": f"Bearer {anonymous}"})
    assert r.status_code == 401
    # server routes need an API key
    assert (await c.get("/v1/subscribers/ana/inbox", headers=as_sub("ana"))).status_code == 401


async def test_without_an_hmac_secret_only_tokens_work(tmp_path: Path) -> None:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/nohmac.db")
    async for api in open_api(settings):
        r = await api.client.get("/v1/inbox", headers=as_sub("ana"))
        assert r.status_code == 401 and "not configured" in r.json()["detail"]


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any], str | None]] = []

    async def __call__(self, channel: str, data: bytes, key: str | None) -> None:
        self.sent.append((channel, orjson.loads(data), key))


async def test_service_publishes_items_and_counts_after_each_change() -> None:
    rec = Recorder()
    inbox = InboxService(MemoryInboxStore(), ManualClock(1000.0), rec)
    item, _ = await inbox.add("ana", title="hi", event_id="e1")
    assert [(ch, m["type"]) for ch, m, _ in rec.sent] == [
        ("inbox:#ana", "item"),
        ("inbox:#ana", "counts"),
    ]
    assert rec.sent[0][1]["item"]["id"] == item.id and rec.sent[0][2] == f"inbox-item:{item.id}"
    assert rec.sent[1][1] == {"type": "counts", "unread": 1, "unseen": 1}
    rec.sent.clear()
    _, created = await inbox.add("ana", title="hi", event_id="e1")
    assert not created and rec.sent[0][2] == f"inbox-item:{item.id}"  # same key: broker dedupes
    rec.sent.clear()
    await inbox.mark_one("ana", item.id, Mark.READ)
    assert [m["type"] for _, m, _ in rec.sent] == ["item", "counts"]
    assert rec.sent[0][1]["item"]["read_at"] == "1970-01-01T00:16:40Z"
    rec.sent.clear()
    await inbox.mark_one("ana", item.id, Mark.READ)  # no change, nothing published
    assert await inbox.mark("ana", Mark.SEEN) == 0
    assert rec.sent == []


async def test_a_failing_publisher_never_fails_the_change() -> None:
    async def broken(channel: str, data: bytes, key: str | None) -> None:
        raise ConnectionError("broker down")

    inbox = InboxService(MemoryInboxStore(), ManualClock(), broken)
    item, created = await inbox.add("ana", title="still stored")
    assert created and (await inbox.counts("ana")).unread == 1
    assert (await inbox.mark_one("ana", item.id, Mark.READ)).read_at is not None
