"""One contract suite per port, run against every adapter.

Stores (events, jobs, API keys) run against memory, SQLite and PostgreSQL; the broker and
presence against memory, with room for a Redis adapter. Every fixture hands out the
`ManualClock` its adapters were built with, so tests drive leases, schedules and TTLs."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tidings.adapters import sql
from tidings.adapters.clock import ManualClock
from tidings.adapters.memory import (
    MemoryApiKeyStore,
    MemoryBroker,
    MemoryEventStore,
    MemoryJobQueue,
    MemoryPresenceStore,
    MemoryRunStore,
    MemoryWorkflowStore,
)
from tidings.adapters.memory.campaigns import MemoryCampaignStore
from tidings.adapters.redis import RedisBroker, RedisPresenceStore
from tidings.adapters.sql.campaigns import SqlCampaignStore
from tidings.adapters.sql.notify import SqlRunStore, SqlWorkflowStore
from tidings.adapters.sql.tables import metadata

STORE_BACKENDS = ["memory", "sqlite", "postgres"]
BROKER_BACKENDS = ["memory", "redis"]
PRESENCE_BACKENDS = ["memory", "redis"]


@dataclass
class Stores:
    """The store adapters of one backend, sharing one clock (and, for SQL, one database)."""

    backend: str
    clock: ManualClock
    events: Any
    jobs: Any
    apikeys: Any
    url: str | None = None  # the database, for tests that open a second engine on it
    engines: list[AsyncEngine] = field(default_factory=list)
    runs: Any = None  # the orchestrator's RunStore, enqueueing into `jobs`
    workflows: Any = None
    campaigns: Any = None  # the CampaignStore, enqueueing into `jobs`

    def engine(self) -> AsyncEngine:
        """Another engine (own pool, own connections) on the same database."""
        assert self.url is not None
        engine = sql.create_engine(self.url)
        self.engines.append(engine)
        return engine


def _run(coro: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine on a loop of its own (the caller may be inside a running loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coro).result()


class PgDatabases:
    """A PostgreSQL database of this test session's own, created and migrated on first use and
    dropped at the end of the session."""

    def __init__(self) -> None:
        self._admin_url: str | None = None
        self._name = f"tidings_contract_{os.getpid()}"
        self._url: str | None = None

    def _admin(self, statement: str) -> None:
        assert self._admin_url is not None

        async def run() -> None:
            engine = create_async_engine(self._admin_url or "", isolation_level="AUTOCOMMIT")
            try:
                async with engine.connect() as conn:
                    await conn.execute(text(statement))
            finally:
                await engine.dispose()

        _run(run())

    def migrated(self, admin_url: str) -> str:
        if self._url is None:
            self._admin_url = admin_url
            self._admin(f"DROP DATABASE IF EXISTS {self._name} WITH (FORCE)")
            self._admin(f"CREATE DATABASE {self._name}")
            url = make_url(admin_url).set(database=self._name)
            self._url = url.render_as_string(hide_password=False)
            sql.upgrade(self._url)
        return self._url

    def drop(self) -> None:
        if self._url is not None:
            self._admin(f"DROP DATABASE IF EXISTS {self._name} WITH (FORCE)")


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[PgDatabases]:
    databases = PgDatabases()
    yield databases
    databases.drop()


async def sql_url(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> str:
    """A migrated, empty database of the given SQL backend."""
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/contract.db"
        await asyncio.to_thread(sql.upgrade, url)
        return url
    pg_url: str = request.getfixturevalue("pg_url")  # skips, or under CI fails, without PG
    databases: PgDatabases = request.getfixturevalue("pg_databases")
    url = await asyncio.to_thread(databases.migrated, pg_url)
    engine = sql.create_engine(url)
    try:
        async with engine.begin() as conn:
            tables = ", ".join(t.name for t in metadata.sorted_tables)
            await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    finally:
        await engine.dispose()
    return url


@pytest.fixture(params=STORE_BACKENDS)
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    clock = ManualClock()
    backend: str = request.param
    if backend == "memory":
        jobs = MemoryJobQueue(clock)
        found = Stores(
            backend, clock, MemoryEventStore(clock, jobs), jobs, MemoryApiKeyStore(clock)
        )
        found.runs = MemoryRunStore(clock, jobs)
        found.workflows = MemoryWorkflowStore()
        found.campaigns = MemoryCampaignStore(jobs)
        yield found
        return
    url = await sql_url(request, backend, tmp_path)
    found = Stores(backend, clock, None, None, None, url=url)
    engine = found.engine()
    found.events = sql.SqlEventStore(engine, clock)
    found.jobs = sql.SqlJobQueue(engine, clock)
    found.apikeys = sql.SqlApiKeyStore(engine, clock)
    found.runs = SqlRunStore(engine, clock)
    found.workflows = SqlWorkflowStore(engine)
    found.campaigns = SqlCampaignStore(engine)
    try:
        yield found
    finally:
        for e in found.engines:
            await e.dispose()


@dataclass
class BrokerKit:
    clock: ManualClock
    broker: Any
    kind: str = "memory"


@pytest.fixture(params=BROKER_BACKENDS)
async def broker_kit(request: pytest.FixtureRequest) -> AsyncIterator[BrokerKit]:
    clock = ManualClock()
    broker: Any
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        broker = RedisBroker(url, clock, prefix=f"contract-{uuid.uuid4().hex[:10]}")
    else:
        broker = MemoryBroker(clock)
    try:
        yield BrokerKit(clock, broker, request.param)
    finally:
        await broker.close()


@dataclass
class PresenceKit:
    clock: ManualClock
    store: Any


@pytest.fixture(params=PRESENCE_BACKENDS)
async def presence(request: pytest.FixtureRequest) -> AsyncIterator[PresenceKit]:
    clock = ManualClock()
    store: Any
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        store = RedisPresenceStore(url, clock, prefix=f"contract-{uuid.uuid4().hex[:10]}")
    else:
        store = MemoryPresenceStore(clock)
    try:
        yield PresenceKit(clock, store)
    finally:
        await store.close()
