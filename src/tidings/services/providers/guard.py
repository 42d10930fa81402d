"""Providers behind a circuit breaker and a rate limit, so an outage causes no retry storm.

A `GuardedProvider` keeps one breaker and one token bucket per key: the provider itself for
SMTP, the endpoint for webhooks (one dead endpoint must not stop the others). When the
breaker is open, or the bucket is empty, `send` answers at once without calling the provider:
a rate-limited result with `attempted=False` and `retry_after` set to the rest of the
cool-down (or the time until a token), so the job queue parks the job until then instead of
hammering a provider that is down. Only transient and rate-limited outcomes count against the
breaker; a permanent refusal of one message says the provider is up.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from tidings.core.delivery.breaker import BreakerConfig, BreakerState, CircuitBreaker
from tidings.core.delivery.messages import DeliveryChannel, DeliveryResult
from tidings.core.delivery.ratelimit import TokenBucket
from tidings.core.retry import FailureClass
from tidings.ports.clock import Clock
from tidings.ports.providers import Provider
from tidings.records import record

log = logging.getLogger(__name__)

M = TypeVar("M")


@record
class RateLimit:
    rate: float  # messages a second
    burst: float  # at most this many at once


@dataclass(slots=True)
class _Guard:
    breaker: CircuitBreaker
    bucket: TokenBucket | None


class GuardedProvider(Generic[M]):
    def __init__(
        self,
        provider: Provider[M],
        clock: Clock,
        *,
        breaker: BreakerConfig | None = None,
        rate_limit: RateLimit | None = None,
        key: Callable[[M], str] | None = None,
        max_keys: int = 10_000,
    ) -> None:
        self.provider = provider
        self._clock = clock
        self._breaker_config = breaker or BreakerConfig()
        self._rate_limit = rate_limit
        self._key = key
        self._max_keys = max_keys
        self._guards: OrderedDict[str, _Guard] = OrderedDict()
        self.short_circuited = 0
        self.throttled = 0

    @property
    def channel(self) -> DeliveryChannel:
        return self.provider.channel

    @property
    def name(self) -> str:
        return self.provider.name

    def _guard(self, key: str, now: float) -> _Guard:
        guard = self._guards.get(key)
        if guard is None:
            bucket = None
            if self._rate_limit is not None:
                bucket = TokenBucket(self._rate_limit.rate, self._rate_limit.burst, now)
            guard = self._guards[key] = _Guard(CircuitBreaker(self._breaker_config), bucket)
            if len(self._guards) > self._max_keys:  # bounded: forget the least recently used
                self._guards.popitem(last=False)
        else:
            self._guards.move_to_end(key)
        return guard

    def forget(self, key: str) -> None:
        """Drop `key`'s breaker and bucket: its destination changed (a webhook endpoint's
        URL) or an operator vouched for it (enabled again), so its past failures say
        nothing about the next attempt."""
        self._guards.pop(key, None)

    def state(self, key: str | None = None) -> BreakerState:
        guard = self._guards.get(key or self.name)
        if guard is None:
            return BreakerState.CLOSED
        return guard.breaker.state(self._clock.monotonic())

    async def send(self, message: M) -> DeliveryResult:
        key = self._key(message) if self._key is not None else self.name
        now = self._clock.monotonic()
        guard = self._guard(key, now)
        breaker = guard.breaker
        if breaker.state(now) is BreakerState.OPEN:
            return self._short_circuit(key, breaker.retry_after(now))
        if guard.bucket is not None:
            wait = guard.bucket.slot(now)
            if wait > 0:
                self.throttled += 1
                return DeliveryResult.failed(
                    FailureClass.RATE_LIMITED,
                    f"{self.name}: local rate limit",
                    retry_after=wait,
                    attempted=False,
                    paced=True,
                )
        if not breaker.admit(now):
            return self._short_circuit(key, breaker.retry_after(now))
        before = breaker.opened
        try:
            result = await self.provider.send(message)
        except BaseException:
            breaker.record(self._clock.monotonic(), ok=False)
            raise
        breaker.record(self._clock.monotonic(), ok=not result.provider_fault)
        if breaker.opened != before:
            log.warning(
                "provider circuit opened",
                extra={"provider": self.name, "key": key, "reason": result.reason},
            )
        return result

    def _short_circuit(self, key: str, retry_after: float) -> DeliveryResult:
        self.short_circuited += 1
        return DeliveryResult.failed(
            FailureClass.RATE_LIMITED,
            f"{self.name}: circuit open for {key}",
            retry_after=retry_after,
            attempted=False,
        )

    async def aclose(self) -> None:
        await self.provider.aclose()


class ProviderRegistry:
    """The guarded provider of each channel; `send` picks it by the message's channel."""

    def __init__(self, providers: Iterable[GuardedProvider[Any]] = ()) -> None:
        self._by_channel: dict[DeliveryChannel, GuardedProvider[Any]] = {}
        for p in providers:
            self.register(p)

    def register(self, provider: GuardedProvider[Any]) -> None:
        if provider.channel in self._by_channel:
            raise ValueError(f"a provider for {provider.channel} is registered already")
        self._by_channel[provider.channel] = provider

    def get(self, channel: DeliveryChannel) -> GuardedProvider[Any] | None:
        return self._by_channel.get(channel)

    def channels(self) -> list[DeliveryChannel]:
        return sorted(self._by_channel)

    async def send(self, message: Any) -> DeliveryResult:
        channel: DeliveryChannel = message.channel
        provider = self._by_channel.get(channel)
        if provider is None:
            return DeliveryResult.failed(
                FailureClass.POLICY, f"no provider configured for {channel}", attempted=False
            )
        return await provider.send(message)

    async def aclose(self) -> None:
        for provider in self._by_channel.values():
            await provider.aclose()
