"""Request and response bodies. Unknown fields are rejected (422 naming the field)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from tidings.core import subscribers as subscriber_rules
from tidings.core.notify.model import EVENT_TYPE_CHARS
from tidings.errors import InvalidInput
from tidings.types import EventRecord, Priority

Name = Annotated[str, Field(min_length=1, max_length=200, pattern=rf"^[{EVENT_TYPE_CHARS}]+$")]
ChannelName = Annotated[
    str, Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_.\-:@/=,#$]+$")
]


def _subscriber_id(value: str) -> str:
    """The subscriber id rule of the core, as a pydantic error on the item it refuses."""
    try:
        return subscriber_rules.subscriber_id(value)
    except InvalidInput as exc:
        raise ValueError(exc.message) from None


RecipientId = Annotated[
    str,
    Field(
        json_schema_extra={
            "minLength": 1,
            "maxLength": subscriber_rules.MAX_ID_LENGTH,
            "pattern": subscriber_rules.ID_PATTERN,
        }
    ),
    AfterValidator(_subscriber_id),
]
ActorId = Annotated[str, Field(min_length=1, max_length=200)]


class EventIn(BaseModel):
    """An authoritative business event."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        default=None,
        description="Your id for this event; used as the idempotency key when the "
        "Idempotency-Key header is absent.",
    )
    type: Name = Field(description="Event type, e.g. `order.shipped`; selects workflows.")
    actor: ActorId | None = Field(default=None, description="Who caused the event.")
    recipients: list[RecipientId] = Field(
        default_factory=list,
        max_length=100_000,  # the bound of `notify.max_recipients`, which decides (422)
        description="Subscriber ids (the rule of `PUT /v1/subscribers/{id}`); at most "
        "`notify.max_recipients` (default 1000).",
    )
    topic: Name | None = Field(default=None, description="Deliver to a topic's subscribers.")
    channels: list[ChannelName] = Field(
        default_factory=list, max_length=100, description="Real-time channels to publish to."
    )
    payload: dict[str, Any] = Field(default_factory=dict)
    priority: Priority = Priority.TRANSACTIONAL
    send_at: datetime | None = Field(
        default=None, description="Hold dispatch until this time (RFC 3339 with offset)."
    )

    @field_validator("send_at")
    @classmethod
    def _with_offset(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("needs a UTC offset, e.g. 2026-01-01T09:00:00Z")
        return value

    @field_validator("channels")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("must not repeat")
        return value

    @model_validator(mode="after")
    def _targets(self) -> EventIn:
        if not (self.recipients or self.topic or self.channels):
            raise ValueError("give at least one of recipients, topic or channels")
        return self


class EventCancelIn(BaseModel):
    """Cancel the event stored under an idempotency key."""

    model_config = ConfigDict(extra="forbid")

    idempotency_key: str = Field(
        min_length=1,
        max_length=255,
        description="The event's idempotency key: the `Idempotency-Key` header it was sent "
        "with, else its body `id`; the same value as `idempotency_key` in the event.",
    )


class OutcomeOut(BaseModel):
    kind: str
    target: str
    status: str
    detail: str
    at: datetime


class EventOut(BaseModel):
    id: str
    idempotency_key: str
    type: str
    actor: str | None
    recipients: list[str]
    topic: str | None
    channels: list[str]
    payload: dict[str, Any]
    priority: Priority
    send_at: datetime | None
    state: str
    created_at: datetime
    outcomes: list[OutcomeOut]

    @classmethod
    def of(cls, e: EventRecord) -> EventOut:
        return cls(
            id=e.id,
            idempotency_key=e.idempotency_key,
            type=e.type,
            actor=e.actor,
            recipients=list(e.recipients),
            topic=e.topic,
            channels=list(e.channels),
            payload=e.payload,
            priority=e.priority,
            send_at=_dt(e.send_at) if e.send_at is not None else None,
            state=e.state.value,
            created_at=_dt(e.created_at),
            outcomes=[
                OutcomeOut(
                    kind=o.kind, target=o.target, status=o.status, detail=o.detail, at=_dt(o.at)
                )
                for o in e.outcomes
            ],
        )


class EventAccepted(BaseModel):
    id: str
    idempotency_key: str
    state: str
    created_at: datetime
    href: str


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)
