"""Ports of the delivery layer: channel providers and the webhook endpoint store."""

from __future__ import annotations

from typing import Protocol, TypeVar

from tidings.core.delivery.messages import DeliveryChannel, DeliveryResult
from tidings.core.delivery.webhooks import DisablePolicy
from tidings.records import record

M_contra = TypeVar("M_contra", contravariant=True)


class Provider(Protocol[M_contra]):
    """Hands one message of its channel to a provider (an SMTP server, an HTTP endpoint ...).

    Contract:
    - `send` never raises for a delivery failure: every refusal, timeout or network error
      comes back as a `DeliveryResult` with its failure class (transient, rate-limited with
      the provider's `Retry-After`, permanent, policy). A message that cannot be sent as it
      is (a bad address, a header that would inject another) is a permanent failure too.
    - `send` is safe to call concurrently; a provider bounds its own connections.
    - Delivery is at least once: after a timeout the provider may have accepted the message,
      so messages carry stable ids (Message-ID, webhook-id) for receivers to deduplicate.
    - `aclose` releases connections; `send` after `aclose` is not allowed.
    """

    @property
    def channel(self) -> DeliveryChannel: ...

    @property
    def name(self) -> str: ...

    async def send(self, message: M_contra) -> DeliveryResult: ...

    async def aclose(self) -> None: ...


@record
class WebhookEndpoint:
    id: str
    url: str
    description: str
    event_types: tuple[str, ...]  # empty: every event type
    secret: str  # whsec_...
    enabled: bool
    created_at: float
    updated_at: float
    previous_secret: str | None = None  # still signs until previous_secret_expires_at
    previous_secret_expires_at: float | None = None
    disabled_reason: str | None = None
    disabled_at: float | None = None
    failures: int = 0  # failed attempts in a row
    failing_since: float | None = None  # first failure of the current streak

    def wants(self, event_type: str) -> bool:
        return not self.event_types or event_type in self.event_types

    def signing_secrets(self, now: float) -> tuple[str, ...]:
        """The secrets that sign a request sent at `now`, newest first."""
        if (
            self.previous_secret is not None
            and self.previous_secret_expires_at is not None
            and now < self.previous_secret_expires_at
        ):
            return (self.secret, self.previous_secret)
        return (self.secret,)


class WebhookEndpointStore(Protocol):
    """Contract:
    - `create` refuses an existing id with `Conflict`; unknown ids raise `NotFound` everywhere.
    - `page` lists endpoints in id order, those after `after`, at most `limit`.
    - `record_failure` is atomic: it adds one to the streak (starting it at `now` if none runs)
      and, when `policy` says so, disables the endpoint with `reason` in the same write;
      concurrent failures each count once. It returns the endpoint as written.
    - `record_success` ends the streak (failures 0, failing_since None).
    - `disable` keeps the first reason of an endpoint already disabled; `enable` clears the
      reason and the streak.
    """

    async def create(self, endpoint: WebhookEndpoint) -> WebhookEndpoint: ...

    async def get(self, endpoint_id: str) -> WebhookEndpoint: ...

    async def page(self, after: str | None, limit: int) -> list[WebhookEndpoint]: ...

    async def update(
        self,
        endpoint_id: str,
        *,
        url: str | None = None,
        description: str | None = None,
        event_types: tuple[str, ...] | None = None,
        now: float,
    ) -> WebhookEndpoint: ...

    async def delete(self, endpoint_id: str) -> None: ...

    async def set_secret(
        self, endpoint_id: str, secret: str, previous_expires_at: float | None, now: float
    ) -> WebhookEndpoint:
        """Make `secret` current; the old one keeps signing until `previous_expires_at`
        (None: it stops at once)."""
        ...

    async def record_failure(
        self, endpoint_id: str, now: float, policy: DisablePolicy, reason: str
    ) -> WebhookEndpoint: ...

    async def record_success(self, endpoint_id: str) -> None: ...

    async def disable(self, endpoint_id: str, reason: str, now: float) -> WebhookEndpoint: ...

    async def enable(self, endpoint_id: str, now: float) -> WebhookEndpoint: ...
