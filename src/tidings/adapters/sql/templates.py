"""Template store in SQL: version numbers come from a per-template counter updated in the
same transaction as the insert, so concurrent adds never collide."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tidings.adapters.sql.engine import is_postgres, reader, writer
from tidings.adapters.sql.tables import template_versions, templates
from tidings.errors import Conflict, NotFound
from tidings.ports.clock import Clock
from tidings.ports.templates import TemplateRecord, VersionRecord, VersionState


class SqlTemplateStore:
    def __init__(self, engine: AsyncEngine, clock: Clock) -> None:
        self._engine = engine
        self._read = reader(engine)
        self._clock = clock
        self._pg = is_postgres(engine)

    async def create(self, template_id: str, name: str, channel: str) -> TemplateRecord:
        now = self._clock.now()
        try:
            async with writer(self._engine) as conn:
                await conn.execute(
                    insert(templates).values(
                        id=template_id, name=name, channel=channel, last_version=0, created_at=now
                    )
                )
        except IntegrityError:
            raise Conflict(f"template {template_id} exists", field="id") from None
        return TemplateRecord(template_id, name, channel, None, now)

    async def get(self, template_id: str) -> TemplateRecord:
        async with self._read.connect() as conn:
            return await _template(conn, template_id)

    async def all(self) -> list[TemplateRecord]:
        async with self._read.connect() as conn:
            rows = await conn.execute(select(templates).order_by(templates.c.id))
            return [_record(r._mapping) for r in rows]

    async def add_version(self, template_id: str, body: dict[str, Any]) -> VersionRecord:
        now = self._clock.now()
        async with writer(self._engine) as conn:
            number = (
                await conn.execute(
                    update(templates)
                    .where(templates.c.id == template_id)
                    .values(last_version=templates.c.last_version + 1)
                    .returning(templates.c.last_version)
                )
            ).scalar_one_or_none()
            if number is None:
                raise NotFound(f"template {template_id} not found")
            await conn.execute(
                insert(template_versions).values(
                    template_id=template_id,
                    version=number,
                    state=VersionState.DRAFT.value,
                    body=body,
                    created_at=now,
                )
            )
        return VersionRecord(template_id, int(number), VersionState.DRAFT, body, now)

    async def version(self, template_id: str, version: int) -> VersionRecord:
        async with self._read.connect() as conn:
            return await _version(conn, template_id, version)

    async def versions(self, template_id: str) -> list[VersionRecord]:
        async with self._read.connect() as conn:
            await _template(conn, template_id)
            rows = await conn.execute(
                select(template_versions)
                .where(template_versions.c.template_id == template_id)
                .order_by(template_versions.c.version)
            )
            return [_version_record(r._mapping) for r in rows]

    async def publish(self, template_id: str, version: int) -> VersionRecord:
        now = self._clock.now()
        t, v = templates, template_versions
        async with writer(self._engine) as conn:
            query = select(t).where(t.c.id == template_id)
            row = (await conn.execute(query.with_for_update() if self._pg else query)).one_or_none()
            if row is None:
                raise NotFound(f"template {template_id} not found")
            record = await _version(conn, template_id, version)
            current = row.published_version
            if current is not None and current != version:
                await conn.execute(
                    update(v)
                    .where(v.c.template_id == template_id, v.c.version == current)
                    .values(state=VersionState.ARCHIVED.value)
                )
            await conn.execute(
                update(v)
                .where(v.c.template_id == template_id, v.c.version == version)
                .values(state=VersionState.PUBLISHED.value, published_at=now)
            )
            await conn.execute(
                update(t).where(t.c.id == template_id).values(published_version=version)
            )
        return VersionRecord(
            template_id, version, VersionState.PUBLISHED, record.body, record.created_at, now
        )


async def _template(conn: AsyncConnection, template_id: str) -> TemplateRecord:
    row = (await conn.execute(select(templates).where(templates.c.id == template_id))).one_or_none()
    if row is None:
        raise NotFound(f"template {template_id} not found")
    return _record(row._mapping)


async def _version(conn: AsyncConnection, template_id: str, version: int) -> VersionRecord:
    v = template_versions
    row = (
        await conn.execute(select(v).where(v.c.template_id == template_id, v.c.version == version))
    ).one_or_none()
    if row is None:
        await _template(conn, template_id)
        raise NotFound(f"template {template_id} has no version {version}")
    return _version_record(row._mapping)


def _record(m: Any) -> TemplateRecord:
    return TemplateRecord(m["id"], m["name"], m["channel"], m["published_version"], m["created_at"])


def _version_record(m: Any) -> VersionRecord:
    return VersionRecord(
        template=m["template_id"],
        version=m["version"],
        state=VersionState(m["state"]),
        body=m["body"],
        created_at=m["created_at"],
        published_at=m["published_at"],
    )
