"""Presence contact lists: who is told of a user's presence changes.

Revision ID: 0004_presence
Revises: 0003_webhooks
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_presence"
down_revision = "0003_webhooks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "presence_contacts",
        sa.Column("user_id", sa.String(200), primary_key=True),
        sa.Column("contact_id", sa.String(200), primary_key=True),
    )


def downgrade() -> None:
    op.drop_table("presence_contacts")
