from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tidings.config import GatewaySettings, NotifySettings, Settings, WorkerSettings
from tidings.ports.clock import Clock
from tidings.types import Scope
from tidings.wiring import Runtime, build_runtime, create_app, migrate

CHANNELS = {
    "default": {"history_size": 100, "history_ttl": "5m", "presence": True},
    "namespaces": {
        "orders": {"history_size": 10, "history_ttl": "1m"},
        "chat": {
            "history_size": 100,
            "history_ttl": "5m",
            "presence": True,
            "join_leave": True,
            "allow_publish_for_client": True,
            "allow_history_for_client": True,
            "allow_presence_for_client": True,
        },
        "typing": {"allow_publish_for_client": True},
        "cursor": {"delivery": "latest", "history_size": 1, "history_ttl": "1m"},
        "secret": {"private": True, "history_size": 10, "history_ttl": "1m"},
    },
}


@dataclass
class Api:
    client: httpx.AsyncClient
    runtime: Runtime
    publish_key: str
    admin_key: str

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.publish_key}"}


def settings_with_workflows(tmp_path: Path, workflows: str) -> Settings:
    """`make_settings` on a SQLite file under `tmp_path`, with these workflow definitions."""
    (tmp_path / "workflows.yaml").write_text(workflows)
    return make_settings(
        f"sqlite+aiosqlite:///{tmp_path}/api.db",
        notify=NotifySettings(workflows=[str(tmp_path / "workflows.yaml")]),
    )


def make_settings(database_url: str, **overrides: object) -> Settings:
    return Settings(
        database_url=database_url,
        max_body_bytes=16 * 1024,
        max_payload_bytes=4 * 1024,
        worker=WorkerSettings(poll_interval=0.02, lease_seconds=5.0),
        token_secret="t" * 64,
        gateway=GatewaySettings(channels=CHANNELS),
        **overrides,  # type: ignore[arg-type]
    )


async def admin_sql(pg_url: str, statement: str) -> None:
    """One statement on PostgreSQL outside a transaction (CREATE/DROP DATABASE)."""
    admin = create_async_engine(pg_url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await admin.dispose()


async def open_api(settings: Settings, clock: Clock | None = None) -> AsyncIterator[Api]:
    migrate(settings)
    runtime = build_runtime(settings, clock)
    app = create_app(settings, runtime)
    async with app.router.lifespan_context(app):
        _, publish = await runtime.services.apikeys.create("pub", frozenset({Scope.PUBLISH}))
        _, admin = await runtime.services.apikeys.create("adm", frozenset({Scope.ADMIN}))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tidings") as client:
            yield Api(client=client, runtime=runtime, publish_key=publish, admin_key=admin)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/api.db")
    async for a in open_api(settings):
        yield a
