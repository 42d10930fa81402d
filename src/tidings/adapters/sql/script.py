"""A SQLite write transaction in one call, on the event loop's thread.

Through SQLAlchemy a write transaction of several statements is several round trips between
the event loop and the connection's thread: BEGIN, each statement, COMMIT. Each waits for
the loop to come round while the transaction holds SQLite's only write lock, and each
statement's parameters are bound row by row on the loop. A bulk send's slice (steps,
messages, trail, runs and jobs of 50 runs) was seven such trips.

`run_script` runs BEGIN IMMEDIATE, the statements and COMMIT (or ROLLBACK) as one call,
under the process's writer lock (`writer`'s), with rows given as tuples. `Statement`
compiles a statement once for the engine's dialect and turns row mappings into tuples in
its parameter order, each value through its bind's processor.

The call runs on the event loop's own thread (`run_transaction`), not the connection's:
`sqlite3` gives the GIL back while SQLite steps and takes it again after each statement
and row, and on the connection's thread each of those waits for the busy loop to let go of
it, all the while holding SQLite's one write lock: a settling of 50 messages held the lock
4.5 ms at p50 and 24 ms at p99 that way, 1.7 and 3.3 ms on the loop's thread
(bench/results/writer_holds.md), and transactional writers waited behind it. Only while
another process holds SQLite's write lock does the call go to the connection's thread, to
wait there.
"""

from __future__ import annotations

import asyncio
import functools
import operator
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import orjson
from sqlalchemy import Float, Table
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql.dml import Insert as SqlInsert
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.util.concurrency import greenlet_spawn

from tidings.adapters.sql.engine import BUSY_TIMEOUT_MS, lane_lock
from tidings.adapters.sql.sqlite_driver import (
    WRITE_BEGIN,
    OneHopConnection,
    run_inline,
    run_on_thread,
)
from tidings.records import record
from tidings.types import CURRENT_LANE


class Statement:
    """A DML statement (with its ON CONFLICT and RETURNING clauses), compiled once per dialect
    and set of row keys; `Compiled.row` makes a row's parameters, each through its bind's
    processor (JSON columns serialized as SQLAlchemy would)."""

    def __init__(self, stmt: UpdateBase) -> None:
        self._stmt = stmt
        self._compiled: dict[tuple[int, tuple[str, ...]], Compiled] = {}

    def bind(self, dialect: Dialect, keys: Sequence[str]) -> Compiled:
        """The statement compiled for `dialect` and rows holding `keys`."""
        key = (id(dialect), tuple(keys))
        found = self._compiled.get(key)
        if found is None:
            found = self._compiled[key] = Compiled(self._stmt, dialect, list(keys))
        return found


class Compiled:
    def __init__(self, stmt: UpdateBase, dialect: Dialect, keys: list[str]) -> None:
        compiled = stmt.compile(dialect=dialect, column_keys=keys)
        self.sql = str(compiled)
        self.returning = bool(getattr(compiled, "effective_returning", None))
        names = list(compiled.positiontup or [])
        processors = [compiled.binds[n].type.bind_processor(dialect) for n in names]
        self._get = operator.itemgetter(*names) if len(names) > 1 else None
        self._names = names
        # the values the statement holds itself (literals: a claim's lanes and limit), which
        # rows do not give
        self._fixed = {
            n: compiled.binds[n].value
            for n in names
            if compiled.binds[n].value is not None and n not in keys
        }
        # (position, processor) of the values that need one (JSON): most need none
        self._process = [(i, p) for i, p in enumerate(processors) if p is not None]
        # An INSERT takes many rows per statement: one step of SQLite for them, where
        # `executemany` steps (and gives the GIL back and takes it again, each time waiting
        # for the event loop's thread) once per row, and returns no rows at all.
        self._values: tuple[str, str, str] | None = None
        at = self.sql.find(" VALUES (")
        if isinstance(stmt, SqlInsert) and at >= 0 and names:
            end = self.sql.index(")", at) + 1
            group = self.sql[at + len(" VALUES ") : end]
            if group == "(" + ", ".join("?" * len(names)) + ")":
                self._values = (self.sql[:at] + " VALUES ", group, self.sql[end:])
        self._multi: dict[int, str] = {}

    def rows_per_statement(self) -> int:
        """How many rows one statement takes (1: one per statement, `executemany`)."""
        if self._values is None:
            return 1
        return max(1, min(MAX_ROWS, MAX_VARIABLES // len(self._names)))

    def multi(self, n: int) -> str:
        """The statement for `n` rows at once (an INSERT whose VALUES takes many rows)."""
        found = self._multi.get(n)
        if found is None:
            assert self._values is not None
            head, group, tail = self._values
            found = self._multi[n] = head + ", ".join([group] * n) + tail
        return found

    def row(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        if self._fixed:
            values = {**self._fixed, **values}
        if self._get is None:
            found: tuple[Any, ...] = tuple(values[n] for n in self._names)
        else:
            found = self._get(values)
        if not self._process:
            return found
        out = list(found)
        for i, process in self._process:
            out[i] = process(out[i])
        return tuple(out)


class RowReader:
    """Rows of all of a table's columns (`columns`, in that order) read with plain `sqlite3`,
    as mappings decoded by each column type's result processor for the dialect (JSON,
    `Epoch` floats): what a SQLAlchemy result holds, without its per-row work on the loop."""

    def __init__(self, table: Table, dialect: Dialect) -> None:
        self.table = table.name
        self.names = tuple(c.name for c in table.columns)
        self.columns = ", ".join(self.names)
        self._selects: dict[int, str] = {}  # SELECT ... WHERE id IN (n marks), by n
        processors = [
            c.type.dialect_impl(dialect).result_processor(dialect, None) for c in table.columns
        ]
        self._process = [(i, p) for i, p in enumerate(processors) if p is not None]
        # By id, all rows of a query come back as one JSON array in one row (`by_id`); a
        # double goes as the text of its exact value: JSON would keep 15 digits of it.
        doubles = [_is_double(c.type) for c in table.columns]
        self._doubles = [i for i, d in enumerate(doubles) if d]
        self._packed = ", ".join(
            f"CASE WHEN {n} IS NULL THEN NULL ELSE printf('%!.20e', {n}) END" if d else n
            for n, d in zip(self.names, doubles, strict=True)
        )

    def __call__(self, row: Sequence[Any]) -> dict[str, Any]:
        values = list(row)
        for i, process in self._process:
            values[i] = process(values[i])
        return dict(zip(self.names, values, strict=True))

    def by_id(self, conn: sqlite3.Connection, ids: Sequence[str]) -> Iterator[dict[str, Any]]:
        """On a connection (on its thread, or the loop's): the decoded rows whose `id` is one
        of `ids` (unknown ids left out), `MAX_ROWS` ids per query.

        Each query's rows come back as one row (a JSON array of arrays): `sqlite3` gives the
        GIL back and takes it again for every row it steps to, and each time it may wait for
        the event loop's thread to let go of it. Inside a write transaction those waits
        held SQLite's one write lock."""
        for start in range(0, len(ids), MAX_ROWS):
            chunk = list(ids[start : start + MAX_ROWS])
            sql = self._selects.get(len(chunk))
            if sql is None:
                marks = ", ".join("?" * len(chunk))
                sql = (
                    f"SELECT json_group_array(json_array({self._packed})) "
                    f"FROM {self.table} WHERE id IN ({marks})"
                )
                self._selects[len(chunk)] = sql
            (packed,) = conn.execute(sql, chunk).fetchone()
            for row in orjson.loads(packed):
                for i in self._doubles:
                    if row[i] is not None:
                        row[i] = float(row[i])
                yield self(row)


def _is_double(type_: Any) -> bool:
    """Whether a column of this SQLAlchemy type holds doubles (SQLite's REAL)."""
    impl = getattr(type_, "impl", type_)
    return isinstance(impl, Float)


@functools.cache
def row_reader(table: Table, dialect: Dialect) -> RowReader:
    return RowReader(table, dialect)


@record
class Step:
    """One statement of a script and its rows (as `Compiled.row` makes them); a step
    without rows has no statement and runs nothing."""

    statement: Compiled | None
    rows: Sequence[tuple[Any, ...]]


def script(dialect: Dialect, *pairs: tuple[Statement, Sequence[Mapping[str, Any]]]) -> list[Step]:
    """The steps of `(statement, rows as mappings with the same keys)` pairs for `dialect`,
    in order (a step without rows runs nothing and returns nothing)."""
    out: list[Step] = []
    for statement, rows in pairs:
        if not rows:
            out.append(Step(None, ()))
            continue
        compiled = statement.bind(dialect, list(rows[0]))
        out.append(Step(compiled, [compiled.row(r) for r in rows]))
    return out


_T = TypeVar("_T")
MAX_VARIABLES = 32_766  # SQLite's bound on parameters per statement (since 3.32)
MAX_ROWS = 500  # rows per multi-row INSERT


def insert_rows(
    conn: sqlite3.Connection,
    sql: Callable[[int], str],
    rows: Sequence[tuple[Any, ...]],
    per: int,
) -> list[Any]:
    """In the transaction's call: `rows` written `per` at a time, each chunk by the
    statement `sql(len(chunk))` (an INSERT whose VALUES takes that many rows, or an UPDATE
    from such a VALUES list); the rows the statements returned (RETURNING), in order."""
    found: list[Any] = []
    for start in range(0, len(rows), per):
        chunk = rows[start : start + per]
        flat = [value for row in chunk for value in row]
        found.extend(conn.execute(sql(len(chunk)), flat).fetchall())
    return found


def run_steps(steps: Sequence[Step], conn: sqlite3.Connection) -> list[list[Any]]:
    """In the transaction's call: each step's returned rows."""
    out: list[list[Any]] = []
    for step in steps:
        found: list[Any] = []
        statement, rows = step.statement, step.rows
        if statement is None or not rows:
            pass
        elif (per := statement.rows_per_statement()) > 1:
            found = insert_rows(conn, statement.multi, rows, per)
        elif statement.returning:  # executemany() returns no rows: one at a time
            for row in rows:
                found.extend(conn.execute(statement.sql, row).fetchall())
        else:
            conn.executemany(statement.sql, rows)
        out.append(found)
    return out


def _transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], _T]) -> _T:
    """On the connection's thread: `fn` inside BEGIN IMMEDIATE ... COMMIT."""
    conn.execute(WRITE_BEGIN)
    return _to_commit(conn, fn)


def _to_commit(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], _T]) -> _T:
    """`fn` in the transaction begun, then COMMIT; ROLLBACK if it raises."""
    try:
        result = fn(conn)
        conn.execute("COMMIT")
        return result
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _transaction_now(
    conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], _T]
) -> tuple[_T] | None:
    """`_transaction`, if SQLite's write lock is free now (None, nothing done, if another
    process holds it): BEGIN IMMEDIATE tries once instead of waiting `BUSY_TIMEOUT_MS`."""
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        conn.execute(WRITE_BEGIN)
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorcode not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            raise
        return None
    finally:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return (_to_commit(conn, fn),)


async def run_transaction(engine: AsyncEngine, fn: Callable[[sqlite3.Connection], _T]) -> _T:
    """`fn(connection)` in one write transaction of a SQLite `engine` (BEGIN IMMEDIATE,
    then COMMIT, or ROLLBACK when it raises), as one call on a pooled connection, under the
    process's writer lock: on the calling thread, or, while another process holds SQLite's
    write lock, on the connection's thread. `fn` makes plain `sqlite3` calls only.

    The lock is taken before the connection, as `writer` takes them: a task holding a pooled
    connection while it waits for the lock could leave a writer that holds the lock without
    a connection (every one held by such waiters) until the pool's timeout. It is released
    before the connection goes back to the pool."""
    lock, lane = lane_lock(engine), CURRENT_LANE.get()
    await lock.acquire(lane)
    try:
        pooled = await _checkout(engine)
    except BaseException:
        lock.release(lane)
        raise
    try:
        try:
            # on the loop's thread, unless another process holds SQLite's write lock: the
            # loop would wait for it
            done, found = run_inline(pooled.dbapi_connection, _transaction_now, fn, always=True)
            if done and found is not None:
                result: _T = found[0]
            else:
                result = await run_on_thread(
                    pooled.dbapi_connection, _transaction, fn, ends_transaction=True
                )
        finally:
            lock.release(lane)
    finally:
        await _checkin(pooled)
    return result


async def run_read(engine: AsyncEngine, fn: Callable[[sqlite3.Connection], _T]) -> _T:
    """`fn(connection)` as one call on a pooled SQLite connection (on its thread, or the
    loop's for a job: `INLINE_SQLITE`), outside any write transaction and without the writer
    lock: for reads of many rows that SQLAlchemy would bind and decode row by row. `fn` runs
    plain `sqlite3` reads (SELECTs open no transaction), so the connection goes back with
    nothing to end."""
    pooled = await _checkout(engine)
    try:
        done, result = run_inline(pooled.dbapi_connection, fn)
        if done:  # on the loop's thread, for a job (`INLINE_SQLITE`)
            return result  # type: ignore[return-value]
        return await run_on_thread(pooled.dbapi_connection, fn, ends_transaction=True)
    finally:
        await _checkin(pooled)


async def _checkout(engine: AsyncEngine) -> PoolProxiedConnection:
    """A connection of the engine's pool, without a SQLAlchemy `Connection` around it: its
    construction and its close (a task of its own per close, shielded) were a twentieth
    of a bulk send's time on the loop."""
    return await greenlet_spawn(engine.sync_engine.raw_connection)


async def _checkin(pooled: PoolProxiedConnection) -> None:
    """Return `pooled` to the pool. After a call that ended its transaction the pool's reset
    makes no call on the thread, so the return cannot be interrupted half way; otherwise
    (the call was cancelled or failed) it runs shielded from cancellation, as SQLAlchemy's
    own close does."""
    connection: Any = pooled.dbapi_connection
    if isinstance(connection, OneHopConnection) and connection.nothing_to_end():
        await greenlet_spawn(pooled.close)
        return
    await asyncio.shield(greenlet_spawn(pooled.close))


async def run_script(engine: AsyncEngine, steps: Sequence[Step]) -> list[list[Any]]:
    """Run `steps` in one write transaction of a SQLite `engine` (`run_transaction`);
    returns each step's returned rows (empty without RETURNING). All or nothing: an error
    rolls the transaction back and is raised."""
    return await run_transaction(engine, functools.partial(run_steps, steps))
