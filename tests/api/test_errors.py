from __future__ import annotations

import pytest
from sqlalchemy import text

from tests.api.conftest import Api

GOOD = {"type": "t", "recipients": ["u"], "payload": {}}


async def rows(api: Api) -> int:
    async with api.runtime.engine.connect() as conn:
        return int((await conn.execute(text("SELECT count(*) FROM events"))).scalar_one())


async def test_missing_key_is_401(api: Api) -> None:
    r = await api.client.post("/v1/events", json=GOOD)
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert "missing API key" in r.json()["detail"]


@pytest.mark.parametrize("key", ["nonsense", "tdg_000000000000_" + "x" * 43])
async def test_invalid_key_is_401(api: Api, key: str) -> None:
    r = await api.client.post("/v1/events", json=GOOD, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 401
    assert r.json()["status"] == 401


async def test_revoked_key_is_401(api: Api) -> None:
    created = await api.client.post(
        "/v1/admin/apikeys",
        json={"name": "tmp", "scopes": ["publish"]},
        headers=api.auth(api.admin_key),
    )
    assert created.status_code == 201
    secret, key_id = created.json()["key"], created.json()["id"]
    assert (
        await api.client.post("/v1/events", json=GOOD, headers=api.auth(secret))
    ).status_code == 202
    r = await api.client.delete(f"/v1/admin/apikeys/{key_id}", headers=api.auth(api.admin_key))
    assert r.status_code == 204
    assert (
        await api.client.post("/v1/events", json=GOOD, headers=api.auth(secret))
    ).status_code == 401


async def test_wrong_scope_is_403(api: Api) -> None:
    r = await api.client.get("/v1/admin/apikeys", headers=api.auth(api.publish_key))
    assert r.status_code == 403
    assert "admin" in r.json()["detail"]
    ok = await api.client.get("/v1/admin/apikeys", headers=api.auth(api.admin_key))
    assert ok.status_code == 200
    assert {k["name"] for k in ok.json()} == {"pub", "adm"}
    assert all("key" not in k for k in ok.json())


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"recipients": ["u"]}, "type"),
        ({**GOOD, "colour": "red"}, "colour"),
        ({**GOOD, "priority": "urgent"}, "priority"),
        ({**GOOD, "type": "has spaces"}, "type"),
        ({**GOOD, "recipients": "u"}, "recipients"),
        ({**GOOD, "send_at": "tomorrow"}, "send_at"),
        ({**GOOD, "send_at": "2030-01-01T09:00:00"}, "send_at"),
        ({**GOOD, "recipients": ["u05", "bad id"]}, "recipients.1"),
        ({**GOOD, "recipients": ["u05", ""]}, "recipients.1"),
        ({**GOOD, "recipients": ["a/b"]}, "recipients.0"),
        ({**GOOD, "recipients": ["x" * 201]}, "recipients.0"),
        ({**GOOD, "channels": ["news", "news"]}, "channels"),
        ({"type": "t", "payload": {}}, "body"),
        ({**GOOD, "payload": [1, 2]}, "payload"),
        ({**GOOD, "channels": ["news", "nowhere:x"]}, "channels.1"),
        ({**GOOD, "channels": ["bad channel"]}, "channels.0"),
    ],
)
async def test_bad_body_is_422_naming_the_field(api: Api, body: dict, field: str) -> None:
    r = await api.client.post("/v1/events", json=body, headers=api.auth())
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["status"] == 422
    assert problem["errors"][0]["field"] == field
    assert problem["detail"].startswith(field)
    assert await rows(api) == 0


async def test_recipient_id_error_names_the_item_and_the_rule(api: Api) -> None:
    body = {"type": "comment.created", "recipients": ["u05", "bad id"], "payload": {}}
    r = await api.client.post("/v1/events", json=body, headers=api.auth())
    assert r.status_code == 422, r.text
    problem = r.json()
    rule = "must be 1..200 characters of A-Z a-z 0-9 _ . @ : = + -"
    assert problem["detail"] == f"recipients.1: {rule}"
    assert problem["errors"] == [{"field": "recipients.1", "message": rule, "type": "value_error"}]
    assert await rows(api) == 0


async def test_send_at_without_offset_names_send_at(api: Api) -> None:
    r = await api.client.post(
        "/v1/events", json={**GOOD, "send_at": "2030-01-01T09:00:00"}, headers=api.auth()
    )
    assert r.status_code == 422
    assert r.json()["detail"] == "send_at: needs a UTC offset, e.g. 2026-01-01T09:00:00Z"


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        (b'{"type": ', "request body is not valid JSON: Expecting value at position 9"),
        (
            b'{"type": "t",}',
            "request body is not valid JSON: Expecting property name enclosed in double "
            "quotes at position 13",
        ),
    ],
)
async def test_bad_json_is_422(api: Api, content: bytes, detail: str) -> None:
    r = await api.client.post(
        "/v1/events",
        content=content,
        headers={**api.auth(), "content-type": "application/json"},
    )
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["title"] == "Invalid request"
    assert problem["detail"] == detail
    assert problem["errors"] == [{"field": "body", "message": detail, "type": "json_invalid"}]
    assert await rows(api) == 0


async def test_a_domain_error_names_its_field_once(api: Api) -> None:
    workflow = {
        "steps": [
            {"id": "inapp", "type": "in_app", "content": {"title": "t"}},
            {
                "id": "email",
                "type": "email",
                "content": {"subject": "s", "text": "t"},
                "wait_for": {"step": "inapp", "status": "seen", "timeout": "1 hour"},
            },
        ]
    }
    r = await api.client.put("/v1/workflows/x", json=workflow, headers=api.auth())
    assert r.status_code == 422, r.text
    problem = r.json()
    message = '\'1 hour\' is not a duration such as "30s", "10m", "1h30m", "2d"'
    assert problem["detail"] == f"steps[1].wait_for.timeout: {message}"
    assert problem["errors"] == [
        {"field": "steps[1].wait_for.timeout", "message": message, "type": "invalid"}
    ]


async def test_oversized_body_is_413(api: Api) -> None:
    big = {**GOOD, "payload": {"blob": "x" * 20_000}}
    r = await api.client.post("/v1/events", json=big, headers=api.auth())
    assert r.status_code == 413
    assert r.headers["content-type"] == "application/problem+json"
    assert await rows(api) == 0


async def test_oversized_streamed_body_is_413(api: Api) -> None:
    async def chunks():  # no Content-Length: the limit applies while streaming
        for _ in range(40):
            yield b"x" * 1024

    r = await api.client.post("/v1/events", content=chunks(), headers=api.auth())
    assert r.status_code == 413


async def test_payload_over_limit_is_422_on_payload(api: Api) -> None:
    r = await api.client.post(
        "/v1/events", json={**GOOD, "payload": {"blob": "x" * 6000}}, headers=api.auth()
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "payload"
    assert await rows(api) == 0


async def test_unknown_route_is_404_problem(api: Api) -> None:
    r = await api.client.get("/v1/nothing")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
