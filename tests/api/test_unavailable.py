"""A request whose database connection breaks under it answers 503 (problem+json, with
Retry-After), not 500, and the next one is served on a new connection: against a real
PostgreSQL whose backend is terminated, as a server restart would."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.api.conftest import Api, admin_sql, make_settings, open_api
from tidings.adapters.sql import engine as sql_engine
from tidings.config import WorkerSettings

DATABASE = "tidings_test_unavailable"


@pytest.fixture
async def pg_api(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Api]:
    await admin_sql(pg_url, f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    await admin_sql(pg_url, f"CREATE DATABASE {DATABASE}")
    # no connection counts as idle: none is pinged before use, so a broken one is met
    monkeypatch.setattr(sql_engine, "PING_AFTER_IDLE", 3600.0)
    settings = make_settings(pg_url.rsplit("/", 1)[0] + "/" + DATABASE)
    # no background workers: the request under test is the first to meet a broken connection
    settings.worker = WorkerSettings(enabled=False)
    try:
        async for api in open_api(settings):
            yield api
    finally:
        await admin_sql(pg_url, f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")


async def test_a_lost_connection_is_a_503_and_the_next_request_is_served(
    pg_api: Api, pg_url: str
) -> None:
    r = await pg_api.client.get("/v1/subscribers", headers=pg_api.auth(pg_api.admin_key))
    assert r.status_code == 200, r.text
    admin = create_async_engine(pg_url)
    try:  # end every backend of the app's pool from outside it
        async with admin.connect() as conn:
            ended = await conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :db"),
                {"db": DATABASE},
            )
            assert list(ended.scalars())  # the app held at least one connection
    finally:
        await admin.dispose()

    statuses = []
    for _ in range(12):  # each broken pooled connection fails once, then the pool is new
        r = await pg_api.client.get("/v1/subscribers", headers=pg_api.auth(pg_api.admin_key))
        statuses.append(r.status_code)
        if r.status_code == 200:
            break
        assert r.status_code == 503, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.headers["retry-after"] == "1"
        assert r.json()["type"].endswith("unavailable")
    assert statuses[0] == 503
    assert statuses[-1] == 200
