"""Webhook endpoint store in SQL. The failure streak is counted by one UPDATE ... RETURNING
(row-locked on PostgreSQL, under the single writer on SQLite), and the disabling decision is
written in the same transaction, so concurrent failures each count once."""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.adapters.sql.engine import reader, writer
from tidings.adapters.sql.tables import webhook_endpoints as t
from tidings.core.delivery.webhooks import DisablePolicy
from tidings.errors import Conflict, NotFound
from tidings.ports.providers import WebhookEndpoint


class SqlWebhookEndpointStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._read = reader(engine)

    async def create(self, endpoint: WebhookEndpoint) -> WebhookEndpoint:
        e = endpoint
        try:
            async with writer(self._engine) as conn:
                await conn.execute(
                    insert(t).values(
                        id=e.id,
                        url=e.url,
                        description=e.description,
                        event_types=list(e.event_types),
                        secret=e.secret,
                        previous_secret=e.previous_secret,
                        previous_secret_expires_at=e.previous_secret_expires_at,
                        enabled=e.enabled,
                        disabled_reason=e.disabled_reason,
                        disabled_at=e.disabled_at,
                        failures=e.failures,
                        failing_since=e.failing_since,
                        created_at=e.created_at,
                        updated_at=e.updated_at,
                    )
                )
        except IntegrityError:
            raise Conflict(f"webhook endpoint {e.id} exists", field="id") from None
        return endpoint

    async def get(self, endpoint_id: str) -> WebhookEndpoint:
        async with self._read.connect() as conn:
            row = (await conn.execute(select(t).where(t.c.id == endpoint_id))).one_or_none()
        if row is None:
            raise NotFound(f"webhook endpoint {endpoint_id} not found")
        return _record(row._mapping)

    async def page(self, after: str | None, limit: int) -> list[WebhookEndpoint]:
        query = select(t).order_by(t.c.id).limit(limit)
        if after is not None:
            query = query.where(t.c.id > after)
        async with self._read.connect() as conn:
            return [_record(r._mapping) for r in await conn.execute(query)]

    async def _write(self, endpoint_id: str, **values: Any) -> WebhookEndpoint:
        async with writer(self._engine) as conn:
            row = (
                await conn.execute(
                    update(t).where(t.c.id == endpoint_id).values(**values).returning(t)
                )
            ).one_or_none()
        if row is None:
            raise NotFound(f"webhook endpoint {endpoint_id} not found")
        return _record(row._mapping)

    async def update(
        self,
        endpoint_id: str,
        *,
        url: str | None = None,
        description: str | None = None,
        event_types: tuple[str, ...] | None = None,
        now: float,
    ) -> WebhookEndpoint:
        values: dict[str, Any] = {"updated_at": now}
        if url is not None:
            values["url"] = url
        if description is not None:
            values["description"] = description
        if event_types is not None:
            values["event_types"] = list(event_types)
        return await self._write(endpoint_id, **values)

    async def delete(self, endpoint_id: str) -> None:
        async with writer(self._engine) as conn:
            result = await conn.execute(delete(t).where(t.c.id == endpoint_id))
        if result.rowcount == 0:
            raise NotFound(f"webhook endpoint {endpoint_id} not found")

    async def set_secret(
        self, endpoint_id: str, secret: str, previous_expires_at: float | None, now: float
    ) -> WebhookEndpoint:
        keep = previous_expires_at is not None
        return await self._write(
            endpoint_id,
            secret=secret,
            previous_secret=t.c.secret if keep else None,
            previous_secret_expires_at=previous_expires_at,
            updated_at=now,
        )

    async def record_failure(
        self, endpoint_id: str, now: float, policy: DisablePolicy, reason: str
    ) -> WebhookEndpoint:
        async with writer(self._engine) as conn:
            row = (
                await conn.execute(
                    update(t)
                    .where(t.c.id == endpoint_id)
                    .values(
                        failures=t.c.failures + 1,
                        failing_since=case(
                            (t.c.failing_since.is_(None), now), else_=t.c.failing_since
                        ),
                    )
                    .returning(t)
                )
            ).one_or_none()
            if row is None:
                raise NotFound(f"webhook endpoint {endpoint_id} not found")
            record = _record(row._mapping)
            if record.enabled and policy.should_disable(record.failures, record.failing_since, now):
                row = (
                    await conn.execute(
                        update(t)
                        .where(t.c.id == endpoint_id)
                        .values(enabled=False, disabled_reason=reason, disabled_at=now)
                        .returning(t)
                    )
                ).one()
                record = _record(row._mapping)
        return record

    async def record_success(self, endpoint_id: str) -> None:
        async with writer(self._engine) as conn:
            await conn.execute(
                update(t)
                .where(t.c.id == endpoint_id, t.c.failures > 0)
                .values(failures=0, failing_since=None)
            )

    async def disable(self, endpoint_id: str, reason: str, now: float) -> WebhookEndpoint:
        async with writer(self._engine) as conn:
            row = (
                await conn.execute(
                    update(t)
                    .where(t.c.id == endpoint_id, t.c.enabled.is_(True))
                    .values(enabled=False, disabled_reason=reason, disabled_at=now, updated_at=now)
                    .returning(t)
                )
            ).one_or_none()
            if row is None:
                row = (await conn.execute(select(t).where(t.c.id == endpoint_id))).one_or_none()
        if row is None:
            raise NotFound(f"webhook endpoint {endpoint_id} not found")
        return _record(row._mapping)

    async def enable(self, endpoint_id: str, now: float) -> WebhookEndpoint:
        return await self._write(
            endpoint_id,
            enabled=True,
            disabled_reason=None,
            disabled_at=None,
            failures=0,
            failing_since=None,
            updated_at=now,
        )


def _record(m: Any) -> WebhookEndpoint:
    return WebhookEndpoint(
        id=m["id"],
        url=m["url"],
        description=m["description"],
        event_types=tuple(m["event_types"]),
        secret=m["secret"],
        enabled=bool(m["enabled"]),
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        previous_secret=m["previous_secret"],
        previous_secret_expires_at=m["previous_secret_expires_at"],
        disabled_reason=m["disabled_reason"],
        disabled_at=m["disabled_at"],
        failures=m["failures"],
        failing_since=m["failing_since"],
    )
