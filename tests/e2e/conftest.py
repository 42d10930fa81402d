"""A real Tidings server (uvicorn, native WebSocket gateway) in the test's event loop."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn

from tests.api.conftest import make_settings
from tidings.config import Settings
from tidings.core.tokens import connection_claims, encode_token, subscription_claims
from tidings.types import Scope
from tidings.wiring import Runtime, build_runtime, create_app, migrate, uvicorn_config

SECRET = "t" * 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Live:
    settings: Settings
    runtime: Runtime
    port: int
    api_key: str

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/connection/websocket"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self, user: str, ttl: float | None = None, channels: tuple[str, ...] = ()) -> str:
        now = self.runtime.clock.now()
        claims = connection_claims(user, now=now, ttl=ttl, channels=channels)
        return encode_token(claims, SECRET)

    def sub_token(self, user: str, channel: str, ttl: float | None = None) -> str:
        claims = subscription_claims(user, channel, now=self.runtime.clock.now(), ttl=ttl)
        return encode_token(claims, SECRET)


async def serve(settings: Settings) -> AsyncIterator[Live]:
    migrate(settings)
    runtime = build_runtime(settings)
    app = create_app(settings, runtime)
    server = uvicorn.Server(uvicorn_config(settings, app))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    _, key = await runtime.services.apikeys.create("e2e", frozenset({Scope.PUBLISH}))
    try:
        yield Live(settings, runtime, settings.port, key)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[Live]:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/live.db", port=free_port())
    async for server in serve(settings):
        yield server
