from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.adapters.sql.engine import reader, writer
from tidings.adapters.sql.tables import api_keys
from tidings.errors import Conflict, NotFound
from tidings.ports.clock import Clock
from tidings.types import ApiKey, Scope


class SqlApiKeyStore:
    def __init__(self, engine: AsyncEngine, clock: Clock) -> None:
        self._engine = engine
        self._read = reader(engine)
        self._clock = clock

    async def create(
        self, key_id: str, name: str, prefix: str, secret_hash: str, scopes: frozenset[Scope]
    ) -> ApiKey:
        key = ApiKey(
            id=key_id, name=name, prefix=prefix, scopes=scopes, created_at=self._clock.now()
        )
        try:
            async with writer(self._engine) as conn:
                await conn.execute(
                    insert(api_keys).values(
                        id=key_id,
                        name=name,
                        prefix=prefix,
                        secret_hash=secret_hash,
                        scopes=sorted(s.value for s in scopes),
                        created_at=key.created_at,
                    )
                )
        except IntegrityError as exc:
            raise Conflict(f"api key {key_id} or prefix {prefix} exists") from exc
        return key

    async def find_by_prefix(self, prefix: str) -> tuple[ApiKey, str] | None:
        async with self._read.connect() as conn:
            row = (
                await conn.execute(select(api_keys).where(api_keys.c.prefix == prefix))
            ).one_or_none()
        return None if row is None else (_key(row._mapping), row.secret_hash)

    async def list(self) -> list[ApiKey]:
        async with self._read.connect() as conn:
            rows = await conn.execute(
                select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
            )
            return [_key(r._mapping) for r in rows]

    async def revoke(self, key_id: str) -> None:
        async with writer(self._engine) as conn:
            result = await conn.execute(
                update(api_keys).where(api_keys.c.id == key_id).values(revoked_at=self._clock.now())
            )
        if result.rowcount == 0:
            raise NotFound(f"api key {key_id} not found")


def _key(m: Any) -> ApiKey:
    return ApiKey(
        id=m["id"],
        name=m["name"],
        prefix=m["prefix"],
        scopes=frozenset(Scope(s) for s in m["scopes"]),
        created_at=m["created_at"],
        revoked_at=m["revoked_at"],
    )
