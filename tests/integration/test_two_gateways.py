"""Two gateway processes' worth of runtimes on one Redis: fanout between them, and recovery on
the other node after a drain."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import orjson
import pytest
from centrifuge import Client
from websockets.asyncio.client import connect

from tests.api.conftest import make_settings
from tests.e2e.conftest import Live, free_port, serve
from tests.e2e.test_centrifuge_python import Recorder

pytestmark = pytest.mark.redis


@pytest.fixture
async def pair(tmp_path: Path, redis_url: str) -> AsyncIterator[tuple[Live, Live]]:
    prefix = f"t2g-{uuid.uuid4().hex[:8]}"
    async with AsyncExitStack() as stack:
        nodes = []
        for name in ("a", "b"):
            settings = make_settings(
                f"sqlite+aiosqlite:///{tmp_path}/{name}.db",
                port=free_port(),
                broker="redis",
                redis_url=redis_url,
                redis_prefix=prefix,
            )
            gen = serve(settings)
            nodes.append(await gen.__anext__())
            stack.push_async_callback(gen.aclose)
        yield nodes[0], nodes[1]


async def test_a_client_on_one_node_receives_what_the_other_publishes(
    pair: tuple[Live, Live],
) -> None:
    a, b = pair
    rec = Recorder()
    client = Client(a.ws_url, token=a.token("ann"))
    sub = client.new_subscription("chat:shared", events=rec)
    await client.connect()
    await sub.subscribe()
    await rec.until(lambda: rec.subscribed)
    for n in range(5):
        await b.runtime.hub.publish("chat:shared", orjson.dumps({"n": n}))
    await rec.until(lambda: len(rec.pubs) == 5)
    assert [(p[0], p[1]["n"]) for p in rec.pubs] == [(i + 1, i) for i in range(5)]
    stats = await b.runtime.hub.presence_stats("chat:shared")
    assert (stats.num_clients, stats.num_users) == (1, 1)  # presence is shared too
    await client.disconnect()


async def test_drained_client_recovers_on_the_other_node_with_no_loss(
    pair: tuple[Live, Live],
) -> None:
    a, b = pair
    ws = await connect(a.ws_url)
    await ws.send(orjson.dumps({"id": 1, "connect": {"token": a.token("bo")}}).decode())
    assert "connect" in orjson.loads(await ws.recv())
    await ws.send('{"id":2,"subscribe":{"channel":"orders:move","recover":true}}')
    reply = orjson.loads(await ws.recv())["subscribe"]
    epoch, offset = reply["epoch"], reply.get("offset", 0)
    await b.runtime.hub.publish("orders:move", b'{"n":0}')
    push = orjson.loads(await ws.recv())
    offset = push["push"]["pub"]["offset"]
    await a.runtime.hub.drain(spread=0)
    await asyncio.wait_for(ws.wait_closed(), 5)
    assert ws.close_code == 3001
    for n in range(1, 4):  # published while the client moves
        await b.runtime.hub.publish("orders:move", orjson.dumps({"n": n}))
    ws2 = await connect(b.ws_url)
    await ws2.send(orjson.dumps({"id": 1, "connect": {"token": b.token("bo")}}).decode())
    assert "connect" in orjson.loads(await ws2.recv())
    await ws2.send(
        orjson.dumps(
            {
                "id": 2,
                "subscribe": {
                    "channel": "orders:move",
                    "recover": True,
                    "epoch": epoch,
                    "offset": offset,
                },
            }
        ).decode()
    )
    reply = orjson.loads(await ws2.recv())["subscribe"]
    assert reply["recovered"] is True and reply["was_recovering"] is True
    assert [p["data"]["n"] for p in reply["publications"]] == [1, 2, 3]
    assert [p["offset"] for p in reply["publications"]] == [2, 3, 4]
    await ws2.close()
