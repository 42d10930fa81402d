"""The in-app inbox in SQL: one row per item, `seq` orders the feed.

A batch (`add_many`) is one transaction: one INSERT ... ON CONFLICT DO NOTHING RETURNING id,
seq (the rows returned are the ones inserted), then, only if some delivery keys were stored
already, one SELECT of those (on SQLite after the write transaction, which runs as one call
on the event loop's thread). The INSERT is driver SQL: on SQLite a multi-row VALUES list
(1,000 rows at most per statement), on PostgreSQL 13 array parameters unnested WITH
ORDINALITY, inserted in input order; SQLAlchemy's per-row parameter processing cost about
as much as SQLite's own work. `seq` comes from the table (SQLite's rowid, PostgreSQL's
sequence), so it increases with insertion order.

On PostgreSQL two batches that share delivery keys in different orders can deadlock; the
server aborts one, which raises and stores nothing (a retry is safe). Batches that repeat
keys in the same order (a retried batch) wait for each other instead.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence
from typing import Any, cast

import orjson
from sqlalchemy import ColumnElement, delete, func, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tidings.adapters.sql.engine import is_postgres, reader, writer
from tidings.adapters.sql.script import insert_rows, run_transaction
from tidings.adapters.sql.tables import inbox_items
from tidings.errors import Conflict, NotFound
from tidings.ports.inbox import Archived, Counts, InboxItem, Mark, Marked, Status

_IN_CHUNK = 500
_SQLITE_ROWS = 1000  # rows per INSERT on SQLite: 13 parameters each, the limit is 32766
_ZERO = Counts(unread=0, unseen=0)
_c = inbox_items.c
# The inserted columns, in the order of `_values`.
_COLUMNS = [
    c.name
    for c in (
        _c.id,
        _c.subscriber_id,
        _c.event_id,
        _c.workflow,
        _c.step,
        _c.title,
        _c.body,
        _c.action_url,
        _c.data,
        _c.created_at,
        _c.seen_at,
        _c.read_at,
        _c.archived_at,
    )
]
_PG_TYPES = ["text"] * 9 + ["float8"] * 4
_TAIL = (
    f"ON CONFLICT ({_c.subscriber_id.name}, {_c.event_id.name}, {_c.step.name}) DO NOTHING "
    f"RETURNING {_c.id.name}, {_c.seq.name}"
)
_PG_INSERT = (
    f"INSERT INTO {inbox_items.name} ({', '.join(_COLUMNS)}) "
    f"SELECT {', '.join(f'{n}::json' if n == _c.data.name else n for n in _COLUMNS)} "
    f"FROM unnest({', '.join(f'${i}::{t}[]' for i, t in enumerate(_PG_TYPES, 1))}) "
    f"WITH ORDINALITY AS r({', '.join(_COLUMNS)}, n) ORDER BY n {_TAIL}"
)


# Counts of many subscribers in one grouped query, the subscribers bound as one parameter.
_COUNTS = (
    f"SELECT {_c.subscriber_id.name}, sum(CASE WHEN {_c.read_at.name} IS NULL THEN 1 ELSE 0 END), "
    f"sum(CASE WHEN {_c.seen_at.name} IS NULL THEN 1 ELSE 0 END) FROM {inbox_items.name} "
    f"WHERE {_c.archived_at.name} IS NULL AND {_c.subscriber_id.name} "
)
_PG_COUNTS = f"{_COUNTS}= ANY($1::text[]) GROUP BY {_c.subscriber_id.name}"
_SQLITE_COUNTS = f"{_COUNTS}IN (SELECT value FROM json_each(?)) GROUP BY {_c.subscriber_id.name}"


@functools.lru_cache(maxsize=32)
def _sqlite_insert(rows: int) -> str:
    row = "(" + ", ".join("?" * len(_COLUMNS)) + ")"
    values = ", ".join([row] * rows)
    return f"INSERT INTO {inbox_items.name} ({', '.join(_COLUMNS)}) VALUES {values} {_TAIL}"


def _pg_columns(rows: list[tuple[Any, ...]]) -> tuple[list[Any], ...]:
    """The rows as one array parameter per column, for `_PG_INSERT`."""
    return tuple(list(column) for column in zip(*rows, strict=True))


def _sqlite_insert_rows(conn: sqlite3.Connection, *, rows: list[tuple[Any, ...]]) -> dict[str, int]:
    """In `run_transaction`'s call: insert the rows in order, skipping those whose delivery
    key is stored; the `seq` of each row inserted, by id."""
    returned = insert_rows(conn, _sqlite_insert, rows, _SQLITE_ROWS)
    return {item_id: int(seq) for item_id, seq in returned}


async def _returning(
    conn: AsyncConnection, statement: str, params: tuple[Any, ...]
) -> dict[str, int]:
    result = await conn.exec_driver_sql(statement, params)
    return {item_id: int(seq) for item_id, seq in cast("list[tuple[str, int]]", result.all())}


def _values(item: InboxItem) -> tuple[Any, ...]:
    return (
        item.id,
        item.subscriber,
        item.event_id,
        item.workflow,
        item.step,
        item.title,
        item.body,
        item.action_url,
        orjson.dumps(item.data, option=orjson.OPT_NON_STR_KEYS).decode(),
        item.created_at,
        item.seen_at,
        item.read_at,
        item.archived_at,
    )


class SqlInboxStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._read = reader(engine)
        self._postgres = is_postgres(engine)

    async def add(self, item: InboxItem) -> tuple[InboxItem, bool]:
        return (await self.add_many([item]))[0]

    async def add_many(self, items: Sequence[InboxItem]) -> list[tuple[InboxItem, bool]]:
        if not items:
            return []
        # Within the batch the first item of a delivery key wins: only it is inserted.
        first: dict[tuple[str, str, str], int] = {}  # delivery key -> index in `items`
        rows: list[tuple[Any, ...]] = []
        for n, item in enumerate(items):
            key = _key(item)
            if key is not None:
                if key in first:
                    continue
                first[key] = n
            rows.append(_values(item))

        def stored_of(inserted: dict[str, int]) -> list[tuple[str, str, str]]:
            return [k for k, n in first.items() if items[n].id not in inserted]

        try:
            if self._postgres:
                async with writer(self._engine) as conn:
                    inserted = await _returning(conn, _PG_INSERT, _pg_columns(rows))
                    stored = stored_of(inserted)
                    found = await self._by_keys(conn, stored) if stored else {}
            else:
                # one call (script.py): no hops while holding the writer
                inserted = await run_transaction(
                    self._engine, functools.partial(_sqlite_insert_rows, rows=rows)
                )
                # items stored before (a retried batch) are read afterwards: the insert
                # skipped them, and only a purge could take them away in between
                stored = stored_of(inserted)
                found = {}
                if stored:
                    async with self._read.connect() as conn:
                        found = await self._by_keys(conn, stored)
        except (IntegrityError, sqlite3.IntegrityError):
            raise Conflict(_conflict_message(items), field="id") from None
        out: list[tuple[InboxItem, bool]] = []
        for n, item in enumerate(items):
            key = _key(item)
            winner = n if key is None else first[key]
            seq = inserted.get(items[winner].id)
            if seq is not None:
                out.append((_with_seq(items[winner], seq), winner == n))
                continue
            assert key is not None  # an item without a key is inserted or raises
            earlier = found.get(key)
            if earlier is None:  # PostgreSQL: purged by another transaction in between
                raise Conflict(f"inbox item {items[winner].id} was purged while being added")
            out.append((earlier, False))
        return out

    async def _by_keys(
        self, conn: AsyncConnection, keys: list[tuple[str, str, str]]
    ) -> dict[tuple[str, str, str], InboxItem]:
        """The stored items of these delivery keys."""
        found: dict[tuple[str, str, str], InboxItem] = {}
        for start in range(0, len(keys), _IN_CHUNK):
            chunk = keys[start : start + _IN_CHUNK]
            query = select(inbox_items).where(
                tuple_(_c.subscriber_id, _c.event_id, _c.step).in_(chunk)
            )
            for r in (await conn.execute(query)).all():
                item = _item(r._mapping)
                key = _key(item)
                if key is not None:
                    found[key] = item
        return found

    async def get(self, subscriber: str, item_id: str) -> InboxItem:
        async with self._read.connect() as conn:
            row = (
                await conn.execute(
                    select(inbox_items).where(_c.subscriber_id == subscriber, _c.id == item_id)
                )
            ).one_or_none()
        if row is None:
            raise NotFound(f"inbox item {item_id} not found")
        return _item(row._mapping)

    async def feed(
        self,
        subscriber: str,
        *,
        status: Status = Status.ALL,
        archived: Archived = Archived.EXCLUDE,
        before: int | None = None,
        limit: int,
    ) -> list[InboxItem]:
        query = (
            select(inbox_items)
            .where(_c.subscriber_id == subscriber, *_filters(status, archived))
            .order_by(_c.seq.desc())
            .limit(limit)
        )
        if before is not None:
            query = query.where(_c.seq < before)
        async with self._read.connect() as conn:
            return [_item(r._mapping) for r in await conn.execute(query)]

    async def mark_changed(
        self,
        subscriber: str,
        action: Mark,
        at: float,
        *,
        ids: Sequence[str] | None = None,
        until: int | None = None,
    ) -> list[Marked]:
        values: dict[str, Any]
        match action:
            case Mark.SEEN:
                pending, values = _c.seen_at.is_(None), {"seen_at": at}
            case Mark.READ:
                pending = _c.read_at.is_(None)
                values = {"read_at": at, "seen_at": func.coalesce(_c.seen_at, at)}
            case Mark.UNREAD:
                pending, values = _c.read_at.is_not(None), {"read_at": None}
            case Mark.ARCHIVED:
                pending, values = _c.archived_at.is_(None), {"archived_at": at}
            case Mark.UNARCHIVED:
                pending, values = _c.archived_at.is_not(None), {"archived_at": None}
        base = (
            update(inbox_items)
            .where(_c.subscriber_id == subscriber, pending)
            .values(**values)
            .returning(_c.id, _c.event_id, _c.seen_at, _c.read_at, _c.archived_at)
        )
        rows: list[Any] = []
        async with writer(self._engine) as conn:
            if ids is None:
                stmt = base if until is None else base.where(_c.seq <= until)
                rows += (await conn.execute(stmt)).all()
            else:
                unique = list(dict.fromkeys(ids))
                for start in range(0, len(unique), _IN_CHUNK):
                    chunk = unique[start : start + _IN_CHUNK]
                    rows += (await conn.execute(base.where(_c.id.in_(chunk)))).all()
        return [Marked(*row) for row in rows]

    async def counts(self, subscriber: str) -> Counts:
        return (await self.counts_many([subscriber]))[subscriber]

    async def counts_many(self, subscribers: Sequence[str]) -> dict[str, Counts]:
        wanted = list(dict.fromkeys(subscribers))
        out = dict.fromkeys(wanted, _ZERO)
        if not wanted:
            return out
        # The subscribers as one parameter: an array, or a JSON array on SQLite.
        statement, param = (
            (_PG_COUNTS, wanted)
            if self._postgres
            else (_SQLITE_COUNTS, orjson.dumps(wanted).decode())
        )
        async with self._read.connect() as conn:
            rows = (await conn.exec_driver_sql(statement, (param,))).all()
        for subscriber, unread, unseen in cast("list[tuple[str, int, int]]", rows):
            out[subscriber] = Counts(unread=int(unread), unseen=int(unseen))
        return out

    async def purge(self, subscriber: str) -> int:
        async with writer(self._engine) as conn:
            result = await conn.execute(delete(inbox_items).where(_c.subscriber_id == subscriber))
        return result.rowcount


def _filters(status: Status, archived: Archived) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    match status:
        case Status.UNREAD:
            where.append(_c.read_at.is_(None))
        case Status.READ:
            where.append(_c.read_at.is_not(None))
        case Status.UNSEEN:
            where.append(_c.seen_at.is_(None))
        case Status.SEEN:
            where.append(_c.seen_at.is_not(None))
        case Status.ALL:
            pass
    if archived is Archived.EXCLUDE:
        where.append(_c.archived_at.is_(None))
    elif archived is Archived.ONLY:
        where.append(_c.archived_at.is_not(None))
    return where


def _key(item: InboxItem) -> tuple[str, str, str] | None:
    """The delivery key of the unique constraint; NULLs are distinct there, so an item
    without an event or a step has none."""
    if item.event_id is None or item.step is None:
        return None
    return item.subscriber, item.event_id, item.step


def _conflict_message(items: Sequence[InboxItem]) -> str:
    if len(items) == 1:
        return f"inbox item {items[0].id} exists"
    return "an inbox item id of the batch exists, or is repeated in it"


def _with_seq(item: InboxItem, seq: int) -> InboxItem:
    """`item` as stored (`dataclasses.replace`, without its per-call field walk)."""
    return InboxItem(
        item.id,
        item.subscriber,
        item.title,
        item.body,
        item.created_at,
        item.event_id,
        item.workflow,
        item.step,
        item.action_url,
        item.data,
        item.seen_at,
        item.read_at,
        item.archived_at,
        seq,
    )


def _item(m: Any) -> InboxItem:
    return InboxItem(
        id=m["id"],
        subscriber=m["subscriber_id"],
        title=m["title"],
        body=m["body"],
        created_at=m["created_at"],
        event_id=m["event_id"],
        workflow=m["workflow"],
        step=m["step"],
        action_url=m["action_url"],
        data=m["data"],
        seen_at=m["seen_at"],
        read_at=m["read_at"],
        archived_at=m["archived_at"],
        seq=int(m["seq"]),
    )
