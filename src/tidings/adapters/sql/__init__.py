"""SQL adapters (SQLAlchemy 2 Core, async): SQLite with WAL and PostgreSQL with asyncpg."""

from tidings.adapters.sql.apikeys import SqlApiKeyStore
from tidings.adapters.sql.engine import check, create_engine, is_postgres
from tidings.adapters.sql.events import SqlEventStore
from tidings.adapters.sql.jobs import SqlJobQueue
from tidings.adapters.sql.migrate import current, head, upgrade

__all__ = [
    "SqlApiKeyStore",
    "SqlEventStore",
    "SqlJobQueue",
    "check",
    "create_engine",
    "current",
    "head",
    "is_postgres",
    "upgrade",
]
