"""Segments (named audiences) and campaigns to a segment, paced per channel.

Revision ID: 0008_segments
Revises: 0007_campaigns
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_segments"
down_revision = "0007_campaigns"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "segments",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("topic", sa.String(200)),
        sa.Column("filter", sa.JSON),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
    )
    with op.batch_alter_table("campaigns") as batch:
        batch.alter_column("topic", existing_type=sa.String(200), nullable=True)
        batch.alter_column("rate", existing_type=sa.Double, nullable=True)
        batch.add_column(sa.Column("segment", sa.String(200)))
        batch.add_column(sa.Column("filter", sa.JSON))
        batch.add_column(sa.Column("rates", sa.JSON))
        batch.add_column(sa.Column("messages", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("messages")
        batch.drop_column("rates")
        batch.drop_column("filter")
        batch.drop_column("segment")
        batch.alter_column("rate", existing_type=sa.Double, nullable=False)
        batch.alter_column("topic", existing_type=sa.String(200), nullable=False)
    op.drop_table("segments")
