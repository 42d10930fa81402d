"""Subscribers (devices, web-push subscriptions), topics and the in-app inbox.

Revision ID: 0002_notify
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_notify"
down_revision = "0004"
branch_labels = None
depends_on = None

BIGID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def _subscriber_fk() -> sa.Column[str]:
    return sa.Column(
        "subscriber_id",
        sa.String(200),
        sa.ForeignKey("subscribers.id", ondelete="CASCADE"),
        nullable=False,
    )


def upgrade() -> None:
    op.create_table(
        "subscribers",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("email", sa.String(320)),
        sa.Column("phone", sa.String(32)),
        sa.Column("locale", sa.String(35)),
        sa.Column("timezone", sa.String(64)),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
    )
    op.create_table(
        "subscriber_devices",
        sa.Column("token", sa.String(512), primary_key=True),
        sa.Column("platform", sa.String(8), nullable=False),
        _subscriber_fk(),
        sa.Column("created_at", sa.Double, nullable=False),
    )
    op.create_index("ix_subscriber_devices_subscriber", "subscriber_devices", ["subscriber_id"])
    op.create_table(
        "subscriber_webpush",
        sa.Column("endpoint", sa.String(1024), primary_key=True),
        sa.Column("p256dh", sa.String(256), nullable=False),
        sa.Column("auth", sa.String(64), nullable=False),
        _subscriber_fk(),
        sa.Column("created_at", sa.Double, nullable=False),
    )
    op.create_index("ix_subscriber_webpush_subscriber", "subscriber_webpush", ["subscriber_id"])
    op.create_table(
        "topics",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
    )
    op.create_table(
        "topic_members",
        sa.Column(
            "topic_key",
            sa.String(200),
            sa.ForeignKey("topics.key", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "subscriber_id",
            sa.String(200),
            sa.ForeignKey("subscribers.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("created_at", sa.Double, nullable=False),
    )
    op.create_index("ix_topic_members_subscriber", "topic_members", ["subscriber_id"])
    op.create_table(
        "inbox_items",
        sa.Column("seq", BIGID, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("subscriber_id", sa.String(200), nullable=False),
        sa.Column("event_id", sa.String(64)),
        sa.Column("workflow", sa.String(200)),
        sa.Column("step", sa.String(100)),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("action_url", sa.Text),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("seen_at", sa.Double),
        sa.Column("read_at", sa.Double),
        sa.Column("archived_at", sa.Double),
        sa.UniqueConstraint("subscriber_id", "event_id", "step", name="uq_inbox_items_delivery"),
    )
    op.create_index("ix_inbox_items_feed", "inbox_items", ["subscriber_id", "seq"])


def downgrade() -> None:
    op.drop_index("ix_inbox_items_feed", "inbox_items")
    op.drop_table("inbox_items")
    op.drop_index("ix_topic_members_subscriber", "topic_members")
    op.drop_table("topic_members")
    op.drop_table("topics")
    op.drop_index("ix_subscriber_webpush_subscriber", "subscriber_webpush")
    op.drop_table("subscriber_webpush")
    op.drop_index("ix_subscriber_devices_subscriber", "subscriber_devices")
    op.drop_table("subscriber_devices")
    op.drop_table("subscribers")
