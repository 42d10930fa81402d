"""Presence records in SQL: one row per user with last seen and privacy, and the users'
contact lists (one row per user and contact)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import delete, func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.adapters.sql.engine import is_postgres, reader, writer
from tidings.adapters.sql.tables import presence_contacts, user_presence
from tidings.core.online import Privacy


class SqlPresenceRecords:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._read = reader(engine)
        pg = self._pg = is_postgres(engine)
        self._insert = pg_insert if pg else sqlite_insert
        self._greatest = func.greatest if pg else func.max  # SQLite's two-argument max

    async def save_last_seen(self, user: str, at: float) -> None:
        await self.save_last_seen_many({user: at})

    async def save_last_seen_many(self, seen: Mapping[str, float]) -> None:
        if not seen:
            return
        t = user_presence
        stmt = self._insert(t)
        stmt = stmt.on_conflict_do_update(
            index_elements=[t.c.user_id],
            set_={
                "last_seen": self._greatest(
                    func.coalesce(t.c.last_seen, stmt.excluded.last_seen), stmt.excluded.last_seen
                )
            },
        )
        rows = [
            {"user_id": u, "last_seen": at, "hide_online": False, "hide_last_seen": False}
            for u, at in sorted(seen.items())
        ]
        async with writer(self._engine) as conn:
            for start in range(0, len(rows), 1000):
                await conn.execute(stmt, rows[start : start + 1000])

    async def last_seen(self, user: str) -> float | None:
        async with self._read.connect() as conn:
            row = (
                await conn.execute(
                    select(user_presence.c.last_seen).where(user_presence.c.user_id == user)
                )
            ).one_or_none()
        return None if row is None else row.last_seen

    async def privacy(self, user: str) -> Privacy:
        t = user_presence
        async with self._read.connect() as conn:
            row = (
                await conn.execute(
                    select(t.c.hide_online, t.c.hide_last_seen).where(t.c.user_id == user)
                )
            ).one_or_none()
        return Privacy() if row is None else Privacy(row.hide_online, row.hide_last_seen)

    async def hidden_users(self) -> set[str]:
        t = user_presence
        async with self._read.connect() as conn:
            rows = await conn.execute(select(t.c.user_id).where(t.c.hide_online.is_(True)))
            return {r.user_id for r in rows}

    async def set_privacy(self, user: str, privacy: Privacy) -> None:
        t = user_presence
        values = {"hide_online": privacy.hide_online, "hide_last_seen": privacy.hide_last_seen}
        stmt = self._insert(t).values(user_id=user, **values)
        stmt = stmt.on_conflict_do_update(index_elements=[t.c.user_id], set_=values)
        async with writer(self._engine) as conn:
            await conn.execute(stmt)

    async def contacts(self, user: str) -> list[str]:
        t = presence_contacts
        async with self._read.connect() as conn:
            rows = await conn.execute(
                select(t.c.contact_id).where(t.c.user_id == user).order_by(t.c.contact_id)
            )
            return [r.contact_id for r in rows]

    async def set_contacts(self, user: str, contacts: Sequence[str]) -> None:
        t = presence_contacts
        rows = [{"user_id": user, "contact_id": c} for c in sorted(set(contacts))]
        async with writer(self._engine) as conn:
            if self._pg:  # concurrent replacements of one list take turns (SQLite: one writer)
                await conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(user))))
            await conn.execute(delete(t).where(t.c.user_id == user))
            for start in range(0, len(rows), 1000):
                await conn.execute(insert(t), rows[start : start + 1000])
