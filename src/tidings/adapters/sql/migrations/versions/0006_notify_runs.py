"""The notification orchestrator: runs, step results, messages, the decision trail, digests
and API-defined workflows.

Revision ID: 0006_notify_runs
Revises: 0005_preferences
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_notify_runs"
down_revision = "0005_preferences"
branch_labels = None
depends_on = None


def _seq() -> sa.Column[int]:
    return sa.Column(
        "seq",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    )


def upgrade() -> None:
    op.create_table(
        "notify_runs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("workflow", sa.String(200), nullable=False),
        sa.Column("recipient", sa.String(200), nullable=False),
        sa.Column("lane", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(32)),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("wake_at", sa.Double),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
    )
    op.create_index("ix_notify_runs_event", "notify_runs", ["event_id"])
    op.create_table(
        "notify_steps",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("step_id", sa.String(64), primary_key=True),
        sa.Column("workflow", sa.String(200), nullable=False),
        sa.Column("recipient", sa.String(200), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("at", sa.Double, nullable=False),
        sa.Column("result", sa.JSON, nullable=False),
    )
    op.create_index(
        "ix_notify_steps_throttle", "notify_steps", ["workflow", "step_id", "recipient", "at"]
    )
    op.create_table(
        "notify_messages",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("recipient", sa.String(200), nullable=False),
        sa.Column("workflow", sa.String(200), nullable=False),
        sa.Column("step_id", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("template", sa.String(200)),
        sa.Column("template_version", sa.String(240), nullable=False),
        sa.Column("variant", sa.String(64)),
        sa.Column("locale", sa.String(35)),
        sa.Column("lane", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("statuses", sa.JSON, nullable=False),
        sa.Column("release_at", sa.Double, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("provider", sa.String(64)),
        sa.Column("provider_id", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
    )
    op.create_index("ix_notify_messages_event", "notify_messages", ["event_id"])
    op.create_index("ix_notify_messages_recipient", "notify_messages", ["recipient", "created_at"])
    op.create_index("ix_notify_messages_run", "notify_messages", ["run_id"])
    op.create_table(
        "notify_trail",
        _seq(),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("recipient", sa.String(200), nullable=False),
        sa.Column("workflow", sa.String(200), nullable=False),
        sa.Column("step_id", sa.String(64)),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("at", sa.Double, nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
    )
    op.create_index("ix_notify_trail_event", "notify_trail", ["event_id", "seq"])
    op.create_index("ix_notify_trail_recipient", "notify_trail", ["recipient", "seq"])
    op.create_table(
        "notify_digests",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("leader_run", sa.String(64), nullable=False),
        sa.Column("closed", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
    )
    op.create_table(
        "notify_digest_events",
        sa.Column("digest_id", sa.String(64), primary_key=True),
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(200)),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("at", sa.Double, nullable=False),
    )
    op.create_table(
        "notify_workflows",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("definition", sa.JSON, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "notify_workflows",
        "notify_digest_events",
        "notify_digests",
        "notify_trail",
        "notify_messages",
        "notify_steps",
        "notify_runs",
    ):
        op.drop_table(table)
