"""SQLAlchemy's aiosqlite driver with one thread hop per statement.

aiosqlite runs every call on its connection's thread, and SQLAlchemy's adapter makes three or
four such calls per statement (create the cursor, execute, fetch the rows, close). Each hop
waits for the event loop to come round, so under load a transaction of six statements
queued behind a busy loop some twenty times while holding SQLite's only write lock. Here a
statement's execute, fetch and close run as one call on the connection's thread; the rows,
description, rowcount and lastrowid come back together.

A transaction's BEGIN waits for its first statement and runs in that statement's call
(`OneHopConnection.begin_with_next_statement`), and a COMMIT or ROLLBACK with no transaction
open on the connection makes no call at all: a read of one statement is two calls, not
three or four.

Server-side (streaming) cursors keep SQLAlchemy's own implementation.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
    AsyncAdapt_aiosqlite_ss_cursor,
)
from sqlalchemy.util.concurrency import await_

from tidings.types import INLINE_SQLITE

_Outcome = tuple[Any, int, int | None, list[Any] | None]
READ_BEGIN = "BEGIN"  # a transaction that only reads (deferred)
WRITE_BEGIN = "BEGIN IMMEDIATE"  # a writer takes SQLite's write lock at its start
_T = TypeVar("_T")


class _Finished:
    """What a statement left: the parts of a DB-API cursor SQLAlchemy reads afterwards."""

    __slots__ = ("arraysize", "description", "lastrowid", "rowcount")

    def __init__(self, description: Any = None, rowcount: int = -1, lastrowid: Any = None):
        self.description = description
        self.rowcount = rowcount
        self.lastrowid = lastrowid
        self.arraysize = 1

    def close(self) -> None:
        """Nothing to release: the sqlite3 cursor was closed on its thread."""


def _run(
    conn: sqlite3.Connection, operation: str, parameters: Any, many: bool, begin: str | None
) -> _Outcome:
    if begin is not None:
        conn.execute(begin)
    cursor = conn.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        else:
            cursor.execute(operation, () if parameters is None else parameters)
        rows = cursor.fetchall() if cursor.description else None
        return cursor.description, cursor.rowcount, cursor.lastrowid, rows
    finally:
        cursor.close()


class OneHopCursor(AsyncAdapt_aiosqlite_cursor):
    __slots__ = ()
    _awaitable_cursor_close = False

    def _make_new_cursor(self, connection: Any) -> Any:
        return _Finished()

    def _aenter_cursor(self, cursor: Any) -> Any:
        return cursor

    async def _call(self, operation: Any, parameters: Any, many: bool) -> None:
        connection: Any = self._connection  # an aiosqlite.Connection
        adapt: OneHopConnection = self._adapt_connection  # type: ignore[assignment]
        if adapt.may_read_inline():
            begin, adapt._begin, adapt._ended, adapt._inline = adapt._begin, None, False, True
            outcome: _Outcome = _run(connection._conn, operation, parameters, many, begin)
        else:
            async with adapt._execute_mutex:
                begin, adapt._begin, adapt._ended = adapt._begin, None, False
                outcome = await connection._execute(
                    _run, connection._conn, operation, parameters, many, begin
                )
        finished: _Finished = self._cursor  # type: ignore[assignment]
        finished.description, finished.rowcount, finished.lastrowid, rows = outcome
        self._rows.clear()
        if rows is not None:
            self._rows.extend(rows)

    async def _execute_async(self, operation: Any, parameters: Any) -> Any:
        await self._call(operation, parameters, many=False)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> Any:
        await self._call(operation, seq_of_parameters, many=True)


def _start(conn: sqlite3.Connection, begin: str) -> None:
    conn.execute(begin)


class StreamingCursor(AsyncAdapt_aiosqlite_ss_cursor):
    """SQLAlchemy's server-side cursor, after the BEGIN waiting for a first statement."""

    __slots__ = ()

    async def _execute_async(self, operation: Any, parameters: Any) -> Any:
        adapt: OneHopConnection = self._adapt_connection  # type: ignore[assignment]
        adapt._ended = False  # every call on the thread may leave a transaction open
        if adapt._begin is not None:
            async with adapt._execute_mutex:
                begin, adapt._begin = adapt._begin, None
                connection: Any = self._connection  # an aiosqlite.Connection
                await connection._execute(_start, connection._conn, begin)
        return await super()._execute_async(operation, parameters)


class OneHopConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ("_begin", "_ended", "_inline")
    _cursor_cls = OneHopCursor
    _ss_cursor_cls = StreamingCursor

    def __init__(self, dbapi: Any, connection: Any) -> None:
        super().__init__(dbapi, connection)
        self._begin: str | None = None  # to run before the next statement, in its call
        # The last call on the thread left no transaction open and was awaited to its end
        # (a COMMIT, a ROLLBACK, `run_on_thread` with `ends_transaction`): nothing to end.
        self._ended = False
        # A read transaction is open that statements ran in on the loop's thread
        # (`may_read_inline`): it ends there too.
        self._inline = False

    def may_read_inline(self) -> bool:
        """Whether the next statement runs on the calling (event loop's) thread instead of
        the connection's: the task allows it (`INLINE_SQLITE`), the connection reads (its
        transaction begins deferred, or is such a read already), and no call of it is in
        flight on its thread."""
        return (
            INLINE_SQLITE.get()
            and (self._inline or self._begin == READ_BEGIN)
            and not self._execute_mutex.locked()
        )

    def _end_inline(self) -> bool:
        """End a read transaction begun on the loop's thread, there; whether there was one."""
        if not self._inline:
            return False
        self._inline = False
        conn: sqlite3.Connection = self._connection._conn
        if conn.in_transaction:
            conn.execute("ROLLBACK")  # it only read: nothing to keep
        self._begin, self._ended = None, True
        return True

    def begin_with_next_statement(self, sql: str) -> None:
        """Start a transaction with `sql` (a BEGIN) on the thread, in the same call as the
        next statement (a transaction that runs none never calls the thread)."""
        self._begin = sql

    def _nothing_to_end(self) -> bool:
        """Whether a COMMIT or ROLLBACK can be skipped: the transaction ran no statement, or
        the last call ended it. Known from this side alone: a call whose awaiting task was
        cancelled may still be running on the thread, and only a COMMIT or ROLLBACK queued
        behind it ends what it began."""
        skip = self.nothing_to_end()
        self._begin, self._ended = None, False
        return skip

    def nothing_to_end(self) -> bool:
        """Whether the last call on the thread left no transaction open and was awaited to
        its end: a COMMIT or ROLLBACK now would make no call."""
        return self._begin is not None or self._ended

    def rollback(self) -> None:
        if self._end_inline():
            return
        if not self._nothing_to_end():
            super().rollback()
        self._ended = True  # the pool's reset on return has nothing left to end either

    def commit(self) -> None:
        if self._end_inline():
            return
        if not self._nothing_to_end():
            super().commit()
        self._ended = True


class OneHopDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """Pass as `module=` to `create_async_engine` for a `sqlite+aiosqlite` URL."""

    def connect(self, *arg: Any, **kw: Any) -> OneHopConnection:
        connection = aiosqlite.connect(*arg, **kw)
        connection._thread.daemon = True
        return OneHopConnection(self, cast(Any, await_(connection)))


async def run_on_thread(
    connection: Any, fn: Callable[..., _T], *args: Any, ends_transaction: bool = False
) -> _T:
    """`fn(sqlite3_connection, *args)` as one call on the thread of `connection` (a pooled
    connection's DB-API object), in turn with its statements. `ends_transaction`: `fn`
    leaves no transaction open, whether it returns or raises, so the connection's release
    makes no ROLLBACK call (unless this call was cancelled before it ended)."""
    adapt: OneHopConnection = connection
    aio: Any = adapt._connection  # an aiosqlite.Connection
    async with adapt._execute_mutex:
        adapt._ended = False
        try:
            result: _T = await aio._execute(fn, aio._conn, *args)
        except Exception:
            adapt._ended = ends_transaction
            raise
        adapt._ended = ends_transaction
        return result


def run_inline(
    connection: Any, fn: Callable[..., _T], *args: Any, always: bool = False
) -> tuple[bool, _T | None]:
    """`(True, fn(sqlite3_connection, *args))` run on the calling thread when the task allows
    it (`INLINE_SQLITE`, or `always`) and no call of `connection` is in flight on its thread;
    else `(False, None)`, nothing run. `fn` leaves no transaction open, whether it returns
    or raises (`run_on_thread`'s `ends_transaction`)."""
    adapt: OneHopConnection = connection
    if not (always or INLINE_SQLITE.get()) or adapt._execute_mutex.locked():
        return False, None
    adapt._ended = False
    try:
        return True, fn(adapt._connection._conn, *args)
    finally:
        adapt._ended = True  # no transaction left open: the release has nothing to end


def dbapi() -> OneHopDBAPI:
    return OneHopDBAPI(aiosqlite, sqlite3)


__all__: Sequence[str] = ("OneHopDBAPI", "dbapi", "run_inline", "run_on_thread")
