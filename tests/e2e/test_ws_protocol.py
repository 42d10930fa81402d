"""Raw WebSocket misuse: malformed input, bad tokens, slow readers. The server answers with a
protocol error or close code and stays healthy for everyone else."""

from __future__ import annotations

import asyncio
import socket

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.e2e.conftest import Live


async def connected(live: Live, user: str = "u") -> ClientConnection:
    ws = await connect(live.ws_url, max_size=None)
    await ws.send(orjson.dumps({"id": 1, "connect": {"token": live.token(user)}}).decode())
    reply = orjson.loads(await ws.recv())
    assert reply["id"] == 1 and "connect" in reply, reply
    return ws


async def closed_with(ws: ClientConnection) -> int | None:
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code is not None
    return ws.close_code


async def healthy(live: Live) -> None:
    """Another client connects, subscribes and gets a publication."""
    ws = await connected(live, "bystander")
    await ws.send('{"id":2,"subscribe":{"channel":"orders:health"}}')
    assert "subscribe" in orjson.loads(await ws.recv())
    await live.runtime.hub.publish("orders:health", b'{"ok":true}')
    push = orjson.loads(await ws.recv())
    assert push["push"]["pub"]["data"] == {"ok": True}
    await ws.close()


@pytest.mark.parametrize(
    "frame",
    [
        "{not json",
        "[1,2,3]",
        '{"id":2,"frobnicate":{}}',
        '{"id":2,"subscribe":{"channel":42}}',
        "\u00ff" * 10,
    ],
)
async def test_malformed_commands_close_with_bad_request(live: Live, frame: str) -> None:
    ws = await connected(live)
    await ws.send(frame)
    assert await closed_with(ws) == 3501
    await healthy(live)


async def test_command_before_connect_closes(live: Live) -> None:
    ws = await connect(live.ws_url)
    await ws.send('{"id":1,"subscribe":{"channel":"chat:x"}}')
    assert await closed_with(ws) == 3501


async def test_oversized_frame_is_refused(live: Live) -> None:
    ws = await connected(live)
    await ws.send('{"id":2,"publish":{"channel":"chat:x","data":"' + "x" * 200_000 + '"}}')
    code = await closed_with(ws)
    assert code in (1009, 3501)
    await healthy(live)


async def test_invalid_token_closes_3500(live: Live) -> None:
    ws = await connect(live.ws_url)
    await ws.send('{"id":1,"connect":{"token":"not.a.jwt"}}')
    assert await closed_with(ws) == 3500


async def test_expired_token_is_error_109(live: Live) -> None:
    ws = await connect(live.ws_url)
    await ws.send(orjson.dumps({"id": 1, "connect": {"token": live.token("u", ttl=-60)}}).decode())
    reply = orjson.loads(await ws.recv())
    assert reply["error"]["code"] == 109
    await ws.close()


async def test_unknown_namespace_and_permissions_are_errors_not_closes(live: Live) -> None:
    ws = await connected(live)
    await ws.send('{"id":2,"subscribe":{"channel":"nowhere:x"}}')
    assert orjson.loads(await ws.recv())["error"]["code"] == 102
    await ws.send('{"id":3,"publish":{"channel":"orders:x","data":{}}}')
    assert orjson.loads(await ws.recv())["error"]["code"] == 103
    await ws.send('{"id":4,"subscribe":{"channel":"secret:x"}}')
    assert orjson.loads(await ws.recv())["error"]["code"] in (101, 103)
    await ws.send('{"id":5,"subscribe":{"channel":"chat:x"}}')
    assert "subscribe" in orjson.loads(await ws.recv())
    await ws.close()


async def test_many_commands_in_one_frame(live: Live) -> None:
    ws = await connected(live)
    await ws.send(
        '{"id":2,"subscribe":{"channel":"orders:a"}}\n{"id":3,"subscribe":{"channel":"orders:b"}}'
    )
    replies = [orjson.loads(line) for line in (await ws.recv()).split("\n")]
    if len(replies) == 1:
        replies.append(orjson.loads(await ws.recv()))
    assert sorted(r["id"] for r in replies) == [2, 3]
    await ws.close()


async def test_a_client_that_never_reads_is_disconnected_and_memory_stays_bounded(
    live: Live,
) -> None:
    """A raw socket completes the handshake, subscribes, then stops reading. Durable
    publications pile up in its buffer until the server drops it (3008 slow); the others
    keep receiving."""
    port = live.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    raw = writer.get_extra_info("socket")
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    writer.write(
        (
            "GET /connection/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await reader.readuntil(b"\r\n\r\n")

    def masked(text: str) -> bytes:
        data = text.encode()
        mask = b"\x01\x02\x03\x04"
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        assert len(data) < 65536
        if len(data) < 126:
            return bytes((0x81, 0x80 | len(data))) + mask + body
        return bytes((0x81, 0x80 | 126)) + len(data).to_bytes(2, "big") + mask + body

    writer.write(masked(orjson.dumps({"id": 1, "connect": {"token": live.token("slow")}}).decode()))
    writer.write(masked('{"id":2,"subscribe":{"channel":"orders:flood"}}'))
    await writer.drain()
    await asyncio.sleep(0.3)
    good = await connected(live, "fast")
    await good.send('{"id":2,"subscribe":{"channel":"orders:flood"}}')
    assert "subscribe" in orjson.loads(await good.recv())
    hub = live.runtime.hub
    assert hub.local_subscribers("orders:flood") == 2
    blob = orjson.dumps({"blob": "x" * 60_000})
    received = 0
    for _ in range(120):  # ~7 MB to the slow reader, whose buffer limit is 1 MiB
        await hub.publish("orders:flood", blob)
        msg = await asyncio.wait_for(good.recv(), 5)
        received += msg.count('"push"')
    assert received == 120
    assert hub.local_subscribers("orders:flood") == 1  # the slow one is gone
    slow = [c for c in hub._clients.values() if c.user == "slow"]
    assert slow == []
    await good.close()
    writer.close()


async def test_server_keeps_serving_after_abrupt_disconnects(live: Live) -> None:
    for _ in range(20):
        ws = await connected(live)
        ws.transport.abort()  # type: ignore[attr-defined]
    await asyncio.sleep(0.2)
    await healthy(live)
    assert live.runtime.hub.client_count == 0


async def test_server_pings_and_closes_a_client_that_never_pongs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.api.conftest import CHANNELS, make_settings
    from tests.e2e.conftest import free_port, serve
    from tidings.config import GatewaySettings

    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path}/ping.db",
        port=free_port(),
    ).model_copy(
        update={"gateway": GatewaySettings(channels=CHANNELS, ping_interval=1, pong_timeout=1)}
    )
    async for live in serve(settings):
        ws = await connected(live, "quiet")
        reply_ping = await connected(live, "chatty")
        assert await asyncio.wait_for(ws.recv(), 3) == "{}"  # the server's ping
        assert await asyncio.wait_for(reply_ping.recv(), 3) == "{}"
        await reply_ping.send("{}")  # pong
        assert await closed_with(ws) == 3012  # no pong
        assert await asyncio.wait_for(reply_ping.recv(), 3) == "{}"  # still alive, pinged again
        await reply_ping.close()
