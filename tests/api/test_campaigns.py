"""Campaigns API: create, progress, list, pause/resume/cancel, and errors naming the field."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import Api, make_settings, open_api
from tidings.config import NotifySettings

WORKFLOWS = """
workflows:
  - key: promo
    steps:
      - id: inapp
        type: in_app
        content: {title: "Sale", body: "{{ payload.text }}"}
"""
BODY: dict[str, Any] = {
    "workflow": "promo",
    "topic": "news",
    "payload": {"text": "50% off"},
    "rate": 1000,
}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    (tmp_path / "workflows.yaml").write_text(WORKFLOWS)
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path}/api.db",
        notify=NotifySettings(workflows=[str(tmp_path / "workflows.yaml")]),
    )
    async for a in open_api(settings):
        c, h = a.client, a.auth()
        ids = [f"u{i}" for i in range(5)]
        for sid in ids:
            assert (await c.put(f"/v1/subscribers/{sid}", json={}, headers=h)).is_success
        assert (
            await c.post("/v1/topics", json={"key": "news", "name": "News"}, headers=h)
        ).is_success
        r = await c.post("/v1/topics/news/subscribers", json={"subscribers": ids}, headers=h)
        assert r.is_success, r.text
        yield a


async def test_a_campaign_runs_and_reports_progress(api: Api) -> None:
    c, h = api.client, api.auth()
    r = await c.post("/v1/campaigns", json={**BODY, "id": "spring"}, headers=h)
    assert r.status_code == 201, r.text
    assert r.json()["state"] == "running" and r.json()["id"] == "spring"
    for _ in range(200):
        got = (await c.get("/v1/campaigns/spring", headers=h)).json()
        if got["state"] == "completed" and got["progress"]["delivered"] == 5:
            break
        await asyncio.sleep(0.05)
    assert got["progress"]["total"] == 5 and got["progress"]["enqueued"] == 5
    assert got["progress"]["runs"] == {"done": 5} and got["progress"]["eta_seconds"] is None
    assert [x["id"] for x in (await c.get("/v1/campaigns", headers=h)).json()] == ["spring"]
    # A completed campaign cannot be paused, resumed or cancelled.
    for action in ("pause", "resume", "cancel"):
        r = await c.post(f"/v1/campaigns/spring/{action}", headers=h)
        assert r.status_code == 409, action
        assert r.headers["content-type"] == "application/problem+json"
    r = await c.post("/v1/campaigns", json={**BODY, "id": "spring"}, headers=h)
    assert r.status_code == 409 and r.json()["errors"][0]["field"] == "id"


async def test_pause_resume_cancel(api: Api) -> None:
    c, h = api.client, api.auth()
    later = {**BODY, "id": "later", "start_at": 4_000_000_000.0}
    r = await c.post("/v1/campaigns", json=later, headers=h)
    assert r.json()["state"] == "scheduled"
    assert (await c.post("/v1/campaigns/later/pause", headers=h)).json()["state"] == "paused"
    assert (await c.post("/v1/campaigns/later/resume", headers=h)).json()["state"] == "scheduled"
    assert (await c.post("/v1/campaigns/later/cancel", headers=h)).json()["state"] == "cancelled"
    assert (await c.post("/v1/campaigns/later/cancel", headers=h)).status_code == 200
    r = await c.post("/v1/campaigns/later/resume", headers=h)
    assert r.status_code == 409 and r.json()["errors"][0]["field"] == "state"
    assert (await c.post("/v1/campaigns/later/pause", headers=h)).status_code == 409
    assert (await c.get("/v1/campaigns/later", headers=h)).json()["progress"]["enqueued"] == 0


async def test_errors_name_the_field(api: Api) -> None:
    c, h = api.client, api.auth()

    async def field(body: dict[str, Any]) -> str:
        r = await c.post("/v1/campaigns", json=body, headers=h)
        assert r.status_code == 422, r.text
        assert r.headers["content-type"] == "application/problem+json"
        return str(r.json()["errors"][0]["field"])

    assert await field({**BODY, "workflow": "nope"}) == "workflow"
    assert await field({**BODY, "topic": "nope"}) == "topic"
    assert await field({**BODY, "rate": 0}) == "rate"
    assert await field({**BODY, "rate": 10_001}) == "rate"
    assert await field({**BODY, "payload": {"text": "x" * 5000}}) == "payload"
    assert await field({**BODY, "extra": 1}) == "extra"
    assert await field({k: v for k, v in BODY.items() if k != "topic"}) == "topic"
    assert (await c.get("/v1/campaigns/nope", headers=h)).status_code == 404
    assert (await c.post("/v1/campaigns/nope/pause", headers=h)).status_code == 404
    assert (await c.post("/v1/campaigns", json=BODY)).status_code == 401
    assert (await c.get("/v1/campaigns", headers=h)).json() == []
