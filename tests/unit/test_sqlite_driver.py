"""The one-hop aiosqlite cursor behind every SQLite engine: results, counts, generated ids,
batches, errors and streaming come back as SQLAlchemy expects them."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from sqlite3 import OperationalError
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.adapters.sql import create_engine, sqlite_driver
from tidings.adapters.sql.engine import reader
from tidings.adapters.sql.script import run_read, run_transaction
from tidings.adapters.sql.sqlite_driver import OneHopCursor
from tidings.types import INLINE_SQLITE

meta = MetaData()
things = Table(
    "things",
    meta,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(20), nullable=False, unique=True),
)


@contextlib.asynccontextmanager
async def sqlite_engine(tmp_path: Path, schema: MetaData) -> AsyncIterator[AsyncEngine]:
    """An engine on a new SQLite file holding `schema`'s tables."""
    e = create_engine(f"sqlite+aiosqlite:///{tmp_path}/d.db")
    try:
        async with e.begin() as conn:
            await conn.run_sync(schema.create_all)
        yield e
    finally:
        await e.dispose()


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with sqlite_engine(tmp_path, meta) as e:
        yield e


async def test_the_engine_uses_the_one_hop_cursor(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        assert isinstance(raw.dbapi_connection.cursor(), OneHopCursor)


async def test_rows_counts_and_generated_ids(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        first = await conn.execute(insert(things).values(name="a"))
        second = await conn.execute(insert(things).values(name="b"))
        assert (first.inserted_primary_key[0], second.inserted_primary_key[0]) == (1, 2)
        many = await conn.execute(insert(things), [{"name": f"n{i}"} for i in range(5)])
        assert many.rowcount == 5
        changed = await conn.execute(
            update(things).where(things.c.name.like("n%")).values(name=things.c.name + "x")
        )
        assert changed.rowcount == 5
    async with engine.connect() as conn:
        rows = (await conn.execute(select(things.c.id, things.c.name).order_by(things.c.id))).all()
        assert [tuple(r) for r in rows][:3] == [(1, "a"), (2, "b"), (3, "n0x")]
        assert len(rows) == 7
        assert (await conn.execute(text("select count(*) from things"))).scalar_one() == 7
        empty = await conn.execute(select(things).where(things.c.name == "none"))
        assert empty.first() is None


async def test_an_error_rolls_back_and_is_sqlalchemys_own(engine: AsyncEngine) -> None:
    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await conn.execute(insert(things).values(name="x"))
            await conn.execute(insert(things).values(name="x"))  # unique
    async with engine.connect() as conn:
        assert (await conn.execute(text("select count(*) from things"))).scalar_one() == 0


async def test_streaming_keeps_sqlalchemys_server_side_cursor(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(things), [{"name": f"s{i:03d}"} for i in range(250)])
    async with engine.connect() as conn:
        result = await conn.stream(select(things.c.name).order_by(things.c.name))
        names = [row[0] async for row in result]
    assert names == [f"s{i:03d}" for i in range(250)]


@contextlib.contextmanager
def counting_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The names of the functions run on connection threads, in order."""
    calls: list[str] = []
    original = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(getattr(fn, "__name__", repr(fn)))
        return await original(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    yield calls


async def test_begin_goes_with_the_first_statement(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read of one statement is one call for BEGIN and the statement, one for ROLLBACK; a
    transaction that runs no statement makes no call; `run_transaction` none either."""
    async with engine.connect() as conn:  # a connection in the pool, opened already
        await conn.execute(text("select 1"))
    with counting_calls(monkeypatch) as calls:
        async with reader(engine).connect() as conn:
            assert (await conn.execute(text("select count(*) from things"))).scalar_one() == 0
        assert calls == ["_run", "rollback"]
        calls.clear()
        async with engine.begin():
            pass
        assert calls == []
        async with engine.begin() as conn:
            await conn.execute(insert(things).values(name="w"))
        assert calls == ["_run", "commit"]
        calls.clear()
        await run_transaction(engine, lambda c: c.execute("insert into things (name) values ('s')"))
        # on the loop's thread, and it ended its transaction: no call at all, no ROLLBACK
        assert calls == []


async def test_a_cancelled_statement_is_rolled_back_once_it_ends(engine: AsyncEngine) -> None:
    """A task cancelled while its statement runs on the connection's thread: the ROLLBACK
    queues behind the statement, so the pooled connection is not left inside a transaction
    (holding SQLite's write lock) and the next transaction on it begins cleanly."""
    slow = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000) "
        "SELECT 'slow' || count(*) FROM c"
    )

    async def write() -> None:
        async with engine.begin() as conn:
            await conn.execute(text(f"INSERT INTO things (name) {slow}"))

    for _ in range(3):  # whichever pooled connection comes next
        task = asyncio.create_task(write())
        await asyncio.sleep(0.02)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for n in range(10):
        async with engine.begin() as conn:
            await conn.execute(insert(things).values(name=f"after{n}"))
    async with engine.connect() as conn:
        names = (await conn.execute(select(things.c.name).order_by(things.c.name))).scalars()
        assert list(names) == [f"after{n}" for n in range(10)]


async def test_a_deferred_begin_still_makes_one_transaction(engine: AsyncEngine) -> None:
    """The statements after the first run inside the transaction it began: a reader sees
    one snapshot while a writer commits in between, and a writer's BEGIN IMMEDIATE holds
    SQLite's write lock from its first statement."""
    async with engine.begin() as conn:
        await conn.execute(insert(things).values(name="a"))
    async with reader(engine).connect() as read:
        first = (await read.execute(text("select count(*) from things"))).scalar_one()
        async with engine.begin() as write:
            await write.execute(insert(things).values(name="b"))
        again = (await read.execute(text("select count(*) from things"))).scalar_one()
        assert (first, again) == (1, 1)  # the snapshot of its BEGIN, not autocommit reads
    async with engine.connect() as conn:
        assert (await conn.execute(text("select count(*) from things"))).scalar_one() == 2

    async with engine.begin() as write:
        await write.execute(insert(things).values(name="c"))
        raw = await write.get_raw_connection()
        assert raw.dbapi_connection._connection._connection.in_transaction
        with pytest.raises(OperationalError, match="locked"):
            other = sqlite3.connect(str(engine.url.database), timeout=0)
            try:
                other.execute("BEGIN IMMEDIATE")
            finally:
                other.close()


async def test_a_stream_begins_before_its_cursor(engine: AsyncEngine) -> None:
    """SQLAlchemy's server-side cursor does not go through the one-hop call: the BEGIN
    waiting for the first statement runs before it."""
    async with engine.begin() as conn:
        await conn.execute(insert(things), [{"name": f"t{i}"} for i in range(3)])
    async with reader(engine).connect() as conn:
        result = await conn.stream(select(things.c.name).order_by(things.c.name))
        assert [row[0] async for row in result] == ["t0", "t1", "t2"]
        raw = await conn.get_raw_connection()
        assert raw.dbapi_connection._connection._connection.in_transaction


@contextlib.contextmanager
def calls_by_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, bool]]]:
    """Each statement the driver runs: (the thread it ran on, whether a transaction was open
    on the connection when it returned)."""
    seen: list[tuple[int, bool]] = []
    run = sqlite_driver._run

    def recorded(conn: sqlite3.Connection, *args: Any) -> Any:
        try:
            return run(conn, *args)
        finally:
            seen.append((threading.get_ident(), conn.in_transaction))

    monkeypatch.setattr(sqlite_driver, "_run", recorded)
    yield seen


async def test_inline_reads_run_on_the_loops_thread_and_leave_no_transaction(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `INLINE_SQLITE`, a reader's statements run on the calling thread, in one read
    transaction (two statements see one snapshot) that ends there; writers still go to the
    connection's thread; without it, reads do too."""
    async with engine.begin() as conn:
        await conn.execute(insert(things), [{"name": "a"}, {"name": "b"}])
    loop_thread = threading.get_ident()
    token = INLINE_SQLITE.set(True)
    try:
        with calls_by_thread(monkeypatch) as seen:
            async with reader(engine).connect() as conn:
                first = (await conn.execute(select(things.c.name).order_by("id"))).scalars()
                raw = (await conn.get_raw_connection()).dbapi_connection
                count = (await conn.execute(select(func.count()).select_from(things))).scalar()
            assert list(first) == ["a", "b"] and count == 2
            assert [thread for thread, _ in seen] == [loop_thread, loop_thread]
            assert [open_ for _, open_ in seen] == [True, True]  # one read transaction
            assert raw._connection._conn.in_transaction is False  # ended on release
            async with engine.begin() as conn:  # a writer: on the connection's thread
                await conn.execute(insert(things).values(name="c"))
            assert seen[-1][0] != loop_thread
    finally:
        INLINE_SQLITE.reset(token)
    with calls_by_thread(monkeypatch) as seen:
        async with reader(engine).connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(things))).scalar() == 3
        assert seen and seen[0][0] != loop_thread


async def test_run_read_runs_inline_for_a_transactional_job(engine: AsyncEngine) -> None:
    threads: list[int] = []

    def count(conn: sqlite3.Connection) -> int:
        threads.append(threading.get_ident())
        return int(conn.execute("SELECT count(*) FROM things").fetchone()[0])

    assert await run_read(engine, count) == 0
    token = INLINE_SQLITE.set(True)
    try:
        assert await run_read(engine, count) == 0
    finally:
        INLINE_SQLITE.reset(token)
    assert threads[0] != threading.get_ident() and threads[1] == threading.get_ident()


async def test_a_write_transaction_runs_inline_unless_another_process_writes(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """`run_transaction` runs on the calling thread (any task, `INLINE_SQLITE` or not);
    while another connection (another process) holds SQLite's write lock, it waits on the
    connection's thread instead of blocking the loop, and commits once the lock is free."""
    threads: list[int] = []

    def put(name: str) -> Any:
        def fn(conn: sqlite3.Connection) -> int:
            threads.append(threading.get_ident())
            return int(conn.execute("INSERT INTO things (name) VALUES (?)", (name,)).lastrowid)

        return fn

    assert INLINE_SQLITE.get() is False
    await run_transaction(engine, put("a"))
    assert threads == [threading.get_ident()]
    other = sqlite3.connect(tmp_path / "d.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process's write transaction
    pending = asyncio.ensure_future(run_transaction(engine, put("b")))
    await asyncio.sleep(0.2)
    assert not pending.done()  # waiting, and the loop still runs
    other.execute("COMMIT")
    await asyncio.wait_for(pending, 5)
    other.close()
    assert threads[1] != threading.get_ident()  # the second went to the connection's thread
    await run_transaction(engine, put("c"))  # the lock free again: inline once more
    assert threads[2] == threading.get_ident()
    async with engine.connect() as conn:
        names = (await conn.execute(select(things.c.name).order_by("id"))).scalars()
        assert list(names) == ["a", "b", "c"]
