"""User presence records: last seen and privacy.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "user_presence",
        sa.Column("user_id", sa.String(200), primary_key=True),
        sa.Column("last_seen", sa.Double),
        sa.Column("hide_online", sa.Boolean, nullable=False),
        sa.Column("hide_last_seen", sa.Boolean, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("user_presence")
