"""Outgoing webhook endpoints: management (secrets shown once, rotation with a grace period,
re-enable) and delivery of one event to one endpoint with the failure streak kept.

An endpoint is disabled when the receiver answers 410 Gone, or by the `DisablePolicy` after a
long enough streak of failed attempts; a disabled endpoint gets nothing (a policy outcome)
until it is enabled again, which also ends the streak.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from tidings.core.delivery.messages import DeliveryResult, WebhookMessage
from tidings.core.delivery.webhooks import DisablePolicy, check_url, encode_secret, secret_bytes
from tidings.core.retry import FailureClass
from tidings.errors import InvalidInput
from tidings.ports.clock import Clock
from tidings.ports.providers import Provider, WebhookEndpoint, WebhookEndpointStore
from tidings.services.providers.guard import GuardedProvider

log = logging.getLogger(__name__)

EVENT_TYPE = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")
MAX_EVENT_TYPES = 100
MAX_DESCRIPTION = 1000
SECRET_BYTES = 32


def new_secret() -> str:
    return encode_secret(secrets.token_bytes(SECRET_BYTES))


def check_event_types(event_types: tuple[str, ...]) -> tuple[str, ...]:
    if len(event_types) > MAX_EVENT_TYPES:
        raise InvalidInput(f"at most {MAX_EVENT_TYPES} event types", field="event_types")
    for t in event_types:
        if len(t) > 200 or not EVENT_TYPE.match(t):
            raise InvalidInput(
                f"event type {t!r} is not dot-separated [A-Za-z0-9_] words", field="event_types"
            )
    return tuple(dict.fromkeys(event_types))


def _check_description(description: str) -> str:
    if len(description) > MAX_DESCRIPTION:
        raise InvalidInput(f"at most {MAX_DESCRIPTION} characters", field="description")
    return description


class WebhookService:
    def __init__(
        self,
        store: WebhookEndpointStore,
        provider: Provider[WebhookMessage],
        clock: Clock,
        *,
        policy: DisablePolicy | None = None,
        allow_private: bool = True,
        rotation_grace: float = 24 * 3600.0,
    ) -> None:
        self.store = store
        self.provider = provider
        self._clock = clock
        self.policy = policy or DisablePolicy()
        self._allow_private = allow_private
        self.rotation_grace = rotation_grace

    async def create(
        self,
        url: str,
        *,
        description: str = "",
        event_types: tuple[str, ...] = (),
        secret: str | None = None,
    ) -> WebhookEndpoint:
        """A new endpoint; its secret is generated unless given (then it is checked)."""
        check_url(url, allow_private=self._allow_private)
        if secret is not None:
            secret_bytes(secret)
        now = self._clock.now()
        endpoint = WebhookEndpoint(
            id="ep_" + secrets.token_hex(12),
            url=url,
            description=_check_description(description),
            event_types=check_event_types(event_types),
            secret=secret or new_secret(),
            enabled=True,
            created_at=now,
            updated_at=now,
        )
        return await self.store.create(endpoint)

    async def get(self, endpoint_id: str) -> WebhookEndpoint:
        return await self.store.get(endpoint_id)

    async def page(self, after: str | None, limit: int) -> list[WebhookEndpoint]:
        return await self.store.page(after, limit)

    async def update(
        self,
        endpoint_id: str,
        *,
        url: str | None = None,
        description: str | None = None,
        event_types: tuple[str, ...] | None = None,
    ) -> WebhookEndpoint:
        if url is not None:
            check_url(url, allow_private=self._allow_private)
        before = await self.store.get(endpoint_id) if url is not None else None
        updated = await self.store.update(
            endpoint_id,
            url=url,
            description=None if description is None else _check_description(description),
            event_types=None if event_types is None else check_event_types(event_types),
            now=self._clock.now(),
        )
        if before is not None and before.url != updated.url and updated.enabled:
            # a new destination: the old one's failures neither open its circuit nor count
            # toward disabling it
            self._forget(endpoint_id)
            updated = await self.store.enable(endpoint_id, self._clock.now())
        return updated

    def _forget(self, endpoint_id: str) -> None:
        if isinstance(self.provider, GuardedProvider):
            self.provider.forget(endpoint_id)

    async def delete(self, endpoint_id: str) -> None:
        await self.store.delete(endpoint_id)

    async def rotate_secret(
        self, endpoint_id: str, *, grace: float | None = None, secret: str | None = None
    ) -> WebhookEndpoint:
        """A new current secret; the old one keeps signing for `grace` seconds (default
        `rotation_grace`; 0 stops it at once)."""
        if secret is not None:
            secret_bytes(secret)
        keep = self.rotation_grace if grace is None else grace
        if keep < 0:
            raise InvalidInput("grace is not negative", field="grace")
        now = self._clock.now()
        return await self.store.set_secret(
            endpoint_id, secret or new_secret(), now + keep if keep > 0 else None, now
        )

    async def enable(self, endpoint_id: str) -> WebhookEndpoint:
        """Enabled, its failure streak and its circuit cleared."""
        self._forget(endpoint_id)
        return await self.store.enable(endpoint_id, self._clock.now())

    async def disable(
        self, endpoint_id: str, reason: str = "disabled by an operator"
    ) -> WebhookEndpoint:
        return await self.store.disable(endpoint_id, reason, self._clock.now())

    async def endpoints_for(self, event_type: str, page_size: int = 500) -> list[WebhookEndpoint]:
        """The enabled endpoints that want `event_type`."""
        found: list[WebhookEndpoint] = []
        after: str | None = None
        while True:
            page = await self.store.page(after, page_size)
            found.extend(e for e in page if e.enabled and e.wants(event_type))
            if len(page) < page_size:
                return found
            after = page[-1].id

    def message(
        self,
        endpoint: WebhookEndpoint,
        event_type: str,
        data: Mapping[str, Any],
        *,
        message_id: str,
        occurred_at: float,
    ) -> WebhookMessage:
        """The message for one endpoint: the Standard Webhooks envelope `{"type",
        "timestamp", "data"}` (the same bytes for the same arguments), to be signed with
        the endpoint's secrets current now."""
        stamp = datetime.fromtimestamp(occurred_at, UTC).isoformat().replace("+00:00", "Z")
        body = orjson.dumps({"type": event_type, "timestamp": stamp, "data": data}).decode()
        return WebhookMessage(
            endpoint_id=endpoint.id,
            url=endpoint.url,
            event_type=event_type,
            body=body,
            message_id=message_id,
            secrets=endpoint.signing_secrets(self._clock.now()),
        )

    async def deliver(
        self,
        endpoint_id: str,
        event_type: str,
        data: Mapping[str, Any],
        *,
        message_id: str,
        occurred_at: float,
    ) -> DeliveryResult:
        """Send one event to one endpoint. The body is the Standard Webhooks envelope
        `{"type", "timestamp", "data"}`, the same bytes on every retry for the same arguments;
        `message_id` is the `webhook-id` (stable across retries)."""
        endpoint = await self.store.get(endpoint_id)
        if not endpoint.enabled:
            return DeliveryResult.failed(
                FailureClass.POLICY,
                f"endpoint disabled: {endpoint.disabled_reason}",
                attempted=False,
            )
        if not endpoint.wants(event_type):
            return DeliveryResult.failed(
                FailureClass.POLICY, f"endpoint does not take {event_type}", attempted=False
            )
        result = await self.provider.send(
            self.message(endpoint, event_type, data, message_id=message_id, occurred_at=occurred_at)
        )
        if not result.attempted:
            return result
        if result.delivered:
            if endpoint.failures:
                await self.store.record_success(endpoint.id)
            return result
        if result.disable:
            await self.store.disable(endpoint.id, result.reason, self._clock.now())
            log.warning("webhook endpoint disabled", extra={"endpoint": endpoint.id})
            return result
        after = await self.store.record_failure(
            endpoint.id,
            self._clock.now(),
            self.policy,
            f"persistent failure; last: {result.reason}",
        )
        if not after.enabled and endpoint.enabled:
            log.warning(
                "webhook endpoint disabled after persistent failure",
                extra={"endpoint": endpoint.id, "failures": after.failures},
            )
        return result
