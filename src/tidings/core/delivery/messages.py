"""What the orchestrator hands a provider, and what it gets back."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import field
from typing import Any

from tidings.core.retry import FailureClass
from tidings.records import record


class DeliveryChannel(enum.StrEnum):
    EMAIL = "email"
    WEBHOOK = "webhook"


@record
class EmailMessage:
    """One email to one recipient. `message_id` (without angle brackets or domain) makes the
    Message-ID header deterministic, so a retried delivery carries the same id; without it the
    provider makes one."""

    sender: str
    to: str
    subject: str
    text: str
    html: str | None = None
    reply_to: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    message_id: str | None = None

    channel = DeliveryChannel.EMAIL


@record
class WebhookMessage:
    """One signed POST to one endpoint. `message_id` is the Standard Webhooks `webhook-id`: the
    same on every retry, so the receiver can deduplicate. `secrets` are the endpoint's signing
    secrets (`whsec_...`), newest first; each signs the request (rotation without downtime).
    `body` is the exact JSON text sent and signed."""

    endpoint_id: str
    url: str
    event_type: str
    body: str
    message_id: str
    secrets: tuple[str, ...]

    channel = DeliveryChannel.WEBHOOK


class Bounce(enum.StrEnum):
    """What a refused email says about the address (suppression decides from this)."""

    NONE = "none"
    SOFT = "soft"  # mailbox full, temporarily disabled: the address may work later
    HARD = "hard"  # no such mailbox or domain: suppress the address


@record
class DeliveryResult:
    """The outcome of one hand-off. `failure` is None when the provider accepted the message.

    - `retry_after`: seconds the provider (or the guard) asks to wait, for rate-limited and
      short-circuited failures.
    - `attempted`: False when the guard answered without calling the provider (circuit open,
      local rate limit, endpoint disabled); the orchestrator need not count such an attempt.
    - `paced`: the guard's rate limit held the message back: no attempt was made and none
      is used up; `retry_after` is the slot it keeps for it.
    - `provider_message_id`: the provider's id of the accepted message (Message-ID, webhook-id).
    - `status`: the provider's answer code (HTTP status, SMTP reply code) when there was one.
    - `disable`: the destination asked never to be called again (HTTP 410 Gone).
    """

    failure: FailureClass | None = None
    reason: str = ""
    retry_after: float | None = None
    provider_message_id: str | None = None
    status: int | None = None
    attempted: bool = True
    paced: bool = False
    bounce: Bounce = Bounce.NONE
    disable: bool = False
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def delivered(self) -> bool:
        return self.failure is None

    @property
    def provider_fault(self) -> bool:
        """Whether this outcome says the provider is unwell (counts against its breaker).
        A permanent refusal of one message or address says the provider is up."""
        return self.attempted and self.failure in (
            FailureClass.TRANSIENT,
            FailureClass.RATE_LIMITED,
        )

    @classmethod
    def ok(
        cls, provider_message_id: str | None = None, status: int | None = None
    ) -> DeliveryResult:
        return cls(provider_message_id=provider_message_id, status=status)

    @classmethod
    def failed(
        cls,
        failure: FailureClass,
        reason: str,
        *,
        retry_after: float | None = None,
        status: int | None = None,
        attempted: bool = True,
        paced: bool = False,
        bounce: Bounce = Bounce.NONE,
        disable: bool = False,
    ) -> DeliveryResult:
        return cls(
            failure=failure,
            reason=reason,
            retry_after=retry_after,
            status=status,
            attempted=attempted,
            paced=paced,
            bounce=bounce,
            disable=disable,
        )
