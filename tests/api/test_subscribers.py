"""Subscribers and topics API: upsert, patch, validation naming the field, pages, delete."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.api.conftest import Api, make_settings, open_api
from tidings.config import InboxSettings
from tidings.ports.inbox import InboxItem

SECRET = "inbox-secret-for-tests"


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def webpush(endpoint: str = "https://fcm.googleapis.com/fcm/send/abc") -> dict[str, object]:
    point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    )
    return {"endpoint": endpoint, "keys": {"p256dh": b64(point), "auth": b64(os.urandom(16))}}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path}/api.db",
        inbox=InboxSettings(hmac_secret=SECRET, max_data_bytes=1024),
    )
    async for a in open_api(settings):
        yield a


def field_of(r: object) -> str:
    body = r.json()  # type: ignore[attr-defined]
    return str(body["errors"][0]["field"])


async def test_put_creates_normalises_and_replaces(api: Api) -> None:
    c, h = api.client, api.auth()
    wp = webpush()
    body = {
        "email": "Ana@Example.ORG",
        "phone": "+351 912 345 678",
        "locale": "pt_br",
        "timezone": "Europe/Lisbon",
        "data": {"plan": "pro"},
        "devices": [
            {"platform": "apns", "token": "AB" * 32},
            {"platform": "fcm", "token": "fcm:token-1"},
        ],
        "webpush": [{**wp, "expirationTime": None}],
    }
    r = await c.put("/v1/subscribers/ana", json=body, headers=h)
    assert r.status_code == 201, r.text
    s = r.json()
    assert s["email"] == "Ana@example.org"
    assert s["phone"] == "+351912345678"
    assert s["locale"] == "pt-BR"
    assert s["devices"] == [
        {"platform": "apns", "token": "ab" * 32},
        {"platform": "fcm", "token": "fcm:token-1"},
    ]
    assert s["webpush"] == [wp]
    assert (await c.get("/v1/subscribers/ana", headers=h)).json() == s
    # PUT replaces: fields left out are cleared
    r = await c.put("/v1/subscribers/ana", json={"email": "ana@example.org"}, headers=h)
    assert r.status_code == 200
    s2 = r.json()
    assert s2["phone"] is None and s2["devices"] == [] and s2["data"] == {}
    assert s2["created_at"] == s["created_at"]


async def test_patch_changes_only_the_given_fields_and_merges_data(api: Api) -> None:
    c, h = api.client, api.auth()
    await c.put(
        "/v1/subscribers/bo",
        json={"email": "bo@x.org", "timezone": "Asia/Tokyo", "data": {"a": 1, "b": 2}},
        headers=h,
    )
    r = await c.patch(
        "/v1/subscribers/bo",
        json={"phone": "+1 650 253 0000", "data": {"b": None, "c": 3}},
        headers=h,
    )
    assert r.status_code == 200, r.text
    s = r.json()
    assert (s["email"], s["phone"], s["timezone"]) == ("bo@x.org", "+16502530000", "Asia/Tokyo")
    assert s["data"] == {"a": 1, "c": 3}
    assert (await c.patch("/v1/subscribers/nobody", json={}, headers=h)).status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"phone": "12"}, "phone"),
        ({"phone": "+1 555 000"}, "phone"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"locale": "english"}, "locale"),
        ({"locale": "zz-ZZ"}, "locale"),
        ({"email": "not-an-email"}, "email"),
        ({"data": {"blob": "x" * 2000}}, "data"),
        ({"nickname": "x"}, "nickname"),
        ({"devices": [{"platform": "apns", "token": "not-hex-token"}]}, "devices.0.token"),
        ({"devices": [{"platform": "blackberry", "token": "abcdefgh"}]}, "devices.0.platform"),
        (
            {"devices": [{"platform": "fcm", "token": "same-tok"}] * 2},
            "devices.1.token",
        ),
        ({"webpush": [{**webpush(), "endpoint": "http://x.example/p"}]}, "webpush.0.endpoint"),
        (
            {"webpush": [{**webpush(), "keys": {"p256dh": b64(b"\x04" + b"1" * 64), "auth": "x"}}]},
            "webpush.0.keys.p256dh",
        ),
        (
            {"webpush": [{**webpush(), "keys": {**webpush()["keys"], "auth": b64(b"short")}}]},  # type: ignore[dict-item]
            "webpush.0.keys.auth",
        ),
    ],
)
async def test_bad_input_is_a_422_naming_the_field(
    api: Api, body: dict[str, object], field: str
) -> None:
    r = await api.client.put("/v1/subscribers/x", json=body, headers=api.auth())
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert field_of(r) == field
    assert (await api.client.get("/v1/subscribers/x", headers=api.auth())).status_code == 404


async def test_bad_ids_and_auth(api: Api) -> None:
    c, h = api.client, api.auth()
    assert (await c.put("/v1/subscribers/a%23b", json={}, headers=h)).status_code == 422
    assert (await c.put("/v1/subscribers/a,b", json={}, headers=h)).status_code == 422
    assert (await c.put("/v1/subscribers/a", json={})).status_code == 401


async def test_list_pages_without_duplicates_or_gaps_while_inserting(api: Api) -> None:
    c, h = api.client, api.auth()
    before = [f"user-{i:03d}" for i in range(0, 40, 2)]
    for sid in before:
        assert (await c.put(f"/v1/subscribers/{sid}", json={}, headers=h)).status_code == 201
    seen: list[str] = []
    cursor = None
    n = 1
    while True:
        params = {"limit": 6} | ({"cursor": cursor} if cursor else {})
        page = (await c.get("/v1/subscribers", params=params, headers=h)).json()
        seen += [s["id"] for s in page["items"]]
        await c.put(f"/v1/subscribers/user-{n:03d}", json={}, headers=h)
        n += 2
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) and set(before) <= set(seen)
    r = await c.get("/v1/subscribers", params={"cursor": "garbage!"}, headers=h)
    assert r.status_code == 422 and field_of(r) == "cursor"
    r = await c.get("/v1/subscribers", params={"limit": 1000}, headers=h)
    assert r.status_code == 422 and field_of(r) == "limit"


async def test_delete_erases_profile_memberships_and_inbox(api: Api) -> None:
    c, h = api.client, api.auth()
    await c.put("/v1/subscribers/del", json={}, headers=h)
    await c.post("/v1/topics", json={"key": "t"}, headers=h)
    await c.post("/v1/topics/t/subscribers", json={"subscribers": ["del"]}, headers=h)
    for n in range(3):
        await c.post("/v1/subscribers/del/inbox", json={"title": f"m{n}"}, headers=h)
    r = await c.delete("/v1/subscribers/del", headers=h)
    assert r.json() == {"id": "del", "inbox_items_deleted": 3}
    assert (await c.get("/v1/subscribers/del", headers=h)).status_code == 404
    assert (await c.get("/v1/topics/t", headers=h)).json()["members"] == 0
    feed = (await c.get("/v1/subscribers/del/inbox", headers=h)).json()
    assert feed["items"] == [] and feed["counts"] == {"unread": 0, "unseen": 0}
    assert (await c.delete("/v1/subscribers/del", headers=h)).status_code == 404


async def test_delete_erases_the_inbox_of_an_id_without_a_profile(api: Api) -> None:
    """An event may name an id no subscriber has; its in-app items can still be erased."""
    c, h = api.client, api.auth()
    store = api.runtime.services.inbox.store
    await store.add_many(
        [InboxItem(f"g{n}", "ghost", f"t{n}", "", created_at=1.0, event_id="e") for n in range(2)]
    )
    r = await c.delete("/v1/subscribers/ghost", headers=h)
    assert r.status_code == 200 and r.json() == {"id": "ghost", "inbox_items_deleted": 2}
    assert await store.feed("ghost", limit=10) == []
    gone = await c.delete("/v1/subscribers/ghost", headers=h)  # nothing left: unknown
    assert gone.status_code == 404
    assert gone.headers["content-type"] == "application/problem+json"


async def test_topics_api(api: Api) -> None:
    c, h = api.client, api.auth()
    for sid in ("a", "b", "c", "d"):
        await c.put(f"/v1/subscribers/{sid}", json={}, headers=h)
    r = await c.post("/v1/topics", json={"key": "news", "name": "News"}, headers=h)
    assert r.status_code == 201 and r.json()["members"] == 0
    assert (await c.post("/v1/topics", json={"key": "news"}, headers=h)).status_code == 409
    r = await c.post("/v1/topics/news/subscribers", json={"subscribers": ["a", "b"]}, headers=h)
    assert r.json() == {"added": 2}
    r = await c.post("/v1/topics/news/subscribers", json={"subscribers": ["b", "c"]}, headers=h)
    assert r.json() == {"added": 1}
    r = await c.post("/v1/topics/news/subscribers", json={"subscribers": ["d", "who"]}, headers=h)
    assert r.status_code == 422 and field_of(r) == "subscribers" and "who" in r.json()["detail"]
    assert (await c.get("/v1/topics/news", headers=h)).json()["members"] == 3  # d not added
    page = (await c.get("/v1/topics/news/subscribers?limit=2", headers=h)).json()
    assert page["items"] == ["a", "b"] and page["next_cursor"]
    page = (
        await c.get(f"/v1/topics/news/subscribers?limit=2&cursor={page['next_cursor']}", headers=h)
    ).json()
    assert page == {"items": ["c"], "next_cursor": None}
    r = await c.post(
        "/v1/topics/news/subscribers/remove", json={"subscribers": ["a", "a"]}, headers=h
    )
    assert r.json() == {"removed": 1}
    await c.post("/v1/topics", json={"key": "alerts"}, headers=h)
    listed = (await c.get("/v1/topics?limit=1", headers=h)).json()
    assert [t["key"] for t in listed["items"]] == ["alerts"] and listed["next_cursor"]
    assert (await c.delete("/v1/topics/news", headers=h)).status_code == 204
    assert (await c.get("/v1/topics/news", headers=h)).status_code == 404
    r = await c.post("/v1/topics/news/subscribers", json={"subscribers": []}, headers=h)
    assert r.status_code == 422


async def test_token_and_hash(api: Api) -> None:
    c, h = api.client, api.auth()
    r = await c.post("/v1/subscribers/ana/token", json={"ttl": 60}, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["channel"] == "inbox:#ana"
    token = r.json()["token"]
    r = await c.get("/v1/inbox/counts", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.json() == {"unread": 0, "unseen": 0}
    good = hmac.new(SECRET.encode(), b"ana", hashlib.sha256).hexdigest()
    r = await c.get(
        "/v1/inbox/counts", headers={"X-Subscriber-Id": "ana", "X-Subscriber-Hash": good}
    )
    assert r.status_code == 200
    r = await c.post("/v1/subscribers/ana/token", json={"ttl": 0}, headers=h)
    assert r.status_code == 422 and field_of(r) == "ttl"
