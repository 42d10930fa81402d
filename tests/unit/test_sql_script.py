"""A SQLite write transaction in one call on the connection's thread: rows written as
SQLAlchemy would write them (JSON columns), ids returned by RETURNING, all or nothing, and
in turn with the process's other writers."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import (
    JSON,
    Column,
    Double,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    select,
    update,
)
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.exc import SAWarning
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.unit.test_sqlite_driver import sqlite_engine
from tidings.adapters.sql.engine import lane_lock, write_lock, writer
from tidings.adapters.sql.script import (
    MAX_ROWS,
    Statement,
    row_reader,
    run_read,
    run_script,
    run_transaction,
    script,
)
from tidings.adapters.sql.tables import Epoch
from tidings.types import CURRENT_LANE, Priority

meta = MetaData()
docs = Table(
    "docs",
    meta,
    Column("id", String(20), primary_key=True),
    Column("body", JSON, nullable=False),
    Column("at", Double, nullable=False),
)
log = Table(
    "log",
    meta,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("doc", String(20), nullable=False),
)

stamps = Table(
    "stamps",
    meta,
    Column("id", String(20), primary_key=True),
    Column("body", JSON),
    Column("at", Epoch, nullable=False),
    Column("until", Epoch),
)

PUT = Statement(insert(docs).on_conflict_do_nothing(index_elements=[docs.c.id]))
PUT_ID = Statement(
    insert(docs).on_conflict_do_nothing(index_elements=[docs.c.id]).returning(docs.c.id)
)
LOG = Statement(insert(log))


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with sqlite_engine(tmp_path, meta) as e:
        yield e


def doc(i: int, **body: object) -> dict[str, object]:
    return {"id": f"d{i}", "body": body, "at": 1.5 + i}


async def rows(engine: AsyncEngine) -> list[tuple[object, ...]]:
    async with engine.connect() as conn:
        return [tuple(r) for r in await conn.execute(select(docs).order_by(docs.c.id))]


async def test_rows_are_written_as_sqlalchemy_writes_them(engine: AsyncEngine) -> None:
    await run_script(
        engine,
        [
            *script(
                engine.dialect,
                (PUT, [doc(1, a=[1, 2]), doc(2, b={"c": None})]),
                (LOG, [{"doc": "d1"}, {"doc": "d2"}]),
            )
        ],
    )
    assert await rows(engine) == [("d1", {"a": [1, 2]}, 2.5), ("d2", {"b": {"c": None}}, 3.5)]
    async with engine.connect() as conn:
        assert list(await conn.execute(select(log.c.seq, log.c.doc))) == [(1, "d1"), (2, "d2")]


async def test_returning_gives_the_ids_of_the_rows_stored(engine: AsyncEngine) -> None:
    await run_script(engine, script(engine.dialect, (PUT, [doc(1)])))
    out = await run_script(engine, script(engine.dialect, (PUT_ID, [doc(1), doc(2)]), (LOG, [])))
    assert out == [[("d2",)], []]  # d1 was there already


async def test_a_failing_statement_leaves_nothing_of_the_transaction(engine: AsyncEngine) -> None:
    with pytest.raises(Exception, match="NOT NULL"):
        await run_script(
            engine,
            script(engine.dialect, (PUT, [doc(1)]), (LOG, [{"doc": None}])),
        )
    assert await rows(engine) == []
    await run_script(engine, script(engine.dialect, (PUT, [doc(3)])))  # still usable
    assert [r[0] for r in await rows(engine)] == ["d3"]


async def test_it_waits_its_turn_behind_the_processs_writer(engine: AsyncEngine) -> None:
    order: list[str] = []
    inside = asyncio.Event()

    async def other() -> None:
        async with writer(engine) as conn:
            inside.set()
            await asyncio.sleep(0.05)
            await conn.execute(insert(log).values(doc="first"))
            order.append("writer")

    async def scripted() -> None:
        await inside.wait()
        CURRENT_LANE.set(Priority.BULK)
        await run_script(engine, script(engine.dialect, (LOG, [{"doc": "second"}])))
        order.append("script")

    await asyncio.gather(other(), scripted())
    assert order == ["writer", "script"]
    async with engine.connect() as conn:
        assert [r[0] for r in await conn.execute(select(log.c.doc).order_by(log.c.seq))] == [
            "first",
            "second",
        ]


async def test_many_rows_go_in_multi_row_statements_first_row_wins(engine: AsyncEngine) -> None:
    compiled = PUT.bind(engine.dialect, ["id", "body", "at"])
    assert compiled.rows_per_statement() == MAX_ROWS  # an INSERT: many rows a statement
    touch = Statement(
        update(docs).where(docs.c.id == bindparam("b_id")).values(at=bindparam("b_at"))
    )
    assert touch.bind(engine.dialect, ["b_id", "b_at"]).rows_per_statement() == 1  # executemany
    many = [doc(i, n=i) for i in range(2 * MAX_ROWS + 7)]
    again = {**doc(3, n="later"), "at": 0.0}  # the same id later in the same statement
    await run_script(engine, script(engine.dialect, (PUT, [*many[:10], again, *many[10:]])))
    stored = await rows(engine)
    assert len(stored) == len(many)
    assert dict((r[0], r[1]) for r in stored)["d3"] == {"n": 3}  # the first row of it won
    assert sorted(r[2] for r in stored) == sorted(1.5 + i for i in range(len(many)))


async def test_returning_over_many_multi_row_statements_gives_every_stored_id(
    engine: AsyncEngine,
) -> None:
    await run_script(engine, script(engine.dialect, (PUT, [doc(0), doc(MAX_ROWS)])))
    many = [doc(i) for i in range(2 * MAX_ROWS + 3)]
    [stored, _] = await run_script(engine, script(engine.dialect, (PUT_ID, many), (LOG, [])))
    assert sorted(r[0] for r in stored) == sorted(
        f"d{i}" for i in range(1, 2 * MAX_ROWS + 3) if i != MAX_ROWS
    )  # the two stored before are not returned
    # and an UPDATE runs through executemany, row by row
    touch = Statement(
        update(docs).where(docs.c.id == bindparam("b_id")).values(at=bindparam("b_at"))
    )
    await run_script(
        engine,
        script(engine.dialect, (touch, [{"b_id": "d1", "b_at": 9.0}, {"b_id": "d2", "b_at": 8.0}])),
    )
    found = {r[0]: r[2] for r in await rows(engine)}
    assert (found["d1"], found["d2"], found["d3"]) == (9.0, 8.0, 4.5)


async def test_waiting_for_the_write_lock_holds_no_pooled_connection(engine: AsyncEngine) -> None:
    """A script waits for the process's write lock before it takes a connection, as
    `writer` does: with every connection held by scripts waiting for the lock, a writer
    holding the lock and waiting for a connection would wait for the pool's timeout."""
    held = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with write_lock(engine):
            held.set()
            await release.wait()

    async def writes() -> None:
        async with writer(engine) as conn:
            await conn.execute(insert(log).values(doc="w"))

    first = asyncio.create_task(holder())
    await held.wait()
    waiting = [asyncio.create_task(writes())]  # first in line for the lock
    await asyncio.sleep(0.01)
    size = engine.pool.size()  # type: ignore[attr-defined]
    waiting += [
        asyncio.create_task(run_script(engine, script(engine.dialect, (LOG, [{"doc": f"s{i}"}]))))
        for i in range(size)
    ]
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.wait_for(asyncio.gather(first, *waiting), 5)
    async with engine.connect() as conn:
        count = len((await conn.execute(select(log))).all())
    assert count == size + 1


async def test_rows_read_in_one_call_are_decoded_as_sqlalchemy_decodes_them(
    engine: AsyncEngine,
) -> None:
    async with writer(engine) as conn:
        await conn.execute(
            stamps.insert(),
            [
                {"id": "a", "body": {"x": [1, None]}, "at": 10.0, "until": None},
                {"id": "b", "body": None, "at": 2.5, "until": 7.0},
            ],
        )
    async with engine.connect() as conn:
        expected = [dict(r._mapping) for r in await conn.execute(select(stamps).order_by("id"))]
    read = row_reader(stamps, engine.dialect)
    found = await run_read(
        engine,
        lambda c: [read(r) for r in c.execute(f"SELECT {read.columns} FROM stamps ORDER BY id")],
    )
    assert found == expected
    # integral REALs come back as floats, as the `Epoch` type reads them
    assert [(type(f["at"]), f["body"]) for f in found] == [(float, {"x": [1, None]}), (float, None)]


async def test_rows_by_id_over_several_queries_leave_unknown_ids_out(engine: AsyncEngine) -> None:
    stored = [{"id": f"s{i}", "body": None, "at": float(i), "until": None} for i in range(700)]
    async with writer(engine) as conn:
        await conn.execute(stamps.insert(), stored)
    read = row_reader(stamps, engine.dialect)
    asked = [f"s{i}" for i in range(0, 1400, 2)]  # 700 ids, half of them unknown
    found = await run_read(engine, lambda c: [m["id"] for m in read.by_id(c, asked)])
    assert sorted(found) == sorted(f"s{i}" for i in range(0, 700, 2))
    assert len(asked) > MAX_ROWS  # more than one query


async def test_rows_by_id_come_back_as_sqlalchemy_reads_them_doubles_exact(
    engine: AsyncEngine,
) -> None:
    """`by_id` reads a query's rows as one JSON row: doubles keep every digit (JSON text
    from SQLite keeps 15), and text, JSON columns, integers and NULLs come back as
    SQLAlchemy's own select gives them."""
    stored = [
        {
            "id": "a",
            "body": {"t": 'quote " \\ \u00e9 \U0001f600', "n": [1, 2.5]},
            "at": 1795997236.886771,
            "until": None,
        },
        {"id": "b", "body": None, "at": 1 / 3, "until": 123456789.12345678},
        {"id": "c", "body": [], "at": 5.0, "until": -1e-300},
        {"id": "d", "body": "text", "at": 2.0**60, "until": 7.0},
    ]
    async with writer(engine) as conn:
        await conn.execute(stamps.insert(), stored)
        expected = {r.id: dict(r._mapping) for r in await conn.execute(select(stamps))}
    read = row_reader(stamps, engine.dialect)
    found = await run_read(engine, lambda c: {m["id"]: m for m in read.by_id(c, "abcdx")})
    assert found == expected
    assert found["a"]["at"] == 1795997236.886771 and found["b"]["until"] == 123456789.12345678
    assert {type(m["at"]) for m in found.values()} == {float}


async def test_a_statement_keeps_the_values_it_holds_itself(engine: AsyncEngine) -> None:
    """Literal values of the statement (a claim's lanes and limit) need not be in the rows."""
    await run_script(engine, script(engine.dialect, (PUT, [doc(1), doc(2)])))
    touch = Statement(
        update(docs).values(at=9.0).where(docs.c.id == bindparam("who")).returning(docs.c.id)
    )
    (changed,) = await run_script(engine, script(engine.dialect, (touch, [{"who": "d2"}])))
    assert [tuple(r) for r in changed] == [("d2",)]
    assert [r[2] for r in await rows(engine)] == [2.5, 9.0]


async def test_cancelled_calls_give_back_their_connection_and_the_lock(
    engine: AsyncEngine, recwarn: pytest.WarningsRecorder
) -> None:
    """Transactions and reads cancelled while their call runs on the connection's thread,
    more of them than the pool holds: each connection goes back to the pool (after the
    call ends on its thread) and the writer lock is free, so later calls neither wait for
    the pool's timeout nor for the lock."""
    started = threading.Event()
    go_on = threading.Event()

    def slow_write(conn: sqlite3.Connection) -> None:
        started.set()
        go_on.wait(5)
        conn.execute("INSERT INTO log (doc) VALUES ('cancelled')")

    def slow_read(conn: sqlite3.Connection) -> int:
        started.set()
        go_on.wait(5)
        return int(conn.execute("SELECT count(*) FROM log").fetchone()[0])

    size = engine.pool.size()  # type: ignore[attr-defined]
    for n in range(size + 2):
        started.clear()
        go_on.clear()
        fn = run_transaction(engine, slow_write) if n % 2 else run_read(engine, slow_read)
        task = asyncio.ensure_future(fn)
        await asyncio.to_thread(started.wait, 5)
        task.cancel()
        go_on.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for _ in range(50):  # the shielded returns to the pool finish on their own
        if engine.pool.checkedout() == 0:  # type: ignore[attr-defined]
            break
        await asyncio.sleep(0.01)
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    # given back by the code, not found by the garbage collector (SQLAlchemy warns then)
    assert not [w for w in recwarn if issubclass(w.category, SAWarning)]
    lock = lane_lock(engine)
    await asyncio.wait_for(lock.acquire(Priority.BULK), 1)  # free: nobody kept it
    lock.release(Priority.BULK)
    await asyncio.wait_for(run_script(engine, script(engine.dialect, (LOG, [{"doc": "after"}]))), 2)
    docs_logged = await asyncio.wait_for(
        run_read(engine, lambda c: [r[0] for r in c.execute("SELECT doc FROM log")]), 2
    )
    # a cancelled transaction's call still ran to its end on the thread (and committed):
    # cancelling the awaiting task does not stop SQLite
    assert docs_logged.count("after") == 1
    assert set(docs_logged) <= {"cancelled", "after"}
