"""PostgreSQL connection pool: a connection idle in the pool is pinged before use, and a
broken one is replaced without the caller seeing an error; a busy one is not pinged."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.adapters.sql import engine as sql_engine
from tidings.adapters.sql.engine import create_engine


async def _backend(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def _terminate(engine: AsyncEngine, pid: int) -> None:
    """End backend `pid` from a connection of its own, as a server restart would."""
    other = create_engine(str(engine.url.render_as_string(hide_password=False)))
    try:
        async with other.connect() as conn:
            ended = await conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
            assert ended.scalar_one() is True
    finally:
        await other.dispose()


async def test_an_idle_broken_connection_is_replaced_before_use(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sql_engine, "PING_AFTER_IDLE", 0.0)  # every checked-in one is idle
    engine = create_engine(pg_url)
    try:
        first = await _backend(engine)
        await _terminate(engine, first)
        second = await _backend(engine)  # no error: the ping found it broken
        assert second != first
    finally:
        await engine.dispose()


async def test_a_busy_connection_is_not_pinged(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sql_engine, "PING_AFTER_IDLE", 3600.0)  # none is idle that long
    engine = create_engine(pg_url)
    try:
        first = await _backend(engine)
        await _terminate(engine, first)
        # not pinged: the statement meets the broken connection, once
        with pytest.raises(DBAPIError) as raised:
            await _backend(engine)
        assert raised.value.connection_invalidated
        assert await _backend(engine) != first  # the pool replaced it
    finally:
        await engine.dispose()
