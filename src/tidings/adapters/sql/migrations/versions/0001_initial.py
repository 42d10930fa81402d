"""Events, outcomes, jobs and API keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BIGID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("type", sa.String(200), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=False, unique=True),
        sa.Column("body_hash", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(200)),
        sa.Column("recipients", sa.JSON, nullable=False),
        sa.Column("topic", sa.String(200)),
        sa.Column("channels", sa.JSON, nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("priority", sa.String(16), nullable=False),
        sa.Column("send_at", sa.Double),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
    )
    op.create_index("ix_events_state_created", "events", ["state", "created_at"])
    op.create_table(
        "event_outcomes",
        sa.Column("id", BIGID, primary_key=True, autoincrement=True),
        sa.Column(
            "event_id",
            sa.String(64),
            sa.ForeignKey("events.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("target", sa.String(255), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("at", sa.Double, nullable=False),
    )
    op.create_index("ix_event_outcomes_event", "event_outcomes", ["event_id", "id"])
    op.create_table(
        "jobs",
        sa.Column("seq", BIGID, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("kind", sa.String(100), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("lane", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("run_at", sa.Double, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("dedupe_key", sa.String(255), unique=True),
        sa.Column("lease_token", sa.String(64)),
        sa.Column("locked_until", sa.Double),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", sa.Double, nullable=False),
    )
    op.create_index("ix_jobs_claim", "jobs", ["state", "lane", "run_at"])
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("prefix", sa.String(32), nullable=False, unique=True),
        sa.Column("secret_hash", sa.String(128), nullable=False),
        sa.Column("scopes", sa.JSON, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("revoked_at", sa.Double),
    )


def downgrade() -> None:
    op.drop_table("api_keys")
    op.drop_index("ix_jobs_claim", "jobs")
    op.drop_table("jobs")
    op.drop_index("ix_event_outcomes_event", "event_outcomes")
    op.drop_table("event_outcomes")
    op.drop_index("ix_events_state_created", "events")
    op.drop_table("events")
