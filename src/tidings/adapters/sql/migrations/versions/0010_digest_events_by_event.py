"""A cancelled event's rows leave the digests not closed yet: digest-event rows by event id.

Revision ID: 0010_digest_events_by_event
Revises: 0009_history_retention
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0010_digest_events_by_event"
down_revision = "0009_history_retention"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_notify_digest_events_event", "notify_digest_events", ["event_id"])


def downgrade() -> None:
    op.drop_index("ix_notify_digest_events_event", table_name="notify_digest_events")
