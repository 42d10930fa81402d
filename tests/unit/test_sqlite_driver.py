"""The one-hop aiosqlite cursor behind every SQLite engine: results, counts, generated ids,
batches, errors and streaming come back as SQLAlchemy expects them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.adapters.sql import create_engine
from tidings.adapters.sql.sqlite_driver import OneHopCursor

meta = MetaData()
things = Table(
    "things",
    meta,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(20), nullable=False, unique=True),
)


@contextlib.asynccontextmanager
async def sqlite_engine(tmp_path: Path, schema: MetaData) -> AsyncIterator[AsyncEngine]:
    """An engine on a new SQLite file holding `schema`'s tables."""
    e = create_engine(f"sqlite+aiosqlite:///{tmp_path}/d.db")
    try:
        async with e.begin() as conn:
            await conn.run_sync(schema.create_all)
        yield e
    finally:
        await e.dispose()


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with sqlite_engine(tmp_path, meta) as e:
        yield e


async def test_the_engine_uses_the_one_hop_cursor(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        assert isinstance(raw.dbapi_connection.cursor(), OneHopCursor)


async def test_rows_counts_and_generated_ids(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        first = await conn.execute(insert(things).values(name="a"))
        second = await conn.execute(insert(things).values(name="b"))
        assert (first.inserted_primary_key[0], second.inserted_primary_key[0]) == (1, 2)
        many = await conn.execute(insert(things), [{"name": f"n{i}"} for i in range(5)])
        assert many.rowcount == 5
        changed = await conn.execute(
            update(things).where(things.c.name.like("n%")).values(name=things.c.name + "x")
        )
        assert changed.rowcount == 5
    async with engine.connect() as conn:
        rows = (await conn.execute(select(things.c.id, things.c.name).order_by(things.c.id))).all()
        assert [tuple(r) for r in rows][:3] == [(1, "a"), (2, "b"), (3, "n0x")]
        assert len(rows) == 7
        assert (await conn.execute(text("select count(*) from things"))).scalar_one() == 7
        empty = await conn.execute(select(things).where(things.c.name == "none"))
        assert empty.first() is None


async def test_an_error_rolls_back_and_is_sqlalchemys_own(engine: AsyncEngine) -> None:
    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await conn.execute(insert(things).values(name="x"))
            await conn.execute(insert(things).values(name="x"))  # unique
    async with engine.connect() as conn:
        assert (await conn.execute(text("select count(*) from things"))).scalar_one() == 0


async def test_streaming_keeps_sqlalchemys_server_side_cursor(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(things), [{"name": f"s{i:03d}"} for i in range(250)])
    async with engine.connect() as conn:
        result = await conn.stream(select(things.c.name).order_by(things.c.name))
        names = [row[0] async for row in result]
    assert names == [f"s{i:03d}" for i in range(250)]
