"""The schema, as SQLAlchemy Core tables. Times are epoch seconds from the injected clock."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect

metadata = MetaData()


class Epoch(TypeDecorator[float]):
    """Epoch seconds as a double, always read back as `float`: SQLite stores integral REALs as
    integers and its RETURNING clause hands them back as `int`."""

    impl = Double
    cache_ok = True

    def process_result_value(self, value: Any | None, dialect: Dialect) -> float | None:
        return None if value is None else float(value)


events = Table(
    "events",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("type", String(200), nullable=False),
    Column("idempotency_key", String(255), nullable=False, unique=True),
    Column("body_hash", String(64), nullable=False),
    Column("actor", String(200)),
    Column("recipients", JSON, nullable=False),
    Column("topic", String(200)),
    Column("channels", JSON, nullable=False),
    Column("payload", JSON, nullable=False),
    Column("priority", String(16), nullable=False),
    Column("send_at", Epoch),
    Column("state", String(16), nullable=False),
    Column("created_at", Epoch, nullable=False),
    Index("ix_events_state_created", "state", "created_at"),
)

event_outcomes = Table(
    "event_outcomes",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("event_id", String(64), ForeignKey("events.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("target", String(255), nullable=False),
    Column("status", String(32), nullable=False),
    Column("detail", Text, nullable=False),
    Column("at", Epoch, nullable=False),
    Index("ix_event_outcomes_event", "event_id", "id"),
)

jobs = Table(
    "jobs",
    metadata,
    Column(
        "seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("id", String(64), nullable=False, unique=True),
    Column("kind", String(100), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("lane", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("run_at", Epoch, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("dedupe_key", String(255), unique=True),
    Column("lease_token", String(64)),
    Column("locked_until", Epoch),
    Column("last_error", Text),
    Column("created_at", Epoch, nullable=False),
    Index("ix_jobs_claim", "state", "lane", "run_at"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("prefix", String(32), nullable=False, unique=True),
    Column("secret_hash", String(128), nullable=False),
    Column("scopes", JSON, nullable=False),
    Column("created_at", Epoch, nullable=False),
    Column("revoked_at", Epoch),
)

user_presence = Table(
    "user_presence",
    metadata,
    Column("user_id", String(200), primary_key=True),
    Column("last_seen", Epoch),
    Column("hide_online", Boolean, nullable=False, default=False),
    Column("hide_last_seen", Boolean, nullable=False, default=False),
)

# A user's contact list as the application gives it: `contact_id` is told of `user_id`'s
# presence changes.
presence_contacts = Table(
    "presence_contacts",
    metadata,
    Column("user_id", String(200), primary_key=True),
    Column("contact_id", String(200), primary_key=True),
)

templates = Table(
    "templates",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("channel", String(20), nullable=False),
    Column("published_version", Integer),
    Column("last_version", Integer, nullable=False, default=0),
    Column("created_at", Epoch, nullable=False),
)

template_versions = Table(
    "template_versions",
    metadata,
    Column(
        "template_id", String(200), ForeignKey("templates.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("version", Integer, primary_key=True),
    Column("state", String(16), nullable=False),
    Column("body", JSON, nullable=False),
    Column("created_at", Epoch, nullable=False),
    Column("published_at", Epoch),
)

schedules = Table(
    "schedules",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("subscriber", String(200), nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("recurrence", JSON, nullable=False),
    Column("event_type", String(200), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("state", String(16), nullable=False),
    Column("next_at", Epoch),
    Column("last_fired_at", Epoch),
    Column("fired", Integer, nullable=False, default=0),
    Column("created_at", Epoch, nullable=False),
    Index("ix_schedules_subscriber", "subscriber"),
)

subscribers = Table(
    "subscribers",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("email", String(320)),
    Column("phone", String(32)),
    Column("locale", String(35)),
    Column("timezone", String(64)),
    Column("data", JSON, nullable=False),
    Column("created_at", Epoch, nullable=False),
    Column("updated_at", Epoch, nullable=False),
)

subscriber_devices = Table(
    "subscriber_devices",
    metadata,
    Column("token", String(512), primary_key=True),
    Column("platform", String(8), nullable=False),
    Column(
        "subscriber_id",
        String(200),
        ForeignKey("subscribers.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("created_at", Epoch, nullable=False),
    Index("ix_subscriber_devices_subscriber", "subscriber_id"),
)

subscriber_webpush = Table(
    "subscriber_webpush",
    metadata,
    Column("endpoint", String(1024), primary_key=True),
    Column("p256dh", String(256), nullable=False),
    Column("auth", String(64), nullable=False),
    Column(
        "subscriber_id",
        String(200),
        ForeignKey("subscribers.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("created_at", Epoch, nullable=False),
    Index("ix_subscriber_webpush_subscriber", "subscriber_id"),
)

topics = Table(
    "topics",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("created_at", Epoch, nullable=False),
)

topic_members = Table(
    "topic_members",
    metadata,
    Column(
        "topic_key", String(200), ForeignKey("topics.key", ondelete="CASCADE"), primary_key=True
    ),
    Column(
        "subscriber_id",
        String(200),
        ForeignKey("subscribers.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("created_at", Epoch, nullable=False),
    Index("ix_topic_members_subscriber", "subscriber_id"),
)

# A subscriber's notification preferences: one JSON document (core/notify/preferences.py).
notify_preferences = Table(
    "notify_preferences",
    metadata,
    Column("subscriber", String(200), primary_key=True),
    Column("data", JSON, nullable=False),
    Column("updated_at", Epoch, nullable=False),
)

# Addresses that must get nothing on a channel (hard bounces, unsubscribes, invalid tokens).
notify_suppressions = Table(
    "notify_suppressions",
    metadata,
    Column("channel", String(16), primary_key=True),
    Column("address", String(1024), primary_key=True),
    Column("reason", String(32), nullable=False),
    Column("detail", Text, nullable=False),
    Column("created_at", Epoch, nullable=False),
)

inbox_items = Table(
    "inbox_items",
    metadata,
    Column(
        "seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("id", String(64), nullable=False, unique=True),
    Column("subscriber_id", String(200), nullable=False),
    Column("event_id", String(64)),
    Column("workflow", String(200)),
    Column("step", String(100)),
    Column("title", Text, nullable=False),
    Column("body", Text, nullable=False),
    Column("action_url", Text),
    Column("data", JSON, nullable=False),
    Column("created_at", Epoch, nullable=False),
    Column("seen_at", Epoch),
    Column("read_at", Epoch),
    Column("archived_at", Epoch),
    UniqueConstraint("subscriber_id", "event_id", "step", name="uq_inbox_items_delivery"),
    Index("ix_inbox_items_feed", "subscriber_id", "seq"),
)

webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("url", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("event_types", JSON, nullable=False),
    Column("secret", String(128), nullable=False),
    Column("previous_secret", String(128)),
    Column("previous_secret_expires_at", Epoch),
    Column("enabled", Boolean, nullable=False),
    Column("disabled_reason", Text),
    Column("disabled_at", Epoch),
    Column("failures", Integer, nullable=False),
    Column("failing_since", Epoch),
    Column("created_at", Epoch, nullable=False),
    Column("updated_at", Epoch, nullable=False),
)

# -- the notification orchestrator -----------------------------------------------------------

notify_runs = Table(
    "notify_runs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("event_id", String(64), nullable=False),
    Column("workflow", String(200), nullable=False),
    Column("recipient", String(200), nullable=False),
    Column("lane", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("outcome", String(32)),
    Column("reason", Text, nullable=False),
    Column("wake_at", Epoch),
    Column("created_at", Epoch, nullable=False),
    Column("updated_at", Epoch, nullable=False),
    Index("ix_notify_runs_event", "event_id"),
    Index("ix_notify_runs_state_updated", "state", "updated_at"),  # retention: old done runs
)

notify_steps = Table(
    "notify_steps",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("step_id", String(64), primary_key=True),
    Column("workflow", String(200), nullable=False),
    Column("recipient", String(200), nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("reason", Text, nullable=False),
    Column("at", Epoch, nullable=False),
    Column("result", JSON, nullable=False),
    Index("ix_notify_steps_throttle", "workflow", "step_id", "recipient", "at"),
)

notify_messages = Table(
    "notify_messages",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("run_id", String(64), nullable=False),
    Column("event_id", String(64), nullable=False),
    Column("recipient", String(200), nullable=False),
    Column("workflow", String(200), nullable=False),
    Column("step_id", String(64), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("template", String(200)),
    Column("template_version", String(240), nullable=False),
    Column("variant", String(64)),
    Column("locale", String(35)),
    Column("lane", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("statuses", JSON, nullable=False),
    Column("release_at", Epoch, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("provider", String(64)),
    Column("provider_id", Text),
    Column("error", Text),
    Column("created_at", Epoch, nullable=False),
    Column("updated_at", Epoch, nullable=False),
    Index("ix_notify_messages_event", "event_id"),
    Index("ix_notify_messages_recipient", "recipient", "created_at"),
    Index("ix_notify_messages_run", "run_id"),
    # PostgreSQL: half of each page left free for status updates (HOT: no index entries)
    postgresql_with={"fillfactor": 50},
)

notify_trail = Table(
    "notify_trail",
    metadata,
    Column(
        "seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("run_id", String(64), nullable=False),
    Column("event_id", String(64), nullable=False),
    Column("recipient", String(200), nullable=False),
    Column("workflow", String(200), nullable=False),
    Column("step_id", String(64)),
    Column("kind", String(16), nullable=False),
    Column("at", Epoch, nullable=False),
    Column("data", JSON, nullable=False),
    Index("ix_notify_trail_event", "event_id", "seq"),
    Index("ix_notify_trail_recipient", "recipient", "seq"),
    Index("ix_notify_trail_run", "run_id"),  # retention deletes a run's entries
)

notify_digests = Table(
    "notify_digests",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("leader_run", String(64), nullable=False),
    Column("closed", Boolean, nullable=False),
    Column("created_at", Epoch, nullable=False),
)

notify_digest_events = Table(
    "notify_digest_events",
    metadata,
    Column("digest_id", String(64), primary_key=True),
    Column("run_id", String(64), primary_key=True),
    Column("event_id", String(64), nullable=False),
    Column("actor", String(200)),
    Column("payload", JSON, nullable=False),
    Column("at", Epoch, nullable=False),
    Index("ix_notify_digest_events_run", "run_id"),  # retention deletes a run's rows
    Index("ix_notify_digest_events_event", "event_id"),  # a cancelled event leaves digests
)

notify_workflows = Table(
    "notify_workflows",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("definition", JSON, nullable=False),
    Column("revision", Integer, nullable=False),
    Column("updated_at", Epoch, nullable=False),
)

campaigns = Table(
    "campaigns",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("workflow", String(200), nullable=False),
    Column("topic", String(200)),
    Column("payload", JSON, nullable=False),
    Column("rate", Double),
    Column("state", String(16), nullable=False),
    Column("event_id", String(64), nullable=False),
    Column("start_at", Epoch),
    Column("total", Integer),
    Column("cursor", String(200)),
    Column("enqueued", Integer, nullable=False),
    Column("ticks", Integer, nullable=False),
    Column("resumes", Integer, nullable=False),
    Column("started_at", Epoch),
    Column("finished_at", Epoch),
    Column("created_at", Epoch, nullable=False),
    Column("updated_at", Epoch, nullable=False),
    Column("segment", String(200)),
    Column("filter", JSON),
    Column("rates", JSON),
    Column("messages", JSON),
)
segments = Table(
    "segments",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("topic", String(200)),
    Column("filter", JSON),
    Column("created_at", Epoch, nullable=False),
    Column("updated_at", Epoch, nullable=False),
)
