"""Retention of notification history: old done runs are found by state and last write, and
a run's trail entries and digest-event rows by run id.

Revision ID: 0009_history_retention
Revises: 0008_segments
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0009_history_retention"
down_revision = "0008_segments"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_notify_runs_state_updated", "notify_runs", ["state", "updated_at"])
    op.create_index("ix_notify_trail_run", "notify_trail", ["run_id"])
    op.create_index("ix_notify_digest_events_run", "notify_digest_events", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_notify_digest_events_run", table_name="notify_digest_events")
    op.drop_index("ix_notify_trail_run", table_name="notify_trail")
    op.drop_index("ix_notify_runs_state_updated", table_name="notify_runs")
