"""The in-app inbox in SQL: one row per item, `seq` orders the feed."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, case, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.adapters.sql.engine import is_postgres, reader, writer
from tidings.adapters.sql.tables import inbox_items
from tidings.errors import Conflict, NotFound
from tidings.ports.inbox import Archived, Counts, InboxItem, Mark, Status

_IN_CHUNK = 500
_c = inbox_items.c


class SqlInboxStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._read = reader(engine)
        insert = pg_insert if is_postgres(engine) else sqlite_insert
        self._insert = (
            insert(inbox_items)
            .on_conflict_do_nothing(index_elements=[_c.subscriber_id, _c.event_id, _c.step])
            .returning(_c.seq)
        )

    async def add(self, item: InboxItem) -> tuple[InboxItem, bool]:
        try:
            async with writer(self._engine) as conn:
                seq = (await conn.execute(self._insert, _row(item))).scalar_one_or_none()
                if seq is not None:
                    return _with_seq(item, seq), True
                row = (
                    await conn.execute(
                        select(inbox_items).where(
                            _c.subscriber_id == item.subscriber,
                            _c.event_id == item.event_id,
                            _c.step == item.step,
                        )
                    )
                ).one()
        except IntegrityError:
            raise Conflict(f"inbox item {item.id} exists", field="id") from None
        return _item(row._mapping), False

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

    async def mark(
        self,
        subscriber: str,
        action: Mark,
        at: float,
        *,
        ids: Sequence[str] | None = None,
        until: int | None = None,
    ) -> int:
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
        base = update(inbox_items).where(_c.subscriber_id == subscriber, pending).values(**values)
        changed = 0
        async with writer(self._engine) as conn:
            if ids is None:
                stmt = base if until is None else base.where(_c.seq <= until)
                changed = (await conn.execute(stmt)).rowcount
            else:
                unique = list(dict.fromkeys(ids))
                for start in range(0, len(unique), _IN_CHUNK):
                    chunk = unique[start : start + _IN_CHUNK]
                    changed += (await conn.execute(base.where(_c.id.in_(chunk)))).rowcount
        return changed

    async def counts(self, subscriber: str) -> Counts:
        query = select(
            func.coalesce(func.sum(case((_c.read_at.is_(None), 1), else_=0)), 0),
            func.coalesce(func.sum(case((_c.seen_at.is_(None), 1), else_=0)), 0),
        ).where(_c.subscriber_id == subscriber, _c.archived_at.is_(None))
        async with self._read.connect() as conn:
            unread, unseen = (await conn.execute(query)).one()
        return Counts(unread=int(unread), unseen=int(unseen))

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


def _row(item: InboxItem) -> dict[str, Any]:
    return {
        "id": item.id,
        "subscriber_id": item.subscriber,
        "event_id": item.event_id,
        "workflow": item.workflow,
        "step": item.step,
        "title": item.title,
        "body": item.body,
        "action_url": item.action_url,
        "data": item.data,
        "created_at": item.created_at,
        "seen_at": item.seen_at,
        "read_at": item.read_at,
        "archived_at": item.archived_at,
    }


def _with_seq(item: InboxItem, seq: int) -> InboxItem:
    return dataclasses.replace(item, seq=int(seq))


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
