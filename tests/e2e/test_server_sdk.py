"""The Python server SDK against a live server, with a real-time client connected."""

from __future__ import annotations

import asyncio

import pytest
from centrifuge import Client

from tests.e2e.conftest import Live
from tests.e2e.test_centrifuge_python import ConnEvents, Recorder
from tidings.sdk import Tidings, TidingsApiError


async def test_server_sdk_publish_presence_history_disconnect(live: Live) -> None:
    rec, conn = Recorder(), ConnEvents()
    client = Client(live.ws_url, token=live.token("zoe"), events=conn)
    sub = client.new_subscription("chat:sdk", events=rec)
    await client.connect()
    await sub.subscribe()
    await rec.until(lambda: rec.subscribed)
    async with Tidings(live.http_url, live.api_key) as t:
        pub = await t.publish("chat:sdk", {"hello": "zoe"})
        await rec.until(lambda: rec.pubs)
        assert rec.pubs[0][:2] == (pub["offset"], {"hello": "zoe"})
        [bpub] = await t.broadcast(["chat:sdk"], {"n": 2})
        assert bpub["offset"] == pub["offset"] + 1
        history = await t.history("chat:sdk", limit=-1)
        assert [p["data"] for p in history["publications"]] == [{"hello": "zoe"}, {"n": 2}]
        presence = await t.presence("chat:sdk")
        assert [c["user"] for c in presence] == ["zoe"]
        assert await t.presence_stats("chat:sdk") == {"num_clients": 1, "num_users": 1}
        assert (await t.channels())["chat:sdk"] == 1
        event = await t.send_event("note", channels=["chat:sdk"], payload={"x": 1})
        await rec.until(lambda: len(rec.pubs) == 3)
        assert rec.pubs[2][1]["event_id"] == event["id"]
        with pytest.raises(TidingsApiError) as err:
            await t.publish("nowhere:x", 1)
        assert err.value.status == 422
        assert await t.disconnect("zoe") == 1
    await asyncio.sleep(0.3)
    assert 3503 in conn.disconnects  # terminal: the SDK does not reconnect
    assert live.runtime.hub.client_count == 0
    await client.disconnect()
