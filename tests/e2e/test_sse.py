"""Server-sent events: a plain `EventSource` client's view, parsed from the raw stream.

httpx's own ASGI transport buffers a response until the app finishes, so these tests drive the
ASGI app through `StreamingASGITransport`, which hands the body over chunk by chunk and tells
the app `http.disconnect` when the response is closed (the browser going away). One test runs
over real TCP against uvicorn."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.api.conftest import Api, make_settings
from tests.e2e.conftest import SECRET, Live
from tidings.core.protocol.codes import Disconnect, DisconnectCode
from tidings.core.sse import decode_cursor, encode_cursor
from tidings.core.tokens import connection_claims, encode_token
from tidings.transports import sse
from tidings.types import Scope, StreamPosition
from tidings.wiring import Runtime, build_runtime, create_app, migrate


class _Body(httpx.AsyncByteStream):
    def __init__(self, chunks: asyncio.Queue[bytes | None], gone: asyncio.Event, app: Any) -> None:
        self.chunks, self.gone, self.app = chunks, gone, app

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (chunk := await self.chunks.get()) is not None:
            yield chunk

    async def aclose(self) -> None:
        self.gone.set()
        await asyncio.wait_for(self.app, 5)


class StreamingASGITransport(httpx.AsyncBaseTransport):
    def __init__(self, app: Any) -> None:
        self.app = app

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = b"".join([part async for part in request.stream])  # type: ignore[union-attr]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": request.method,
            "scheme": "http",
            "path": request.url.path,
            "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query,
            "root_path": "",
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "client": ("127.0.0.1", 50000),
            "server": ("tidings", 80),
        }
        chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        gone, start = asyncio.Event(), asyncio.get_running_loop().create_future()
        pending = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            if pending:
                return pending.pop()
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if gone.is_set():
                return  # as uvicorn does (ASGI spec 2.3): the app learns it from receive()
            if message["type"] == "http.response.start":
                start.set_result(message)
            elif message["type"] == "http.response.body":
                chunks.put_nowait(message.get("body", b""))
                if not message.get("more_body", False):
                    chunks.put_nowait(None)

        app = asyncio.ensure_future(self.app(scope, receive, send))
        await asyncio.wait([start, app], return_when=asyncio.FIRST_COMPLETED)
        if not start.done():
            app.result()
        message = start.result()
        return httpx.Response(
            message["status"], headers=message["headers"], stream=_Body(chunks, gone, app)
        )


@dataclass
class Sse:
    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None

    def json(self) -> Any:
        return orjson.loads(self.data)


@dataclass
class Reader:
    """The EventSource parsing rules, enough for these tests."""

    response: httpx.Response
    comments: list[str] = field(default_factory=list)
    last_id: str = ""
    _buf: str = ""
    _chunks: AsyncIterator[str] | None = None

    async def _block(self) -> list[str]:
        if self._chunks is None:
            self._chunks = self.response.aiter_text()
        while "\n\n" not in self._buf:
            self._buf += await anext(self._chunks)
        block, self._buf = self._buf.split("\n\n", 1)
        return block.split("\n")

    async def next(self, timeout: float = 5.0) -> Sse:
        async with asyncio.timeout(timeout):
            while True:
                ev, data = Sse(), []
                for line in await self._block():
                    name, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if not name:
                        self.comments.append(value)
                    elif name == "data":
                        data.append(value)
                    elif name == "id":
                        ev.id = self.last_id = value
                    elif name == "retry":
                        ev.retry = int(value)
                    elif name == "event":
                        ev.event = value
                if data:
                    ev.data = "\n".join(data)
                    return ev

    async def publications(self, n: int) -> list[Sse]:
        """The next `n` publications; presence changes (join, leave) may come between."""
        out: list[Sse] = []
        while len(out) < n:
            ev = await self.next()
            if ev.event not in ("join", "leave"):
                assert ev.event == "publication", ev
                out.append(ev)
        return out


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Api]:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/sse.db")
    migrate(settings)
    runtime = build_runtime(settings)
    app = create_app(settings, runtime)
    async with app.router.lifespan_context(app):
        _, key = await runtime.services.apikeys.create("pub", frozenset({Scope.PUBLISH}))
        transport = StreamingASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tidings") as client:
            yield Api(client=client, runtime=runtime, publish_key=key, admin_key=key)


def token(rt: Runtime, user: str = "alice", ttl: float | None = 3600) -> str:
    return encode_token(connection_claims(user, now=rt.clock.now(), ttl=ttl), SECRET)


def query(rt: Runtime, *channels: str, user: str = "alice") -> dict[str, Any]:
    return {"token": token(rt, user), "channel": list(channels)}


async def eventually(check: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


async def publish(rt: Runtime, channel: str, *values: int) -> None:
    for v in values:
        await rt.hub.publish(channel, orjson.dumps({"n": v}))


async def test_stream_resumes_from_last_event_id_without_loss_or_repeat(gw: Api) -> None:
    rt = gw.runtime
    params = query(rt, "chat:room", "orders:7")
    async with gw.client.stream("GET", "/connection/sse", params=params) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = Reader(r)
        hello = await events.next()
        assert hello.event == "connected" and hello.retry == 2000
        assert hello.json()["channels"] == ["chat:room", "orders:7"]
        assert set(decode_cursor(hello.id or "")) == {"chat:room", "orders:7"}
        await publish(rt, "chat:room", 1, 2)
        got = await events.publications(2)
        assert [e.json() for e in got] == [
            {"channel": "chat:room", "data": {"n": n}, "offset": n} for n in (1, 2)
        ]
        assert decode_cursor(got[1].id or "")["chat:room"].offset == 2
        last = events.last_id
    await eventually(lambda: rt.hub.client_count == 0 and not rt.hub.channel_names())

    await publish(rt, "chat:room", 3, 4, 5)
    await publish(rt, "orders:7", 10)
    async with gw.client.stream(
        "GET", "/connection/sse", params=params, headers={"Last-Event-ID": last}
    ) as r:
        events = Reader(r)
        assert (await events.next()).event == "connected"
        missed = await events.publications(4)
        assert [(e.json()["channel"], e.json()["offset"]) for e in missed] == [
            ("chat:room", 3),
            ("chat:room", 4),
            ("chat:room", 5),
            ("orders:7", 1),
        ]
        await publish(rt, "chat:room", 6)
        [live] = await events.publications(1)
        assert live.json()["offset"] == 6
        positions = decode_cursor(live.id or "")
        assert (positions["chat:room"].offset, positions["orders:7"].offset) == (6, 1)
        with pytest.raises(TimeoutError):
            await events.next(timeout=0.2)  # nothing repeated


async def test_first_connect_may_resume_from_the_query(gw: Api) -> None:
    rt = gw.runtime
    first = await rt.hub.publish("chat:q", b"1")
    await publish(rt, "chat:q", 2, 3)
    cursor = encode_cursor({"chat:q": StreamPosition(first.offset, first.epoch)})
    params = {**query(rt, "chat:q"), "last_event_id": cursor}
    async with gw.client.stream("GET", "/connection/sse", params=params) as r:
        events = Reader(r)
        assert decode_cursor((await events.next()).id or "")["chat:q"].offset == 1
        assert [e.json()["data"] for e in await events.publications(2)] == [{"n": 2}, {"n": 3}]


async def test_channels_claimed_by_the_token_stream_and_recover(gw: Api) -> None:
    rt = gw.runtime
    claims = connection_claims("erin", now=rt.clock.now(), ttl=60, channels=["orders:srv"])
    params = {"token": encode_token(claims, SECRET)}
    async with gw.client.stream("GET", "/connection/sse", params=params) as r:
        events = Reader(r)
        assert (await events.next()).json()["channels"] == ["orders:srv"]
        await publish(rt, "orders:srv", 1)
        await events.publications(1)
        last = events.last_id
    await eventually(lambda: rt.hub.client_count == 0)
    await publish(rt, "orders:srv", 2, 3)
    headers = {"Last-Event-ID": last}
    async with gw.client.stream("GET", "/connection/sse", params=params, headers=headers) as r:
        events = Reader(r)
        await events.next()
        assert [e.json()["offset"] for e in await events.publications(2)] == [2, 3]


async def test_unknown_epoch_sends_recovery_failed(gw: Api) -> None:
    rt = gw.runtime
    await publish(rt, "chat:lost", 1, 2)
    cursor = encode_cursor({"chat:lost": StreamPosition(1, "gone-epoch")})
    headers = {"Last-Event-ID": cursor}
    async with gw.client.stream(
        "GET", "/connection/sse", params=query(rt, "chat:lost"), headers=headers
    ) as r:
        events = Reader(r)
        assert (await events.next()).event == "connected"
        failed = await events.next()
        assert failed.event == "recovery_failed"
        top = (await rt.hub.history("chat:lost")).position
        assert failed.json() == {"channel": "chat:lost", "epoch": top.epoch, "offset": 2}
        assert decode_cursor(failed.id or "") == {"chat:lost": top}
        await publish(rt, "chat:lost", 3)
        [pub] = await events.publications(1)
        assert pub.json()["offset"] == 3


async def test_http_publish_join_and_keepalive(gw: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sse, "KEEPALIVE_INTERVAL", 0.05)
    rt = gw.runtime
    async with gw.client.stream("GET", "/connection/sse", params=query(rt, "chat:j")) as r:
        events = Reader(r)
        await events.next()
        own = await events.next()
        assert own.event == "join" and own.json()["info"]["user"] == "alice"
        async with gw.client.stream(
            "GET", "/connection/sse", params=query(rt, "chat:j", user="bob")
        ) as other:
            join = await events.next()
            assert join.event == "join" and join.id is None
            assert join.json()["info"]["user"] == "bob"
            await Reader(other).next()
        leave = await events.next()
        assert leave.event == "leave"
        sent = await gw.client.post(
            "/v1/realtime/publish", json={"channel": "chat:j", "data": "hi"}, headers=gw.auth()
        )
        assert sent.status_code == 200, sent.text
        [pub] = await events.publications(1)
        assert pub.json()["data"] == "hi"
        await asyncio.sleep(0.15)
        await publish(rt, "chat:j", 1)
        await events.publications(1)
        assert "" in events.comments  # the bare `:` keepalive


async def test_server_pings_are_answered_for_the_browser(gw: Api) -> None:
    hub = gw.runtime.hub
    session = dataclasses.replace(hub.options.session, ping_interval=0.1, pong_timeout=0.15)
    hub.options = dataclasses.replace(hub.options, session=session, tick=0.02)
    async with gw.client.stream("GET", "/connection/sse", params=query(gw.runtime, "chat:p")) as r:
        events = Reader(r)
        await events.next()
        # The ticker wakes within its old 1 s tick, then pings every 0.1 s; each ping would
        # close the connection (3012 no pong) 0.15 s later unless answered.
        await asyncio.sleep(1.6)
        await publish(gw.runtime, "chat:p", 1)
        await events.publications(1)
        assert events.comments.count("ping") >= 3


async def test_server_disconnect_ends_the_stream(gw: Api) -> None:
    rt = gw.runtime
    async with gw.client.stream("GET", "/connection/sse", params=query(rt, "chat:d")) as r:
        events = Reader(r)
        await events.next()
        assert rt.hub.disconnect_user("alice", Disconnect.of(DisconnectCode.FORCE_NO_RECONNECT))
        bye = await events.next()
        while bye.event == "join":
            bye = await events.next()
        assert bye.event == "disconnect"
        assert bye.json() == {"code": 3503, "reason": "force disconnect", "reconnect": False}
        with pytest.raises(StopAsyncIteration):
            await events.next()
    await eventually(lambda: rt.hub.client_count == 0)


def assert_problem(r: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["type"].endswith("/" + kind), body
    return body


async def test_refusals_are_problems_not_streams(gw: Api) -> None:
    rt = gw.runtime
    url = "/connection/sse"
    bad = await gw.client.get(url, params={"token": "not.a.jwt", "channel": "chat:x"})
    assert_problem(bad, 401, "invalid-token")
    assert "www-authenticate" in bad.headers
    assert_problem(await gw.client.get(url, params={"channel": "chat:x"}), 401, "invalid-token")
    expired = {"token": token(rt, ttl=-10), "channel": "chat:x"}
    assert_problem(await gw.client.get(url, params=expired), 401, "token-expired")
    unknown = await gw.client.get(url, params=query(rt, "chat:x", "nowhere:x"))
    body = assert_problem(unknown, 422, "unknown-channel")
    assert "nowhere:x" in body["detail"] and body["errors"][0]["field"] == "channel"
    private = await gw.client.get(url, params=query(rt, "secret:x"))
    assert "secret:x" in assert_problem(private, 403, "forbidden")["detail"]
    cursor = await gw.client.get(url, params=query(rt, "chat:x"), headers={"Last-Event-ID": "1!!!"})
    body = assert_problem(cursor, 422, "invalid-cursor")
    assert body["errors"][0]["field"] == "cursor"
    await eventually(lambda: rt.hub.client_count == 0 and not rt.hub.channel_names())


async def test_anonymous_when_allowed(gw: Api) -> None:
    hub = gw.runtime.hub
    hub.options = dataclasses.replace(hub.options, allow_anonymous=True)
    async with gw.client.stream("GET", "/connection/sse", params={"channel": "chat:a"}) as r:
        assert r.status_code == 200
        assert (await Reader(r).next()).event == "connected"


async def test_events_api_reaches_the_stream(gw: Api) -> None:
    rt = gw.runtime
    async with gw.client.stream("GET", "/connection/sse", params=query(rt, "orders:u9")) as r:
        events = Reader(r)
        await events.next()
        event = {
            "type": "order.shipped",
            "actor": "shop",
            "recipients": ["u9"],
            "channels": ["orders:u9"],
            "payload": {"order": 42},
        }
        accepted = await gw.client.post("/v1/events", json=event, headers=gw.auth())
        assert accepted.status_code == 202, accepted.text
        [pub] = await events.publications(1)
        assert b"42" in pub.data.encode() and pub.json()["channel"] == "orders:u9"


async def test_browser_leaving_over_tcp_releases_the_connection(live: Live) -> None:
    hub = live.runtime.hub
    params = {"token": live.token("carol"), "channel": "chat:tcp"}
    async with httpx.AsyncClient(base_url=live.http_url) as client:
        async with client.stream("GET", "/connection/sse", params=params) as r:
            events = Reader(r)
            assert (await events.next()).event == "connected"
            assert hub.local_subscribers("chat:tcp") == 1
            await hub.publish("chat:tcp", b'{"over":"tcp"}')
            [pub] = await events.publications(1)
            assert pub.json()["data"] == {"over": "tcp"}
        await eventually(lambda: hub.local_subscribers("chat:tcp") == 0)
        assert hub.client_count == 0
