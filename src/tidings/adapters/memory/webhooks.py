"""In-process webhook endpoint store (reference for the contract suite)."""

from __future__ import annotations

import dataclasses

from tidings.core.delivery.webhooks import DisablePolicy
from tidings.errors import Conflict, NotFound
from tidings.ports.providers import WebhookEndpoint


class MemoryWebhookEndpointStore:
    def __init__(self) -> None:
        self._endpoints: dict[str, WebhookEndpoint] = {}

    def _get(self, endpoint_id: str) -> WebhookEndpoint:
        found = self._endpoints.get(endpoint_id)
        if found is None:
            raise NotFound(f"webhook endpoint {endpoint_id} not found")
        return found

    def _put(self, endpoint: WebhookEndpoint) -> WebhookEndpoint:
        self._endpoints[endpoint.id] = endpoint
        return endpoint

    async def create(self, endpoint: WebhookEndpoint) -> WebhookEndpoint:
        if endpoint.id in self._endpoints:
            raise Conflict(f"webhook endpoint {endpoint.id} exists", field="id")
        return self._put(endpoint)

    async def get(self, endpoint_id: str) -> WebhookEndpoint:
        return self._get(endpoint_id)

    async def page(self, after: str | None, limit: int) -> list[WebhookEndpoint]:
        ids = sorted(i for i in self._endpoints if after is None or i > after)
        return [self._endpoints[i] for i in ids[:limit]]

    async def update(
        self,
        endpoint_id: str,
        *,
        url: str | None = None,
        description: str | None = None,
        event_types: tuple[str, ...] | None = None,
        now: float,
    ) -> WebhookEndpoint:
        e = self._get(endpoint_id)
        return self._put(
            dataclasses.replace(
                e,
                url=e.url if url is None else url,
                description=e.description if description is None else description,
                event_types=e.event_types if event_types is None else event_types,
                updated_at=now,
            )
        )

    async def delete(self, endpoint_id: str) -> None:
        self._get(endpoint_id)
        del self._endpoints[endpoint_id]

    async def set_secret(
        self, endpoint_id: str, secret: str, previous_expires_at: float | None, now: float
    ) -> WebhookEndpoint:
        e = self._get(endpoint_id)
        keep = previous_expires_at is not None
        return self._put(
            dataclasses.replace(
                e,
                secret=secret,
                previous_secret=e.secret if keep else None,
                previous_secret_expires_at=previous_expires_at,
                updated_at=now,
            )
        )

    async def record_failure(
        self, endpoint_id: str, now: float, policy: DisablePolicy, reason: str
    ) -> WebhookEndpoint:
        e = self._get(endpoint_id)
        failures = e.failures + 1
        since = now if e.failing_since is None else e.failing_since
        e = dataclasses.replace(e, failures=failures, failing_since=since)
        if e.enabled and policy.should_disable(failures, since, now):
            e = dataclasses.replace(e, enabled=False, disabled_reason=reason, disabled_at=now)
        return self._put(e)

    async def record_success(self, endpoint_id: str) -> None:
        e = self._get(endpoint_id)
        self._put(dataclasses.replace(e, failures=0, failing_since=None))

    async def disable(self, endpoint_id: str, reason: str, now: float) -> WebhookEndpoint:
        e = self._get(endpoint_id)
        if not e.enabled:
            return e
        return self._put(
            dataclasses.replace(
                e, enabled=False, disabled_reason=reason, disabled_at=now, updated_at=now
            )
        )

    async def enable(self, endpoint_id: str, now: float) -> WebhookEndpoint:
        e = self._get(endpoint_id)
        return self._put(
            dataclasses.replace(
                e,
                enabled=True,
                disabled_reason=None,
                disabled_at=None,
                failures=0,
                failing_since=None,
                updated_at=now,
            )
        )
