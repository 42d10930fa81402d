"""Segments API: create or replace, read, list, count, preview, delete; campaigns to a segment;
problem+json errors naming the field."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from tests.api.conftest import Api, open_api, settings_with_workflows
from tests.api.test_campaigns import WORKFLOWS
from tidings.adapters.sql.tables import inbox_items
from tidings.cli import app as cli

PEOPLE: dict[str, dict[str, Any]] = {
    "ana": {"locale": "de", "email": "ana@example.com", "data": {"plan": "pro", "orders": 5}},
    "ben": {"locale": "de", "data": {"plan": "pro", "orders": 1}},
    "cem": {"locale": "en", "email": "cem@example.com", "data": {"plan": "pro", "orders": 9}},
    "dora": {"locale": "de-AT", "email": "dora@example.com", "data": {"plan": "free"}},
    "eli": {"email": "eli@example.com", "data": {"plan": "pro", "orders": "12"}},
}
DE_PRO = {
    "name": "German-speaking pros",
    "topic": "news",
    "filter": {
        "subscriber.locale": {"in": ["de", "de-AT"]},
        "subscriber.data.plan": "pro",
    },
}


def cli_env(api: Api) -> dict[str, str]:
    """The environment for `tidings` commands on the API's database."""
    return {
        "TIDINGS_DATABASE_URL": api.runtime.settings.database_url,
        "TIDINGS_TOKEN_SECRET": "t" * 64,
        "TIDINGS_NOTIFY__WORKFLOWS": json.dumps(api.runtime.settings.notify.workflows),
        "COLUMNS": "200",
    }


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async for a in open_api(settings_with_workflows(tmp_path, WORKFLOWS)):
        c, h = a.client, a.auth()
        for sid, body in PEOPLE.items():
            assert (await c.put(f"/v1/subscribers/{sid}", json=body, headers=h)).is_success
        r = await c.post("/v1/topics", json={"key": "news", "name": "News"}, headers=h)
        assert r.is_success
        r = await c.post(
            "/v1/topics/news/subscribers",
            json={"subscribers": ["ana", "ben", "cem", "dora"]},
            headers=h,
        )
        assert r.is_success, r.text
        yield a


async def test_a_segment_is_created_counted_previewed_and_replaced(api: Api) -> None:
    c, h = api.client, api.auth()
    r = await c.put("/v1/segments/de-pro", json=DE_PRO, headers=h)
    assert r.status_code == 201, r.text
    assert r.json()["filter"] == DE_PRO["filter"] and r.json()["topic"] == "news"
    assert (await c.get("/v1/segments/de-pro/count", headers=h)).json() == {"count": 2}
    page = (await c.get("/v1/segments/de-pro/subscribers?limit=1", headers=h)).json()
    assert page["items"] == ["ana"] and page["next_cursor"]
    rest = await c.get(
        "/v1/segments/de-pro/subscribers", params={"cursor": page["next_cursor"]}, headers=h
    )
    assert rest.json() == {"items": ["ben"], "next_cursor": None}
    # replaced: no topic (every subscriber), numbers compared as numbers
    body = {"filter": {"subscriber.data.orders": {"gte": 5}, "subscriber.email": {"exists": True}}}
    r = await c.put("/v1/segments/de-pro", json=body, headers=h)
    assert r.status_code == 200 and r.json()["name"] == "de-pro" and r.json()["topic"] is None
    assert (await c.get("/v1/segments/de-pro/count", headers=h)).json() == {"count": 2}
    everyone = (await c.get("/v1/segments/de-pro/subscribers", headers=h)).json()
    assert everyone == {"items": ["ana", "cem"], "next_cursor": None}  # eli's "12" is a string
    await c.put("/v1/segments/all-news", json={"topic": "news"}, headers=h)
    assert [s["key"] for s in (await c.get("/v1/segments", headers=h)).json()] == [
        "all-news",
        "de-pro",
    ]
    assert (await c.delete("/v1/segments/all-news", headers=h)).status_code == 204
    r = await c.get("/v1/segments/all-news", headers=h)
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    assert (await c.get("/v1/segments/all-news/count", headers=h)).status_code == 404
    assert (await c.delete("/v1/segments/all-news", headers=h)).status_code == 404


async def test_a_campaign_to_a_segment_reaches_its_subscribers(api: Api) -> None:
    c, h = api.client, api.auth()
    assert (await c.put("/v1/segments/de-pro", json=DE_PRO, headers=h)).status_code == 201
    body = {"id": "pros", "workflow": "promo", "segment": "de-pro", "payload": {"text": "hi"}}
    r = await c.post("/v1/campaigns", json={**body, "rates": {"in_app": 1000}}, headers=h)
    assert r.status_code == 201, r.text
    got = r.json()
    assert (got["segment"], got["topic"], got["filter"]) == ("de-pro", "news", DE_PRO["filter"])
    assert (got["rate"], got["rates"]) == (None, {"in_app": 1000.0})
    for _ in range(200):
        got = (await c.get("/v1/campaigns/pros", headers=h)).json()
        if got["state"] == "completed" and got["progress"]["delivered"] == 2:
            break
        await asyncio.sleep(0.05)
    p = got["progress"]
    assert (p["total"], p["enqueued"], p["delivered"], p["pace"]) == (2, 2, 2, 1000.0)
    # The first tick handed out both and found no one left, so it began and ended the
    # campaign at one instant: no time passed to measure a rate over.
    assert got["started_at"] == got["finished_at"]
    assert p["achieved_rate"] is None
    assert p["channels"] == {
        "in_app": {"rate": 1000.0, "per_recipient": 1, "messages": 2, "achieved_rate": None}
    }
    async with api.runtime.engine.connect() as conn:
        reached = (await conn.execute(select(inbox_items.c.subscriber_id))).scalars().all()
    assert sorted(reached) == ["ana", "ben"]


async def test_bad_segments_are_problems_naming_the_field(api: Api) -> None:
    c, h = api.client, api.auth()

    async def field(body: dict[str, Any], key: str = "seg") -> str:
        r = await c.put(f"/v1/segments/{key}", json=body, headers=h)
        assert r.status_code == 422, r.text
        assert r.headers["content-type"] == "application/problem+json"
        return str(r.json()["errors"][0]["field"])

    assert await field({"filter": {"payload.plan": "pro"}}) == "filter.payload.plan"
    assert await field({"filter": {"subscriber.plan": "pro"}}) == "filter.subscriber.plan"
    assert (
        await field({"filter": {"subscriber.data.plan": {"like": "p%"}}})
        == "filter.subscriber.data.plan.like"
    )
    assert (
        await field({"filter": {"subscriber.data.n": {"gt": [1]}}}) == "filter.subscriber.data.n.gt"
    )
    assert await field({"filter": {"and": []}}) == "filter.and"
    assert await field({"filter": {}}) == "filter"
    assert await field({"filter": ["subscriber.locale"]}) == "filter"
    assert await field({}) == "filter"
    assert await field({"topic": "nope"}) == "topic"
    assert await field({"topic": "news", "extra": 1}) == "extra"
    assert await field({"topic": "news"}, key="bad,key") == "key"
    assert (await c.get("/v1/segments", headers=h)).json() == []
    assert (await c.put("/v1/segments/x", json={"topic": "news"})).status_code == 401


async def test_cli_creates_a_campaign_to_a_segment_paced_per_channel(api: Api) -> None:
    c, h = api.client, api.auth()
    assert (await c.put("/v1/segments/de-pro", json=DE_PRO, headers=h)).status_code == 201
    env = cli_env(api)

    def create(*args: str) -> tuple[int, str]:
        base = ["campaign", "create", "--workflow", "promo", "--payload", '{"text": "hi"}']
        result = CliRunner().invoke(cli, [*base, *args], env=env)
        return result.exit_code, result.output

    code, output = await asyncio.to_thread(
        create, "--segment", "de-pro", "--channel-rate", "in_app=500", "--id", "cli-pros"
    )
    assert code == 0, output
    assert "cli-pros running: 0 of ? handed out" in output and "set in_app 500/s" in output
    stored = (await c.get("/v1/campaigns/cli-pros", headers=h)).json()
    assert (stored["segment"], stored["rates"], stored["rate"]) == ("de-pro", {"in_app": 500}, None)
    code, output = await asyncio.to_thread(create, "--segment", "de-pro", "--channel-rate", "fast")
    assert code == 2 and "CHANNEL=RATE" in output
    code, output = await asyncio.to_thread(
        create, "--segment", "de-pro", "--channel-rate", "emial=5"
    )
    assert code == 2 and "rates.emial" in output
    code, output = await asyncio.to_thread(create, "--segment", "nope", "--rate", "5")
    assert code == 2 and "segment: unknown segment 'nope'" in output


async def test_cli_puts_lists_shows_previews_and_deletes_segments(api: Api, tmp_path: Path) -> None:
    env = cli_env(api)

    def run(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(cli, ["segment", *args], env=env)
        return result.exit_code, result.output

    rule = tmp_path / "de-pro.json"
    rule.write_text(json.dumps(DE_PRO["filter"]))
    code, output = await asyncio.to_thread(
        run, "put", "de-pro", "--topic", "news", "--filter", f"@{rule}", "--name", "Pros"
    )
    assert code == 0, output
    assert output.startswith("created de-pro (Pros): topic news, ")
    assert output.rstrip().endswith("; 2 subscribers")  # ana and ben
    code, output = await asyncio.to_thread(
        run, "put", "everyone-pro", "--filter", '{"subscriber.data.plan": "pro"}'
    )
    assert code == 0 and "created everyone-pro (everyone-pro): every subscriber" in output
    assert "; 4 subscribers" in output  # ana, ben, cem, eli
    stored = (await api.client.get("/v1/segments/de-pro", headers=api.auth())).json()
    assert (stored["name"], stored["topic"], stored["filter"]) == ("Pros", "news", DE_PRO["filter"])

    code, output = await asyncio.to_thread(run, "list")
    assert code == 0
    assert [line.split()[1] for line in output.splitlines() if line.startswith("│")] == [
        "de-pro",
        "everyone-pro",
    ]
    code, output = await asyncio.to_thread(run, "show", "everyone-pro")
    assert code == 0 and output.rstrip().endswith("; 4 subscribers")
    code, output = await asyncio.to_thread(run, "members", "everyone-pro", "--limit", "3")
    assert code == 0
    lines = output.splitlines()
    assert lines[:3] == ["ana", "ben", "cem"] and lines[3].startswith("next cursor: ")
    cursor = lines[3].removeprefix("next cursor: ")
    code, output = await asyncio.to_thread(
        run, "members", "everyone-pro", "--limit", "3", "--cursor", cursor
    )
    assert code == 0 and output.splitlines() == ["eli"]

    # bad input: exit 2 naming the field; unknown segments: exit 1
    code, output = await asyncio.to_thread(run, "put", "x", "--filter", "[1]")
    assert code == 2 and "--filter must be a JSON object" in output
    code, output = await asyncio.to_thread(run, "put", "x", "--topic", "nope")
    assert code == 2 and "topic: unknown topic 'nope'" in output
    code, output = await asyncio.to_thread(run, "put", "x")
    assert code == 2 and "filter: a segment needs a topic, a filter or both" in output
    code, output = await asyncio.to_thread(run, "members", "de-pro", "--cursor", "junk")
    assert code == 2 and "cursor" in output
    code, output = await asyncio.to_thread(run, "delete", "de-pro")
    assert code == 0 and "deleted de-pro" in output
    code, output = await asyncio.to_thread(run, "show", "de-pro")
    assert code == 1 and "de-pro" in output
