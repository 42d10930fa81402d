"""Campaigns API: create, progress, list, pause/resume/cancel, and errors naming the field."""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from tests.api.conftest import Api, open_api, settings_with_workflows
from tidings import cli as cli_module
from tidings.cli import app as cli

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
    async for a in open_api(settings_with_workflows(tmp_path, WORKFLOWS)):
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
    got = (await c.get("/v1/campaigns/later", headers=h)).json()
    assert (got["total"], got["progress"]["total"]) == (None, 5)  # the topic's size now
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
    assert await field({**BODY, "segment": "some"}) == "topic"  # a topic or a segment
    no_topic = {k: v for k, v in BODY.items() if k != "topic"}
    assert await field({**no_topic, "segment": "nope"}) == "segment"
    assert await field({k: v for k, v in BODY.items() if k != "rate"}) == "rate"
    assert await field({**BODY, "rates": {"emial": 100}}) == "rates.emial"
    assert await field({**BODY, "rates": {"email": 0}}) == "rates.email"
    assert await field({**BODY, "rates": {"email": 100_001}}) == "rates.email"
    assert await field({**BODY, "rates": {"email": "fast"}}) == "rates.email"
    # `promo` sends in-app only: an email rate alone bounds nothing
    assert await field({**no_topic, "topic": "news", "rate": None, "rates": {"email": 5}}) == (
        "rates"
    )
    assert (await c.get("/v1/campaigns/nope", headers=h)).status_code == 404
    assert (await c.post("/v1/campaigns/nope/pause", headers=h)).status_code == 404
    assert (await c.post("/v1/campaigns", json=BODY)).status_code == 401
    assert (await c.get("/v1/campaigns", headers=h)).json() == []


async def test_cli_progress_draws_a_bar_until_the_campaign_is_done(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    c, h = api.client, api.auth()
    r = await c.post("/v1/campaigns", json={**BODY, "id": "slow", "rate": 2}, headers=h)
    assert r.status_code == 201, r.text
    screen = io.StringIO()  # a terminal 120 columns wide: the bar redraws as it moves
    monkeypatch.setattr(cli_module, "out", Console(file=screen, force_terminal=True, width=120))
    env = {
        "TIDINGS_DATABASE_URL": api.runtime.settings.database_url,
        "TIDINGS_TOKEN_SECRET": "t" * 64,
    }
    result = await asyncio.to_thread(
        CliRunner().invoke, cli, ["campaign", "progress", "slow", "--interval", "0.1"], env=env
    )
    assert result.exit_code == 0, result.output
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())
    frames = [
        (int(done), int(total), int(pct), state, int(handed))
        for done, total, pct, state, handed in re.findall(
            r"slow ━[━╺╸ ]* (\d+)/(\d+) +(\d+)% (\w+) handed out (\d+)", text
        )
    ]
    assert frames, text
    assert frames[-1] == (5, 5, 100, "completed", 5)
    assert any(pct < 100 and state == "running" for _, _, pct, state, _ in frames), text
    for done, total, pct, _, handed in frames:
        assert pct == round(100 * done / total) and done <= handed <= total
    assert [f[0] for f in frames] == sorted(f[0] for f in frames)  # it only moves forward
    assert "slow completed: 5 of 5 handed out, 5 delivered" in text
