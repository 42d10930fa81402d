"""WAL checkpoints off the commit path: the runtime's checkpointer copies committed frames
into the database file from its own connection, while writers go on."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import text

from tests.api.conftest import make_settings
from tidings.adapters import sql
from tidings.adapters.sql.checkpoint import WalCheckpointer
from tidings.wiring import build_runtime, migrate


async def test_a_passive_checkpoint_copies_what_writers_committed(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    engine = sql.create_engine(f"sqlite+aiosqlite:///{path}")
    checkpointer = WalCheckpointer(path, every=0.01)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (n INTEGER PRIMARY KEY, body TEXT)"))
            for _ in range(200):
                await conn.execute(text("INSERT INTO t (body) VALUES (:b)"), {"b": "x" * 2000})
        frames, copied = checkpointer.checkpoint()
        assert frames > 100 and copied == frames  # all of it: nobody is reading
        assert checkpointer.checkpoints == 1
        assert checkpointer.checkpoint() == (frames, frames)  # nothing new: nothing copied twice
        assert checkpointer.checkpoints == 1
        # in the background, while a writer keeps committing
        checkpointer.start()
        for _ in range(20):
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO t (body) VALUES (:b)"), {"b": "y" * 2000})
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert checkpointer.checkpoints > 1
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 220
    finally:
        await checkpointer.stop()
        await engine.dispose()


async def test_a_runtime_on_sqlite_runs_one(tmp_path: Path) -> None:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/r.db")
    migrate(settings)
    runtime = build_runtime(settings)
    assert runtime.checkpointer is not None and runtime.checkpointer.path == tmp_path / "r.db"
    await runtime.start()
    try:
        assert runtime.checkpointer._task is not None
    finally:
        await runtime.stop()
    assert runtime.checkpointer._task is None and runtime.checkpointer._conn is None
