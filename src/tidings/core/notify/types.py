"""The notification vocabulary shared by definitions, decisions and the step runner."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import field
from typing import Any

from tidings.records import record


class Channel(enum.StrEnum):
    IN_APP = "in_app"
    EMAIL = "email"
    SMS = "sms"
    PUSH = "push"
    WEBPUSH = "webpush"
    WEBHOOK = "webhook"


class DeliveryStatus(enum.StrEnum):
    """The delivery axis of a message's status."""

    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    FAILED = "failed"
    NOT_SENT = "not_sent"


class Engagement(enum.StrEnum):
    """The engagement axis: what the recipient did with a message. Opening a push or a web
    push notification is reported as ``read``."""

    SEEN = "seen"
    READ = "read"
    CLICKED = "clicked"
    ARCHIVED = "archived"


@record
class Recipient:
    """What the decisions and conditions need to know about a subscriber, gathered by the
    service. ``push_tokens`` and ``webpush_subscriptions`` count valid registrations."""

    id: str
    email: str | None = None
    phone: str | None = None  # E.164
    locale: str | None = None
    timezone: str | None = None  # IANA name; None or unknown = UTC
    data: Mapping[str, Any] = field(default_factory=dict)
    push_tokens: int = 0
    webpush_subscriptions: int = 0
    known: bool = True  # False: no subscriber has this id (an event named it anyway)

    def context(self) -> dict[str, Any]:
        """The ``subscriber`` root of the condition context."""
        return {
            "id": self.id,
            "email": self.email,
            "phone": self.phone,
            "locale": self.locale,
            "timezone": self.timezone,
            "data": self.data,
        }


@record
class Trigger:
    """The event a run serves: ``at`` is when the run started (epoch seconds)."""

    event_id: str
    type: str
    payload: Mapping[str, Any]
    at: float
    actor: str | None = None
