"""The presence server API: device reports, a user's state with privacy for a viewer,
contact lists, typing, and the `user.online` event persisted once."""

from __future__ import annotations

import pytest

from tests.api.conftest import Api
from tidings.errors import IdempotencyConflict
from tidings.services.ingest import EventInput


async def test_report_get_privacy_and_the_online_event(api: Api) -> None:
    c = api.client
    r = await c.put(
        "/v1/presence/users/alice/devices/phone",
        json={"kind": "ios", "foreground": False},
        headers=api.auth(),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "idle" and body["online"] is True
    assert [(d["id"], d["kind"], d["status"]) for d in body["devices"]] == [
        ("phone", "ios", "idle")
    ]
    r = await c.put("/v1/presence/users/alice/devices/desk", json={}, headers=api.auth())
    assert r.json()["status"] == "active"  # desktop active + phone in the background

    r = await c.put(
        "/v1/presence/users/alice/privacy",
        json={"hide_online": True, "hide_last_seen": True},
        headers=api.auth(),
    )
    assert r.status_code == 200
    seen = (await c.get("/v1/presence/users/alice?viewer=bob", headers=api.auth())).json()
    assert seen["status"] == "offline" and seen["devices"] == [] and seen["last_seen"] is None
    own = (await c.get("/v1/presence/users/alice?viewer=alice", headers=api.auth())).json()
    assert own["status"] == "active" and own["last_seen"] is not None
    server = (await c.get("/v1/presence/users/alice", headers=api.auth())).json()
    assert server["status"] == "active"

    # user.online was persisted exactly once, under its transition key
    ingest = api.runtime.services.ingest
    with pytest.raises(IdempotencyConflict):
        await ingest.ingest(EventInput(type="user.online", payload={}), "presence:alice:1")


async def test_unknown_users_are_offline(api: Api) -> None:
    r = await api.client.get("/v1/presence/users/nobody", headers=api.auth())
    assert r.status_code == 200
    assert r.json() == {
        "user": "nobody",
        "status": "offline",
        "online": False,
        "last_seen": None,
        "devices": [],
        "reachable": [],
    }


async def test_bad_input_and_auth(api: Api) -> None:
    c = api.client
    r = await c.put(
        "/v1/presence/users/alice/devices/d", json={"foreground": "yes"}, headers=api.auth()
    )
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    r = await c.put("/v1/presence/users/alice/privacy", json={"hide": 1}, headers=api.auth())
    assert r.status_code == 422
    r = await c.get("/v1/presence/users/alice")
    assert r.status_code == 401


async def test_typing_needs_a_presence_namespace(api: Api) -> None:
    c = api.client
    r = await c.post(
        "/v1/presence/users/alice/typing", json={"channel": "orders:1"}, headers=api.auth()
    )
    assert r.status_code == 403 and "no presence" in r.json()["detail"]
    r = await c.post(
        "/v1/presence/users/alice/typing", json={"channel": "chat:room"}, headers=api.auth()
    )
    assert r.status_code == 200 and r.json() == {"sent": True}
    r = await c.post(
        "/v1/presence/users/alice/typing", json={"channel": "chat:room"}, headers=api.auth()
    )
    assert r.json() == {"sent": False}  # throttled
    r = await c.post(
        "/v1/presence/users/alice/typing", json={"channel": "nope:x"}, headers=api.auth()
    )
    assert r.status_code == 422


async def test_a_device_over_the_limit_is_refused_with_409(api: Api) -> None:
    c = api.client
    limit = api.runtime.services.online.config.max_devices
    for i in range(limit):
        r = await c.put(f"/v1/presence/users/many/devices/d{i}", json={}, headers=api.auth())
        assert r.status_code == 200
    r = await c.put("/v1/presence/users/many/devices/extra", json={}, headers=api.auth())
    assert r.status_code == 409, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert "the limit is" in r.json()["detail"]
    r = await c.put("/v1/presence/users/many/devices/d0", json={}, headers=api.auth())
    assert r.status_code == 200  # a known device may report again


async def test_reachable_lists_the_connected_devices(api: Api) -> None:
    c = api.client
    await c.put("/v1/presence/users/carol/devices/desk", json={}, headers=api.auth())
    r = await c.put(
        "/v1/presence/users/carol/devices/phone", json={"connected": False}, headers=api.auth()
    )
    body = r.json()
    assert body["online"] is True and body["reachable"] == ["desk"]


async def test_contact_lists_are_replaced_whole_and_checked(api: Api) -> None:
    c = api.client
    url = "/v1/presence/users/alice/contacts"
    r = await c.get(url, headers=api.auth())
    assert r.status_code == 200 and r.json() == {"user": "alice", "contacts": []}
    r = await c.put(url, json={"contacts": ["carol", "bob", "bob", "alice"]}, headers=api.auth())
    assert r.status_code == 200, r.text
    assert r.json() == {"user": "alice", "contacts": ["bob", "carol"]}  # sorted, no self
    r = await c.put(url, json={"contacts": ["dave"]}, headers=api.auth())
    assert (await c.get(url, headers=api.auth())).json()["contacts"] == ["dave"]

    r = await c.put(url, json={"contacts": ["ok", "bad,name"]}, headers=api.auth())
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    assert "bad,name" in r.json()["detail"]
    limit = api.runtime.services.online.config.max_contacts
    many = [f"u{i}" for i in range(limit + 1)]
    r = await c.put(url, json={"contacts": many}, headers=api.auth())
    assert r.status_code == 422 and "at most" in r.json()["detail"]
    r = await c.put(url, json={"contacts": "bob"}, headers=api.auth())
    assert r.status_code == 422
    assert (await c.get(url, headers=api.auth())).json()["contacts"] == ["dave"]  # unchanged
    assert (await c.get(url)).status_code == 401
