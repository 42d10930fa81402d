"""Engines for SQLite (WAL) and PostgreSQL (asyncpg) from one URL."""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import orjson
from sqlalchemy import ColumnElement, Select, any_, event, literal, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from tidings.adapters.lanes import LaneSlots
from tidings.adapters.sql import sqlite_driver
from tidings.types import CURRENT_LANE

BUSY_TIMEOUT_MS = 5000
# PostgreSQL: a pooled connection idle this long (seconds) is pinged before it is used
PING_AFTER_IDLE = 5.0
_CHECKED_IN = "tidings_checked_in"
SQLITE_CACHE_KIB = 64 * 1024  # page cache per connection (SQLite allocates it as needed)
SQLITE_CHECKPOINT_PAGES = 16_384  # WAL pages between automatic checkpoints
_READ_ONLY = "tidings_read_only"


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL; None for other backends and in-memory databases."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def json_text(value: Any) -> str:
    """JSON columns are written with orjson: several times faster than the json module on
    the bulk paths (the trail, step results, inbox data)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def create_engine(url: str) -> AsyncEngine:
    u = make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        path = sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            url,
            connect_args={"timeout": BUSY_TIMEOUT_MS / 1000},
            pool_size=8,
            max_overflow=0,
            module=sqlite_driver.dbapi(),
            json_serializer=json_text,
            json_deserializer=orjson.loads,
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            # A larger page cache keeps the pages a bulk send reads and appends to (its
            # subscribers, the indexes of the notification tables, keyed in recipient order
            # within one event but by subscriber across events) in memory instead of
            # re-reading them from the file for every batch.
            cur.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
            # A checkpoint copies the WAL's pages into the file and syncs it. A runtime runs
            # them off the commit path (`WalCheckpointer`); this bound is for processes
            # without one. Every 1,000 pages (SQLite's default) a bulk send would checkpoint
            # every few commits, copying the same index pages again and again; at 16,384
            # pages (64 MB) a page rewritten by many commits is copied once.
            cur.execute(f"PRAGMA wal_autocheckpoint={SQLITE_CHECKPOINT_PAGES}")
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
            # The BEGIN runs in the first statement's call on the connection's thread.
            read_only = conn.get_execution_options().get(_READ_ONLY)
            begin = sqlite_driver.READ_BEGIN if read_only else sqlite_driver.WRITE_BEGIN
            dbapi_conn = cast(sqlite_driver.OneHopConnection, conn.connection.dbapi_connection)
            dbapi_conn.begin_with_next_statement(begin)

        return engine
    if backend == "postgresql":
        engine = create_async_engine(
            url,
            # asyncpg prepares every statement, and after five executions PostgreSQL may
            # keep one generic plan for it. Planned while a table was nearly empty (the
            # inbox, the runs, at the start of a fanout), that plan scans the table; it
            # stays while the table grows to 100k rows before the next ANALYZE, and every
            # batch's lookups then scan it whole. Custom plans see the table's current
            # size each time, for a fraction of a millisecond of planning.
            connect_args={"server_settings": {"plan_cache_mode": "force_custom_plan"}},
            pool_size=10,
            max_overflow=20,
            pool_recycle=1800,
            json_serializer=json_text,
            json_deserializer=orjson.loads,
        )

        # A pooled connection that sat idle is pinged before it is handed out; a busy one
        # is not. SQLAlchemy's `pool_pre_ping` pings at every checkout: a round trip
        # before each transaction, a tenth of a bulk send's time. A connection that broke
        # while in use (the server restarted under load) fails its statement once, and
        # SQLAlchemy then replaces every connection of the pool made before.
        @event.listens_for(engine.sync_engine, "checkin")
        def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
            record.info[_CHECKED_IN] = time.monotonic()

        @event.listens_for(engine.sync_engine, "checkout")
        def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
            since = record.info.get(_CHECKED_IN)
            if since is None or time.monotonic() - since < PING_AFTER_IDLE:
                return
            try:
                dbapi_conn.ping()
            except Exception as exc:
                # the pool drops this connection and checks out another (a new one)
                raise DisconnectionError(f"pooled connection broken: {exc}") from exc

        return engine
    raise ValueError(
        f"unsupported database URL {url!r}: use sqlite+aiosqlite or postgresql+asyncpg"
    )


class LaneLock(LaneSlots):
    """A mutex whose waiters are served transactional first, then bulk, each in arrival
    order: a transactional write waits for the write in progress and at most one bulk write,
    never for a queue of them. So that a steady transactional load cannot starve bulk work,
    a waiting bulk writer gets the lock after `burst` transactional hand-overs in a row."""

    def __init__(self, burst: int = 4) -> None:
        super().__init__(1, burst=burst)


_WRITE_LOCKS: weakref.WeakKeyDictionary[Any, LaneLock] = weakref.WeakKeyDictionary()


def lane_lock(engine: AsyncEngine) -> LaneLock:
    """The process's writer lock of a SQLite `engine` (see `writer`)."""
    lock = _WRITE_LOCKS.get(engine.sync_engine)
    if lock is None:
        lock = _WRITE_LOCKS[engine.sync_engine] = LaneLock()
    return lock


@contextlib.asynccontextmanager
async def write_lock(engine: AsyncEngine) -> AsyncIterator[None]:
    """This process's turn to write to a SQLite `engine` (see `writer`); nothing elsewhere."""
    if engine.dialect.name != "sqlite":
        yield
        return
    lock = lane_lock(engine)
    lane = CURRENT_LANE.get()
    await lock.acquire(lane)
    try:
        yield
    finally:
        lock.release(lane)


@contextlib.asynccontextmanager
async def writer(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A writing transaction. SQLite has one writer at a time: within a process writers queue
    on a lock instead of polling SQLite's busy handler, whose sleeps (up to 100 ms) would
    dominate latency under concurrency, and transactional work queues ahead of bulk work
    (the lane of the running job, `CURRENT_LANE`). Other processes still wait via
    busy_timeout."""
    async with write_lock(engine), engine.begin() as conn:
        yield conn


def reader(engine: AsyncEngine) -> AsyncEngine:
    """The same engine and pool, for transactions that only read. On SQLite they begin
    deferred instead of taking the write lock; elsewhere the option changes nothing."""
    return engine.execution_options(**{_READ_ONLY: True})


async def none_due(
    engine: AsyncEngine, due: Select[Any], params: Mapping[str, Any] | None = None
) -> bool:
    """On SQLite, whether `due` (the rows a write would take: a claim's candidates, what a
    prune would delete) finds none, read without the write lock, so that the write need not
    take it: most claims during a bulk send found nothing, and a prune scanned its
    candidates for over 100 ms, each holding the lock while transactional writers waited.
    On PostgreSQL, False: its writers do not queue on one lock, and the read would be a
    round trip more."""
    if is_postgres(engine):
        return False
    async with reader(engine).connect() as conn:
        return (await conn.execute(due.limit(1), params)).first() is None


def is_postgres(engine: AsyncEngine | AsyncConnection) -> bool:
    return engine.dialect.name == "postgresql"


def lost_connection(exc: BaseException) -> bool:
    """Whether `exc` is the database connection failing, not the statement: the server
    went away (SQLAlchemy invalidated the connection) or the driver lost its link. The
    request may succeed again once the pool has connected anew."""
    return isinstance(exc, DBAPIError) and (
        exc.connection_invalidated or isinstance(exc, InterfaceError)
    )


def among(column: ColumnElement[Any], values: Sequence[Any], postgres: bool) -> ColumnElement[bool]:
    """`column` is one of `values`. On PostgreSQL `column = ANY($1)` with the values as one
    array parameter: one statement text whatever their number, which asyncpg prepares once.
    An IN list renders a parameter per value on every call (a tenth of the loop's time in
    a bulk send's reads) and is a new statement, prepared again, for each length. Elsewhere
    an IN list."""
    if postgres:
        return column == any_(literal(list(values), ARRAY(column.type)))
    return column.in_(values)


async def check(engine: AsyncEngine) -> None:
    """Raise if the database does not answer."""
    async with reader(engine).connect() as conn:
        await conn.execute(text("SELECT 1"))
