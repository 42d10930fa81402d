"""Preferences (one JSON document per subscriber) and the suppression list in SQL."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.adapters.sql.engine import among, is_postgres, reader, writer
from tidings.adapters.sql.tables import notify_preferences, notify_suppressions
from tidings.core.notify.decisions import Preferences
from tidings.core.notify.preferences import preferences_from_json, preferences_to_json
from tidings.ports.preferences import Suppression, split_position

_IN_CHUNK = 1000  # ids per IN (...) list: the orchestrator's batch is one query


class SqlPreferenceStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._read = reader(engine)
        self._pg = is_postgres(engine)
        self._insert = pg_insert if is_postgres(engine) else sqlite_insert

    async def get(self, subscriber: str) -> Preferences:
        p = notify_preferences.c
        async with self._read.connect() as conn:
            data = (
                await conn.execute(select(p.data).where(p.subscriber == subscriber))
            ).scalar_one_or_none()
        return Preferences() if data is None else preferences_from_json(data)

    async def get_many(self, subscribers: Sequence[str]) -> dict[str, Preferences]:
        unique = list(dict.fromkeys(subscribers))
        p = notify_preferences.c
        out: dict[str, Preferences] = {}
        async with self._read.connect() as conn:
            for start in range(0, len(unique), _IN_CHUNK):
                rows = await conn.execute(
                    select(p.subscriber, p.data).where(
                        among(p.subscriber, unique[start : start + _IN_CHUNK], self._pg)
                    )
                )
                for r in rows:
                    out[r.subscriber] = preferences_from_json(r.data)
        return out

    async def put(self, subscriber: str, prefs: Preferences, at: float) -> Preferences:
        data = preferences_to_json(prefs)
        stmt = self._insert(notify_preferences).values(
            subscriber=subscriber, data=data, updated_at=at
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[notify_preferences.c.subscriber],
            set_={"data": stmt.excluded.data, "updated_at": stmt.excluded.updated_at},
        )
        async with writer(self._engine) as conn:
            await conn.execute(stmt)
        return preferences_from_json(data)

    async def delete(self, subscriber: str) -> bool:
        async with writer(self._engine) as conn:
            result = await conn.execute(
                delete(notify_preferences).where(notify_preferences.c.subscriber == subscriber)
            )
        return result.rowcount > 0


class SqlSuppressionStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._read = reader(engine)
        self._pg = is_postgres(engine)
        self._insert = pg_insert if is_postgres(engine) else sqlite_insert

    async def add(
        self, channel: str, address: str, reason: str, at: float, detail: str = ""
    ) -> bool:
        s = notify_suppressions.c
        stmt = (
            self._insert(notify_suppressions)
            .values(channel=channel, address=address, reason=reason, detail=detail, created_at=at)
            .on_conflict_do_nothing(index_elements=[s.channel, s.address])
            .returning(s.channel)
        )
        async with writer(self._engine) as conn:
            inserted = (await conn.execute(stmt)).one_or_none()
        return inserted is not None

    async def remove(self, channel: str, address: str) -> bool:
        s = notify_suppressions.c
        async with writer(self._engine) as conn:
            result = await conn.execute(
                delete(notify_suppressions).where(s.channel == channel, s.address == address)
            )
        return result.rowcount > 0

    async def check_many(self, channel: str, addresses: Sequence[str]) -> dict[str, str]:
        unique = list(dict.fromkeys(addresses))
        s = notify_suppressions.c
        out: dict[str, str] = {}
        async with self._read.connect() as conn:
            for start in range(0, len(unique), _IN_CHUNK):
                rows = await conn.execute(
                    select(s.address, s.reason).where(
                        s.channel == channel,
                        among(s.address, unique[start : start + _IN_CHUNK], self._pg),
                    )
                )
                out.update((r.address, r.reason) for r in rows)
        return out

    async def page(
        self, *, channel: str | None, after: str | None, limit: int
    ) -> list[Suppression]:
        s = notify_suppressions.c
        query = select(notify_suppressions).order_by(s.channel, s.address).limit(limit)
        if channel is not None:
            query = query.where(s.channel == channel)
        if after is not None:
            c, a = split_position(after)
            query = query.where(or_(s.channel > c, and_(s.channel == c, s.address > a)))
        async with self._read.connect() as conn:
            rows = await conn.execute(query)
            return [
                Suppression(r.channel, r.address, r.reason, r.detail, r.created_at) for r in rows
            ]
