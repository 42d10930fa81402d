"""Preferences and suppression API: server and browser routes, merge patches, 422 naming the
field, 404 for unknown subscribers, the suppression list's paging and idempotent adds."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import Api, make_settings, open_api
from tidings.config import InboxSettings

SECRET = "inbox-secret-for-tests"
PROBLEM = "application/problem+json"

DOC: dict[str, Any] = {
    "enabled": True,
    "channels": {"sms": False},
    "workflows": {"comment.created": {"enabled": None, "channels": {"email": False}}},
    "commercial_consent": True,
    "quiet_hours": [{"start": "22:00", "end": "07:00", "days": ["mon", "tue"]}],
}
CANONICAL: dict[str, Any] = {
    **DOC,
    "quiet_hours": [
        {
            "start": "22:00",
            "end": "07:00",
            "days": ["mon", "tue"],
            "channels": ["sms", "push", "webpush"],
        }
    ],
}
DEFAULTS: dict[str, Any] = {
    "enabled": True,
    "channels": {},
    "workflows": {},
    "commercial_consent": False,
    "quiet_hours": [],
}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path}/api.db", inbox=InboxSettings(hmac_secret=SECRET)
    )
    async for a in open_api(settings):
        r = await a.client.put("/v1/subscribers/ana", json={}, headers=a.auth())
        assert r.status_code == 201, r.text
        yield a


def as_sub(subscriber: str) -> dict[str, str]:
    digest = hmac.new(SECRET.encode(), subscriber.encode(), hashlib.sha256).hexdigest()
    return {"X-Subscriber-Id": subscriber, "X-Subscriber-Hash": digest}


def field_of(r: Any) -> str:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == PROBLEM
    return str(r.json()["errors"][0]["field"])


# --- server routes -------------------------------------------------------------------------


async def test_get_put_patch(api: Api) -> None:
    c, h = api.client, api.auth()
    url = "/v1/subscribers/ana/preferences"
    r = await c.get(url, headers=h)
    assert r.status_code == 200 and r.json() == DEFAULTS
    r = await c.put(url, json=DOC, headers=h)
    assert r.status_code == 200, r.text
    assert r.json() == CANONICAL
    assert (await c.get(url, headers=h)).json() == CANONICAL
    # what GET answers is a valid PUT body
    assert (await c.put(url, json=CANONICAL, headers=h)).json() == CANONICAL
    r = await c.patch(
        url, json={"workflows": {"comment.created": {"channels": {"sms": True}}}}, headers=h
    )
    assert r.status_code == 200, r.text
    assert r.json()["workflows"] == {
        "comment.created": {"enabled": None, "channels": {"email": False, "sms": True}}
    }
    assert r.json()["quiet_hours"] == CANONICAL["quiet_hours"]
    r = await c.patch(
        url, json={"channels": {"sms": None}, "quiet_hours": None, "enabled": False}, headers=h
    )
    assert r.json()["channels"] == {} and r.json()["quiet_hours"] == []
    assert r.json()["enabled"] is False
    # PUT replaces
    assert (await c.put(url, json={}, headers=h)).json() == DEFAULTS


async def test_deleting_a_subscriber_erases_its_preferences(api: Api) -> None:
    c, h = api.client, api.auth()
    url = "/v1/subscribers/ana/preferences"
    assert (await c.put(url, json=DOC, headers=h)).status_code == 200
    assert (await c.delete("/v1/subscribers/ana", headers=h)).status_code == 200
    assert (await c.put("/v1/subscribers/ana", json={}, headers=h)).status_code in (200, 201)
    assert (await c.get(url, headers=h)).json() == DEFAULTS


async def test_unknown_subscribers_are_404(api: Api) -> None:
    c, h = api.client, api.auth()
    url = "/v1/subscribers/bob/preferences"
    for r in (
        await c.get(url, headers=h),
        await c.put(url, json={}, headers=h),
        await c.patch(url, json={"enabled": False}, headers=h),
    ):
        assert r.status_code == 404 and r.headers["content-type"] == PROBLEM
    r = await c.get("/v1/subscribers/bad!id/preferences", headers=h)
    assert field_of(r) == "subscriber_id"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            {"workflows": {"comment.created": {"channels": {"sms": "no"}}}},
            "workflows.comment.created.channels.sms",
        ),
        (
            {"workflows": {"comment.created": {"channels": {"fax": True}}}},
            "workflows.comment.created.channels.fax",
        ),
        ({"quiet_hours": [{"start": "25:00", "end": "07:00"}]}, "quiet_hours.0.start"),
        (
            {"quiet_hours": [{"start": "22:00", "end": "07:00", "days": ["x"]}]},
            "quiet_hours.0.days[0]",
        ),
        ({"channels": {"pigeon": True}}, "channels.pigeon"),
        ({"colour": "blue"}, "colour"),
        ({"enabled": "yes"}, "enabled"),
    ],
)
async def test_invalid_documents_are_422_naming_the_field(
    api: Api, body: dict[str, Any], field: str
) -> None:
    c, h = api.client, api.auth()
    url = "/v1/subscribers/ana/preferences"
    assert field_of(await c.put(url, json=body, headers=h)) == field
    assert field_of(await c.patch(url, json=body, headers=h)) == field
    r = await c.put(url, json=body, headers=h)
    assert r.json()["detail"].startswith(f"{field}: ")
    assert (await c.get(url, headers=h)).json() == DEFAULTS


async def test_a_body_that_is_not_an_object_is_422(api: Api) -> None:
    c, h = api.client, api.auth()
    assert field_of(await c.put("/v1/subscribers/ana/preferences", json=[], headers=h)) == "body"
    r = await c.patch("/v1/subscribers/ana/preferences", json="x", headers=h)
    assert field_of(r) == "body"


async def test_server_routes_need_a_publish_key(api: Api) -> None:
    c = api.client
    url = "/v1/subscribers/ana/preferences"
    assert (await c.get(url)).status_code == 401
    assert (await c.get(url, headers=as_sub("ana"))).status_code == 401
    assert (await c.get("/v1/suppressions")).status_code == 401


# --- browser routes ------------------------------------------------------------------------


async def test_the_browser_reads_and_changes_its_own_preferences(api: Api) -> None:
    c = api.client
    r = await c.put("/v1/inbox/preferences", json=DOC, headers=as_sub("ana"))
    assert r.status_code == 200, r.text
    assert r.json() == CANONICAL
    r = await c.patch(
        "/v1/inbox/preferences",
        json={"workflows": {"comment.created": None}},
        headers=as_sub("ana"),
    )
    assert r.json()["workflows"] == {}
    server = await c.get("/v1/subscribers/ana/preferences", headers=api.auth())
    assert server.json() == r.json()
    # with a subscriber token
    token = (await c.post("/v1/subscribers/ana/token", headers=api.auth())).json()["token"]
    r = await c.get("/v1/inbox/preferences", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.json() == server.json()
    r = await c.put(
        "/v1/inbox/preferences",
        json={"quiet_hours": [{"start": "9:00", "end": "10:00"}]},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert field_of(r) == "quiet_hours.0.start"


async def test_browser_auth(api: Api) -> None:
    c = api.client
    assert (await c.get("/v1/inbox/preferences")).status_code == 401
    # bob's hash does not open ana's preferences
    r = await c.put(
        "/v1/inbox/preferences", json={}, headers={**as_sub("bob"), "X-Subscriber-Id": "ana"}
    )
    assert r.status_code == 401 and r.headers["content-type"] == PROBLEM
    assert (await c.get("/v1/inbox/preferences", headers=api.auth())).status_code == 401
    # a subscriber the directory does not know
    assert (await c.get("/v1/inbox/preferences", headers=as_sub("bob"))).status_code == 404


# --- suppressions --------------------------------------------------------------------------


async def test_suppress_is_idempotent_and_normalises(api: Api) -> None:
    c, h = api.client, api.auth()
    body = {"channel": "email", "address": "Ana@Example.ORG", "reason": "hard_bounce"}
    r = await c.post("/v1/suppressions", json={**body, "detail": "550 5.1.1"}, headers=h)
    assert r.status_code == 201, r.text
    assert r.json() == {"channel": "email", "address": "ana@example.org", "added": True}
    r = await c.post("/v1/suppressions", json={**body, "reason": "complaint"}, headers=h)
    assert r.status_code == 200
    assert r.json()["added"] is False
    r = await c.post(
        "/v1/suppressions", json={"channel": "sms", "address": "+1 415 555 0123"}, headers=h
    )
    assert r.status_code == 201 and r.json()["address"] == "+14155550123"
    r = await c.get("/v1/suppressions", headers=h)
    assert r.status_code == 200
    items = r.json()["items"]
    assert [(i["channel"], i["address"], i["reason"], i["detail"]) for i in items] == [
        ("email", "ana@example.org", "hard_bounce", "550 5.1.1"),
        ("sms", "+14155550123", "manual", ""),
    ]
    assert items[0]["created_at"].endswith("Z") or "+00:00" in items[0]["created_at"]
    assert r.json()["next_after"] is None


async def test_suppression_list_pages(api: Api) -> None:
    c, h = api.client, api.auth()
    for i in range(7):
        r = await c.post(
            "/v1/suppressions",
            json={"channel": "email", "address": f"u{i}@x.org", "reason": "unsubscribed"},
            headers=h,
        )
        assert r.status_code == 201
    await c.post(
        "/v1/suppressions",
        json={"channel": "push", "address": "fcm-token-123", "reason": "invalid_token"},
        headers=h,
    )
    seen: list[str] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if after is not None:
            params["after"] = after
        page = (await c.get("/v1/suppressions", params=params, headers=h)).json()
        seen.extend(f"{i['channel']}:{i['address']}" for i in page["items"])
        after = page["next_after"]
        if after is None:
            break
    assert seen == [f"email:u{i}@x.org" for i in range(7)] + ["push:fcm-token-123"]
    r = await c.get("/v1/suppressions", params={"channel": "push"}, headers=h)
    assert [i["address"] for i in r.json()["items"]] == ["fcm-token-123"]


async def test_delete_suppression(api: Api) -> None:
    c, h = api.client, api.auth()
    endpoint = "https://push.example.org/wp/abc?x=1"
    for body in (
        {"channel": "email", "address": "ana@example.org", "reason": "unsubscribed"},
        {"channel": "webpush", "address": endpoint, "reason": "invalid_token"},
    ):
        assert (await c.post("/v1/suppressions", json=body, headers=h)).status_code == 201
    r = await c.delete("/v1/suppressions/email/ANA@example.org", headers=h)
    assert r.status_code == 204, r.text
    r = await c.delete("/v1/suppressions/email/ana@example.org", headers=h)
    assert r.status_code == 404 and r.headers["content-type"] == PROBLEM
    r = await c.delete("/v1/suppressions/webpush/https://push.example.org/wp/abc%3Fx=1", headers=h)
    assert r.status_code == 204, r.text
    assert (await c.get("/v1/suppressions", headers=h)).json()["items"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"channel": "email", "address": "a@x.org", "reason": "bored"}, "reason"),
        ({"channel": "fax", "address": "123"}, "channel"),
        ({"channel": "email", "address": "nobody"}, "address"),
        ({"channel": "sms", "address": "555-0123"}, "address"),
        ({"channel": "email", "address": "a@x.org", "extra": 1}, "extra"),
        ({"channel": "email"}, "address"),
    ],
)
async def test_bad_suppressions_are_422_naming_the_field(
    api: Api, body: dict[str, Any], field: str
) -> None:
    r = await api.client.post("/v1/suppressions", json=body, headers=api.auth())
    assert field_of(r) == field


@pytest.mark.parametrize(
    ("params", "field"),
    [({"limit": 0}, "limit"), ({"after": "nocolon"}, "after"), ({"channel": "in_app"}, "channel")],
)
async def test_bad_list_queries_are_422(api: Api, params: dict[str, Any], field: str) -> None:
    r = await api.client.get("/v1/suppressions", params=params, headers=api.auth())
    assert field_of(r) == field
