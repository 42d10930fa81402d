"""The SQL adapters' plumbing: migrations match `tables.py`, engines are set up as promised."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import insert, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from tests.contract.conftest import sql_url
from tidings.adapters import sql
from tidings.adapters.sql.engine import reader
from tidings.adapters.sql.tables import event_outcomes, metadata

SQL_BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(params=SQL_BACKENDS)
async def migrated_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return await sql_url(request, request.param, tmp_path)


async def test_migrations_match_the_tables(migrated_url: str) -> None:
    engine = sql.create_engine(migrated_url)

    def diff(conn: Connection) -> list[Any]:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(diff) == []
    finally:
        await engine.dispose()


async def test_current_is_head_and_upgrade_is_idempotent(migrated_url: str) -> None:
    head = sql.head()
    assert head is not None
    assert await asyncio.to_thread(sql.current, migrated_url) == head
    await asyncio.to_thread(sql.upgrade, migrated_url)
    assert await asyncio.to_thread(sql.current, migrated_url) == head


async def test_postgresql_leaves_room_on_message_pages(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Status updates of a message stay on its page (HOT), touching no index (PostgreSQL
    only: SQLite touches only the indexes whose columns change)."""
    engine = sql.create_engine(await sql_url(request, "postgres", tmp_path))
    try:
        async with engine.connect() as conn:
            options = (
                await conn.execute(
                    text("SELECT reloptions FROM pg_class WHERE relname = 'notify_messages'")
                )
            ).scalar_one()
        assert options == ["fillfactor=50"]
    finally:
        await engine.dispose()


async def test_check_answers(migrated_url: str) -> None:
    engine = sql.create_engine(migrated_url)
    try:
        await sql.check(engine)
        assert sql.is_postgres(engine) == migrated_url.startswith("postgresql")
    finally:
        await engine.dispose()


def test_upgrade_and_current_without_a_running_loop(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/plain.db"
    assert sql.current(url) is None
    sql.upgrade(url)
    assert sql.current(url) == sql.head()


async def test_sqlite_engine_creates_its_directory_and_sets_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "t.db"
    engine = sql.create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        assert path.parent.is_dir()
        async with engine.connect() as conn:
            pragmas = {
                name: (await conn.execute(text(f"PRAGMA {name}"))).scalar()
                for name in (
                    "journal_mode",
                    "synchronous",
                    "busy_timeout",
                    "foreign_keys",
                    "cache_size",
                    "wal_autocheckpoint",
                )
            }
        assert pragmas == {
            "journal_mode": "wal",
            "synchronous": 1,  # NORMAL
            "busy_timeout": 5000,
            "foreign_keys": 1,
            "cache_size": -64 * 1024,  # KiB
            "wal_autocheckpoint": 16_384,  # pages
        }
    finally:
        await engine.dispose()


async def test_foreign_keys_are_enforced(migrated_url: str) -> None:
    engine = sql.create_engine(migrated_url)
    try:
        with pytest.raises(IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(
                    insert(event_outcomes).values(
                        event_id="missing", kind="k", target="t", status="s", detail="", at=1.0
                    )
                )
    finally:
        await engine.dispose()


async def test_sqlite_readers_do_not_wait_for_a_writer(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/rw.db"
    await asyncio.to_thread(sql.upgrade, url)
    engine = sql.create_engine(url)
    try:
        async with engine.begin() as writer:  # holds the write lock (BEGIN IMMEDIATE)
            await writer.execute(text("UPDATE jobs SET attempts = 0"))
            started = time.monotonic()
            async with reader(engine).connect() as conn:
                assert (await conn.execute(text("SELECT count(*) FROM jobs"))).scalar() == 0
            assert time.monotonic() - started < 1.0
    finally:
        await engine.dispose()


def test_other_databases_are_refused() -> None:
    with pytest.raises(ValueError, match="unsupported database URL"):
        sql.create_engine("mysql+aiomysql://u@h/db")


async def test_postgresql_connections_plan_each_execution_afresh(pg_url: str) -> None:
    """No generic plan made while a table was nearly empty outlives its growth: every
    pooled connection asks for custom plans."""
    engine = sql.create_engine(pg_url)
    try:
        async with engine.connect() as conn:
            mode = (await conn.execute(text("SHOW plan_cache_mode"))).scalar()
        assert mode == "force_custom_plan"
    finally:
        await engine.dispose()
