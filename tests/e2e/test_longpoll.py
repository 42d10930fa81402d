"""Long polling: hold until a publication, time out empty, resume from the cursor losing
nothing, and refuse bad input with problem+json."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest

from tests.api.conftest import Api, api
from tests.e2e.conftest import Live
from tests.e2e.test_sse import assert_problem, eventually, publish, token
from tidings.core.sse import decode_cursor, encode_cursor
from tidings.transports import longpoll
from tidings.types import StreamPosition

__all__ = ["api"]  # the fixture


async def poll(a: Api, *channels: str, status: int = 200, **extra: Any) -> dict[str, Any]:
    body = {"token": token(a.runtime), "channels": list(channels), **extra}
    r = await a.client.post("/connection/poll", json=body)
    assert r.status_code == status, r.text
    assert r.headers["cache-control"] == "no-store"
    result: dict[str, Any] = r.json()
    return result


async def test_first_poll_is_immediate_with_the_top_cursor(api: Api) -> None:
    await publish(api.runtime, "chat:lp", 1, 2)
    first = await poll(api, "chat:lp", "typing:lp", timeout=30)
    assert first["events"] == [] and first["recovered"] is True
    top = (await api.runtime.hub.history("chat:lp")).position
    assert decode_cursor(first["cursor"]) == {"chat:lp": top}  # ephemeral typing: no position


async def test_hold_then_release_on_publish(api: Api) -> None:
    hub = api.runtime.hub
    cursor = (await poll(api, "chat:hold"))["cursor"]
    await eventually(lambda: hub.local_subscribers("chat:hold") == 0)
    held = asyncio.create_task(poll(api, "chat:hold", cursor=cursor, timeout=10))
    await eventually(lambda: hub.local_subscribers("chat:hold") == 1)
    assert not held.done()
    await publish(api.runtime, "chat:hold", 7)
    answer = await asyncio.wait_for(held, 5)
    assert answer["events"] == [{"channel": "chat:hold", "offset": 1, "data": {"n": 7}}]
    assert decode_cursor(answer["cursor"])["chat:hold"].offset == 1
    await eventually(lambda: hub.local_subscribers("chat:hold") == 0 and hub.client_count == 0)


async def test_ephemeral_channels_hold_with_the_empty_cursor(api: Api) -> None:
    first = await poll(api, "typing:e")
    assert first == {"events": [], "recovered": True, "cursor": ""}
    hub = api.runtime.hub
    await eventually(lambda: hub.local_subscribers("typing:e") == 0)  # the first poll left
    held = asyncio.create_task(poll(api, "typing:e", cursor="", timeout=10))
    await eventually(lambda: hub.local_subscribers("typing:e") == 1)  # ephemeral: join first
    await publish(api.runtime, "typing:e", 1)
    answer = await asyncio.wait_for(held, 5)
    assert answer == {
        "events": [{"channel": "typing:e", "offset": 0, "data": {"n": 1}}],
        "recovered": True,
        "cursor": "",
    }


async def test_timeout_answers_empty_with_the_same_cursor(api: Api) -> None:
    await publish(api.runtime, "orders:t", 1)
    cursor = (await poll(api, "orders:t"))["cursor"]
    loop = asyncio.get_running_loop()
    started = loop.time()
    answer = await poll(api, "orders:t", cursor=cursor, timeout=0.3)
    assert loop.time() - started >= 0.3
    assert answer == {"events": [], "recovered": True, "cursor": cursor}


async def test_resume_with_the_cursor_loses_nothing(api: Api) -> None:
    rt = api.runtime
    cursor = (await poll(api, "chat:r", "orders:r"))["cursor"]
    seen: list[tuple[str, int]] = []
    for batch in ((1, 2, 3), (4,), (5, 6)):
        await publish(rt, "chat:r", *batch)
        await publish(rt, "orders:r", batch[0])
        answer = await poll(api, "chat:r", "orders:r", cursor=cursor, timeout=5)
        seen += [(e["channel"], e["data"]["n"]) for e in answer["events"]]
        cursor = answer["cursor"]
    assert [n for ch, n in seen if ch == "chat:r"] == [1, 2, 3, 4, 5, 6]
    assert [n for ch, n in seen if ch == "orders:r"] == [1, 4, 5]
    quiet = await poll(api, "chat:r", "orders:r", cursor=cursor, timeout=0.1)
    assert quiet["events"] == [] and quiet["cursor"] == cursor


async def test_get_with_query_and_channels_from_the_cursor(api: Api) -> None:
    cursor = (await poll(api, "chat:g"))["cursor"]
    await publish(api.runtime, "chat:g", 1)
    params = {"token": token(api.runtime), "cursor": cursor, "timeout": "1"}
    r = await api.client.get("/connection/poll", params=params)
    assert r.status_code == 200, r.text
    assert [e["data"] for e in r.json()["events"]] == [{"n": 1}]


async def test_unrecoverable_position_reports_the_channels(api: Api) -> None:
    rt = api.runtime
    await publish(rt, "chat:ok", 1)
    await publish(rt, "chat:gone", 1, 2)
    ok = (await rt.hub.history("chat:ok")).position
    cursor = encode_cursor({"chat:ok": ok, "chat:gone": StreamPosition(1, "old-epoch")})
    await publish(rt, "chat:ok", 2)
    answer = await poll(api, "chat:ok", "chat:gone", cursor=cursor)
    top = (await rt.hub.history("chat:gone")).position
    assert answer["events"] == [] and answer["recovered"] is False
    assert answer["channels"] == {"chat:gone": {"epoch": top.epoch, "offset": 2}}
    # The failed channel restarts at its top; the other still gets what it missed.
    assert decode_cursor(answer["cursor"]) == {"chat:gone": top, "chat:ok": ok}
    again = await poll(api, "chat:ok", "chat:gone", cursor=answer["cursor"])
    assert [(e["channel"], e["offset"]) for e in again["events"]] == [("chat:ok", 2)]


async def test_client_leaving_a_held_poll_releases_it(api: Api) -> None:
    hub = api.runtime.hub
    cursor = (await poll(api, "chat:bye"))["cursor"]
    await eventually(lambda: hub.local_subscribers("chat:bye") == 0)
    held = asyncio.create_task(poll(api, "chat:bye", cursor=cursor, timeout=30))
    await eventually(lambda: hub.local_subscribers("chat:bye") == 1)
    held.cancel()
    await eventually(lambda: hub.local_subscribers("chat:bye") == 0 and hub.client_count == 0)


async def test_refusals(api: Api) -> None:
    url = "/connection/poll"
    bad_cursor = await api.client.post(
        url, json={"token": token(api.runtime), "channels": ["chat:x"], "cursor": "1@@"}
    )
    body = assert_problem(bad_cursor, 422, "invalid-cursor")
    assert body["errors"][0]["field"] == "cursor"
    garbage = encode_cursor({"chat:x": StreamPosition(1, "e")})[:-3] + "###"
    r = await api.client.get(url, params={"token": token(api.runtime), "cursor": garbage})
    assert assert_problem(r, 422, "invalid-cursor")["errors"][0]["field"] == "cursor"
    r = await api.client.post(url, json={"token": "nope", "channels": ["chat:x"]})
    assert_problem(r, 401, "invalid-token")
    expired = token(api.runtime, ttl=-5)
    r = await api.client.post(url, json={"token": expired, "channels": ["chat:x"]})
    assert_problem(r, 401, "token-expired")
    r = await api.client.post(url, json={"token": token(api.runtime), "channels": ["nowhere:x"]})
    assert "nowhere:x" in assert_problem(r, 422, "unknown-channel")["detail"]
    r = await api.client.post(url, json={"token": token(api.runtime), "channels": []})
    assert assert_problem(r, 422, "invalid")["errors"][0]["field"] == "channels"
    r = await api.client.post(url, json={"token": "", "channels": ["chat:x"], "timeout": -1})
    assert_problem(r, 422, "validation")
    assert api.runtime.hub.client_count == 0


def test_timeout_default_jitter_and_cap() -> None:
    waits = [longpoll._wait(None) for _ in range(200)]
    assert all(22.5 <= w <= 27.5 for w in waits) and len(set(waits)) > 1
    assert longpoll._wait(1000) == 60 and longpoll._wait(0.5) == 0.5


@pytest.mark.parametrize("data", [b'{"deep":{"x":[1,2]}}', b'"text"', b"null"])
async def test_data_comes_back_as_json(api: Api, data: bytes) -> None:
    cursor = (await poll(api, "orders:d"))["cursor"]
    await api.runtime.hub.publish("orders:d", data)
    [event] = (await poll(api, "orders:d", cursor=cursor))["events"]
    assert event["data"] == orjson.loads(data)


async def test_closed_tcp_connection_ends_the_hold(live: Live) -> None:
    hub = live.runtime.hub
    body = {"token": live.token("dave"), "channels": ["chat:tcp"]}
    async with httpx.AsyncClient(base_url=live.http_url) as client:
        cursor = (await client.post("/connection/poll", json=body)).json()["cursor"]
        await eventually(lambda: hub.local_subscribers("chat:tcp") == 0)
        held = asyncio.create_task(
            client.post("/connection/poll", json={**body, "cursor": cursor, "timeout": 30})
        )
        await eventually(lambda: hub.local_subscribers("chat:tcp") == 1)
        held.cancel()  # httpx drops the connection; the server must notice before 30 s
        await eventually(lambda: hub.local_subscribers("chat:tcp") == 0, timeout=3)
        assert hub.client_count == 0
