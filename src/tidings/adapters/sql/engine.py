"""Engines for SQLite (WAL) and PostgreSQL (asyncpg) from one URL."""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

BUSY_TIMEOUT_MS = 5000
_READ_ONLY = "tidings_read_only"


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL; None for other backends and in-memory databases."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def create_engine(url: str) -> AsyncEngine:
    u = make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        path = sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000}, pool_size=2, max_overflow=0
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
            # The driver's implicit BEGIN (deferred, only before DML) is switched off so the
            # `begin` hook below decides how each transaction starts.
            dbapi_conn.isolation_level = None

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(conn: Connection) -> None:
            # A writing transaction takes the write lock at BEGIN: a deferred one that reads and
            # then writes would fail with "database is locked" instead of waiting its turn.
            # Readers (see `reader`) stay deferred and, with WAL, never wait for a writer.
            if conn.get_execution_options().get(_READ_ONLY):
                conn.exec_driver_sql("BEGIN")
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if backend == "postgresql":
        return create_async_engine(
            url, pool_size=10, max_overflow=20, pool_pre_ping=True, pool_recycle=1800
        )
    raise ValueError(
        f"unsupported database URL {url!r}: use sqlite+aiosqlite or postgresql+asyncpg"
    )


_WRITE_LOCKS: weakref.WeakKeyDictionary[Any, asyncio.Lock] = weakref.WeakKeyDictionary()


@contextlib.asynccontextmanager
async def writer(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A writing transaction. SQLite has one writer at a time: within a process writers queue
    on an asyncio lock instead of polling SQLite's busy handler, whose sleeps (up to 100 ms)
    would dominate latency under concurrency. Other processes still wait via busy_timeout."""
    if engine.dialect.name != "sqlite":
        async with engine.begin() as conn:
            yield conn
        return
    lock = _WRITE_LOCKS.get(engine.sync_engine)
    if lock is None:
        lock = _WRITE_LOCKS[engine.sync_engine] = asyncio.Lock()
    async with lock, engine.begin() as conn:
        yield conn


def reader(engine: AsyncEngine) -> AsyncEngine:
    """The same engine and pool, for transactions that only read. On SQLite they begin
    deferred instead of taking the write lock; elsewhere the option changes nothing."""
    return engine.execution_options(**{_READ_ONLY: True})


def is_postgres(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "postgresql"


async def check(engine: AsyncEngine) -> None:
    """Raise if the database does not answer."""
    async with reader(engine).connect() as conn:
        await conn.execute(text("SELECT 1"))
