"""Webhook endpoints API: the secret shown once, validation, rotation, enable/disable."""

from __future__ import annotations

from tests.api.conftest import Api


async def test_crud_and_secret_shown_once(api: Api) -> None:
    admin = api.auth(api.admin_key)
    r = await api.client.post(
        "/v1/webhooks/endpoints",
        headers=admin,
        json={
            "url": "https://hooks.example.com/a",
            "event_types": ["order.paid"],
            "description": "orders",
        },
    )
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["secret"].startswith("whsec_")
    assert created["enabled"] is True and created["event_types"] == ["order.paid"]
    ep = created["id"]
    got = (await api.client.get(f"/v1/webhooks/endpoints/{ep}", headers=admin)).json()
    assert "secret" not in got and got["url"] == "https://hooks.example.com/a"

    r = await api.client.patch(
        f"/v1/webhooks/endpoints/{ep}", headers=admin, json={"event_types": []}
    )
    assert r.status_code == 200 and r.json()["event_types"] == []

    r = await api.client.post(
        f"/v1/webhooks/endpoints/{ep}/rotate-secret", headers=admin, json={"grace": 60}
    )
    assert r.status_code == 200
    assert r.json()["secret"] != created["secret"]
    assert r.json()["previous_secret_expires_at"] is not None

    r = await api.client.post(
        f"/v1/webhooks/endpoints/{ep}/disable", headers=admin, json={"reason": "maintenance"}
    )
    assert (r.json()["enabled"], r.json()["disabled_reason"]) == (False, "maintenance")
    r = await api.client.post(f"/v1/webhooks/endpoints/{ep}/enable", headers=admin)
    assert (r.json()["enabled"], r.json()["disabled_reason"]) == (True, None)

    assert (
        await api.client.delete(f"/v1/webhooks/endpoints/{ep}", headers=admin)
    ).status_code == 204
    r = await api.client.get(f"/v1/webhooks/endpoints/{ep}", headers=admin)
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")


async def test_pages(api: Api) -> None:
    admin = api.auth(api.admin_key)
    ids = []
    for i in range(5):
        r = await api.client.post(
            "/v1/webhooks/endpoints", headers=admin, json={"url": f"https://h.example.com/{i}"}
        )
        ids.append(r.json()["id"])
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await api.client.get("/v1/webhooks/endpoints", headers=admin, params=params)).json()
        seen += [e["id"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(ids)


async def test_bad_input_is_422_and_nothing_is_written(api: Api) -> None:
    admin = api.auth(api.admin_key)
    for body, field in (
        ({"url": "ftp://x.example.com/"}, "url"),
        ({"url": "https://u:p@x.example.com/"}, "url"),
        ({"url": "https://x.example.com/", "event_types": ["bad type!"]}, "event_types"),
        ({"url": "https://x.example.com/", "secret": "whsec_short"}, "secret"),
    ):
        r = await api.client.post("/v1/webhooks/endpoints", headers=admin, json=body)
        assert r.status_code == 422, (body, r.text)
        assert field in r.text
    page = (await api.client.get("/v1/webhooks/endpoints", headers=admin)).json()
    assert page["items"] == []
    r = await api.client.post(
        "/v1/webhooks/endpoints", headers=admin, json={"url": "https://x.example.com/", "extra": 1}
    )
    assert r.status_code == 422


async def test_needs_admin(api: Api) -> None:
    r = await api.client.get("/v1/webhooks/endpoints", headers=api.auth())
    assert r.status_code == 403
    r = await api.client.get("/v1/webhooks/endpoints")
    assert r.status_code == 401
