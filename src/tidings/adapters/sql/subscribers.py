"""Subscribers, their devices and Web Push subscriptions, and topics in SQL."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import AsyncIterator, Sequence
from typing import Any

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tidings.adapters.sql.engine import among, is_postgres, reader, writer
from tidings.adapters.sql.script import RowReader, row_reader, run_read
from tidings.adapters.sql.tables import (
    subscriber_devices,
    subscriber_webpush,
    subscribers,
    topic_members,
    topics,
)
from tidings.core.subscribers import Device, Platform, WebPushSubscription
from tidings.errors import Conflict, InvalidInput, NotFound
from tidings.ports.subscribers import Subscriber, Topic

_IN_CHUNK = 500  # ids per IN (...) list


class SqlSubscriberStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._read = reader(engine)
        self._insert = pg_insert if is_postgres(engine) else sqlite_insert

    async def put(self, subscriber: Subscriber) -> tuple[Subscriber, bool]:
        s, d, w = subscribers.c, subscriber_devices.c, subscriber_webpush.c
        profile = {
            "email": subscriber.email,
            "phone": subscriber.phone,
            "locale": subscriber.locale,
            "timezone": subscriber.timezone,
            "data": subscriber.data,
            "updated_at": subscriber.updated_at,
        }
        tokens = [x.token for x in subscriber.devices]
        endpoints = [x.endpoint for x in subscriber.webpush]
        try:
            async with writer(self._engine) as conn:
                inserted = (
                    await conn.execute(
                        self._insert(subscribers)
                        .values(id=subscriber.id, created_at=subscriber.created_at, **profile)
                        .on_conflict_do_nothing(index_elements=[s.id])
                        .returning(s.created_at)
                    )
                ).one_or_none()
                created = inserted is not None
                if not created:
                    await conn.execute(
                        update(subscribers).where(s.id == subscriber.id).values(**profile)
                    )
                await conn.execute(
                    delete(subscriber_devices).where(
                        or_(d.subscriber_id == subscriber.id, d.token.in_(tokens))
                    )
                )
                if subscriber.devices:
                    await conn.execute(
                        insert(subscriber_devices),
                        [
                            {
                                "token": x.token,
                                "platform": x.platform.value,
                                "subscriber_id": subscriber.id,
                                "created_at": subscriber.updated_at,
                            }
                            for x in subscriber.devices
                        ],
                    )
                await conn.execute(
                    delete(subscriber_webpush).where(
                        or_(w.subscriber_id == subscriber.id, w.endpoint.in_(endpoints))
                    )
                )
                if subscriber.webpush:
                    await conn.execute(
                        insert(subscriber_webpush),
                        [
                            {
                                "endpoint": x.endpoint,
                                "p256dh": x.p256dh,
                                "auth": x.auth,
                                "subscriber_id": subscriber.id,
                                "created_at": subscriber.updated_at,
                            }
                            for x in subscriber.webpush
                        ],
                    )
                [stored] = await _load(conn, [subscriber.id])
        except IntegrityError:
            # Only a concurrent write of the same device token or endpoint gets here.
            raise Conflict(
                "a device or Web Push endpoint was written concurrently; retry", field="devices"
            ) from None
        return stored, created

    async def get(self, subscriber_id: str) -> Subscriber:
        async with self._read.connect() as conn:
            found = await _load(conn, [subscriber_id])
        if not found:
            raise NotFound(f"subscriber {subscriber_id} not found")
        return found[0]

    async def get_many(self, ids: Sequence[str], *, devices: bool = True) -> list[Subscriber]:
        unique = list(dict.fromkeys(ids))
        by_id: dict[str, Subscriber] = {}
        if not devices and not is_postgres(self._engine):
            # SQLite, the subscribers alone (a fanout's or a delivery batch's read of many):
            # one call on a connection (`run_read`), not SQLAlchemy's per-row work
            read = row_reader(subscribers, self._engine.dialect)
            found = await run_read(self._engine, functools.partial(_read_plain, read, unique))
            return [found[i] for i in ids if i in found]
        async with self._read.connect() as conn:
            for start in range(0, len(unique), _IN_CHUNK):
                for sub in await _load(conn, unique[start : start + _IN_CHUNK], devices):
                    by_id[sub.id] = sub
        return [by_id[i] for i in ids if i in by_id]

    async def delete(self, subscriber_id: str) -> None:
        async with writer(self._engine) as conn:
            result = await conn.execute(
                delete(subscribers).where(subscribers.c.id == subscriber_id)
            )
        if result.rowcount == 0:
            raise NotFound(f"subscriber {subscriber_id} not found")

    async def page(self, *, after: str | None, limit: int) -> list[Subscriber]:
        s = subscribers.c
        query = select(s.id).order_by(s.id).limit(limit)
        if after is not None:
            query = query.where(s.id > after)
        async with self._read.connect() as conn:
            ids = list((await conn.execute(query)).scalars())
            return await _load(conn, ids)


async def _load(
    conn: AsyncConnection, ids: list[str], with_devices: bool = True
) -> list[Subscriber]:
    """The subscribers of `ids` that exist, in the order of `ids`, with devices and Web Push
    (left empty unless `with_devices`)."""
    if not ids:
        return []
    s, d, w = subscribers.c, subscriber_devices.c, subscriber_webpush.c
    pg = is_postgres(conn)
    rows = {
        r.id: r._mapping
        for r in await conn.execute(select(subscribers).where(among(s.id, ids, pg)))
    }
    if not with_devices:
        return [_subscriber(rows[i], [], []) for i in ids if i in rows]
    devices: dict[str, list[Device]] = {}
    for r in await conn.execute(
        select(d.subscriber_id, d.platform, d.token)
        .where(among(d.subscriber_id, ids, pg))
        .order_by(d.created_at, d.token)
    ):
        devices.setdefault(r.subscriber_id, []).append(Device(Platform(r.platform), r.token))
    webpush: dict[str, list[WebPushSubscription]] = {}
    for p in await conn.execute(
        select(w.subscriber_id, w.endpoint, w.p256dh, w.auth)
        .where(among(w.subscriber_id, ids, pg))
        .order_by(w.created_at, w.endpoint)
    ):
        webpush.setdefault(p.subscriber_id, []).append(
            WebPushSubscription(p.endpoint, p.p256dh, p.auth)
        )
    return [_subscriber(rows[i], devices.get(i, []), webpush.get(i, [])) for i in ids if i in rows]


def _read_plain(
    read: RowReader, ids: Sequence[str], conn: sqlite3.Connection
) -> dict[str, Subscriber]:
    """In `run_read`'s call on SQLite: the subscribers of `ids` that exist, by id, without
    devices and Web Push, decoded as SQLAlchemy decodes them (`read`)."""
    return {s.id: s for s in (_subscriber(m, [], []) for m in read.by_id(conn, ids))}


def _subscriber(m: Any, devices: list[Device], webpush: list[WebPushSubscription]) -> Subscriber:
    return Subscriber(
        id=m["id"],
        email=m["email"],
        phone=m["phone"],
        locale=m["locale"],
        timezone=m["timezone"],
        data=m["data"],
        devices=tuple(devices),
        webpush=tuple(webpush),
        created_at=m["created_at"],
        updated_at=m["updated_at"],
    )


class SqlTopicStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._read = reader(engine)
        self._insert = pg_insert if is_postgres(engine) else sqlite_insert

    async def create(self, topic: Topic) -> Topic:
        try:
            async with writer(self._engine) as conn:
                await conn.execute(
                    insert(topics).values(
                        key=topic.key, name=topic.name, created_at=topic.created_at
                    )
                )
        except IntegrityError:
            raise Conflict(f"topic {topic.key} exists", field="key") from None
        return topic

    async def get(self, key: str) -> Topic:
        async with self._read.connect() as conn:
            return await _topic(conn, key)

    async def page(self, *, after: str | None, limit: int) -> list[Topic]:
        t = topics.c
        query = select(topics).order_by(t.key).limit(limit)
        if after is not None:
            query = query.where(t.key > after)
        async with self._read.connect() as conn:
            return [Topic(r.key, r.name, r.created_at) for r in await conn.execute(query)]

    async def delete(self, key: str) -> None:
        async with writer(self._engine) as conn:
            result = await conn.execute(delete(topics).where(topics.c.key == key))
        if result.rowcount == 0:
            raise NotFound(f"topic {key} not found")

    async def add_members(self, key: str, subscriber_ids: Sequence[str], at: float) -> int:
        unique = list(dict.fromkeys(subscriber_ids))
        m = topic_members.c
        stmt = self._insert(topic_members).on_conflict_do_nothing(
            index_elements=[m.topic_key, m.subscriber_id]
        )
        try:
            async with writer(self._engine) as conn:
                await _topic(conn, key)
                known: set[str] = set()
                present: set[str] = set()
                for start in range(0, len(unique), _IN_CHUNK):
                    chunk = unique[start : start + _IN_CHUNK]
                    known.update(
                        (
                            await conn.execute(
                                select(subscribers.c.id).where(subscribers.c.id.in_(chunk))
                            )
                        ).scalars()
                    )
                    present.update(
                        (
                            await conn.execute(
                                select(m.subscriber_id).where(
                                    m.topic_key == key, m.subscriber_id.in_(chunk)
                                )
                            )
                        ).scalars()
                    )
                unknown = sorted(set(unique) - known)
                if unknown:
                    raise InvalidInput(
                        f"unknown subscribers: {', '.join(unknown)}", field="subscribers"
                    )
                new = [i for i in unique if i not in present]
                if new:
                    await conn.execute(
                        stmt,
                        [{"topic_key": key, "subscriber_id": i, "created_at": at} for i in new],
                    )
        except IntegrityError:
            # A subscriber was deleted while being added.
            raise Conflict(
                "a subscriber was deleted concurrently; retry", field="subscribers"
            ) from None
        return len(new)

    async def remove_members(self, key: str, subscriber_ids: Sequence[str]) -> int:
        unique = list(dict.fromkeys(subscriber_ids))
        m = topic_members.c
        removed = 0
        async with writer(self._engine) as conn:
            await _topic(conn, key)
            for start in range(0, len(unique), _IN_CHUNK):
                result = await conn.execute(
                    delete(topic_members).where(
                        m.topic_key == key, m.subscriber_id.in_(unique[start : start + _IN_CHUNK])
                    )
                )
                removed += result.rowcount
        return removed

    async def members(self, key: str, *, after: str | None, limit: int) -> list[str]:
        async with self._read.connect() as conn:
            await _topic(conn, key)
            return await _members(conn, key, after, limit)

    async def count(self, key: str) -> int:
        m = topic_members.c
        async with self._read.connect() as conn:
            await _topic(conn, key)
            n = (await conn.execute(select(func.count()).where(m.topic_key == key))).scalar_one()
        return int(n)

    async def iter_members(self, key: str, *, batch: int) -> AsyncIterator[list[str]]:
        after: str | None = None
        first = True
        while True:
            async with self._read.connect() as conn:
                if first:
                    await _topic(conn, key)
                    first = False
                page = await _members(conn, key, after, batch)
            if not page:
                return
            yield page
            after = page[-1]


async def _topic(conn: AsyncConnection, key: str) -> Topic:
    row = (await conn.execute(select(topics).where(topics.c.key == key))).one_or_none()
    if row is None:
        raise NotFound(f"topic {key} not found")
    return Topic(row.key, row.name, row.created_at)


async def _members(conn: AsyncConnection, key: str, after: str | None, limit: int) -> list[str]:
    m = topic_members.c
    query = select(m.subscriber_id).where(m.topic_key == key).order_by(m.subscriber_id).limit(limit)
    if after is not None:
        query = query.where(m.subscriber_id > after)
    return list((await conn.execute(query)).scalars())
