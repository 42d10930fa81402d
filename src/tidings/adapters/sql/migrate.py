"""Alembic migrations, configured in code (no alembic.ini): `upgrade`, `current`, `head`."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from tidings.adapters.sql.engine import create_engine

T = TypeVar("T")
MIGRATIONS = Path(__file__).parent / "migrations"


def _config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["url"] = url
    return cfg


def _in_thread(fn: Callable[[], T]) -> T:
    """Alembic's async env runs its own event loop; a worker thread keeps it apart from any
    loop the caller is running."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result()


def upgrade(url: str, revision: str = "head") -> None:
    _in_thread(lambda: command.upgrade(_config(url), revision))


def head() -> str:
    heads = ScriptDirectory.from_config(_config("")).get_heads()
    return heads[0]


def current(url: str) -> str | None:
    async def read() -> str | None:
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:

                def rev(sync_conn: Connection) -> str | None:
                    return MigrationContext.configure(sync_conn).get_current_revision()

                return await conn.run_sync(rev)
        finally:
            await engine.dispose()

    return _in_thread(lambda: asyncio.run(read()))
