"""Alembic environment: runs migrations on the async engine given in the config attributes."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from tidings.adapters.sql.engine import create_engine
from tidings.adapters.sql.tables import metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _online() -> None:
    # `tidings.adapters.sql.migrate` passes the URL as an attribute; a hand-written alembic.ini
    # may give it as `sqlalchemy.url` instead.
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("no database URL: set config.attributes['url'] or sqlalchemy.url")
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_run)
            await conn.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `tidings migrate`")
asyncio.run(_online())
