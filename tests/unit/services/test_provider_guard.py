"""The guard's rate limit and the registry, around a provider that records its calls."""

from __future__ import annotations

from dataclasses import dataclass, field

from tidings.adapters.clock import ManualClock
from tidings.core.delivery.breaker import BreakerConfig
from tidings.core.delivery.messages import DeliveryChannel, DeliveryResult, EmailMessage
from tidings.core.retry import FailureClass
from tidings.services.providers import GuardedProvider, ProviderRegistry, RateLimit


@dataclass
class Recording:
    results: list[DeliveryResult] = field(default_factory=list)
    sent: list[EmailMessage] = field(default_factory=list)
    closed: bool = False

    @property
    def channel(self) -> DeliveryChannel:
        return DeliveryChannel.EMAIL

    @property
    def name(self) -> str:
        return "recording"

    async def send(self, message: EmailMessage) -> DeliveryResult:
        self.sent.append(message)
        return self.results.pop(0) if self.results else DeliveryResult.ok("id")

    async def aclose(self) -> None:
        self.closed = True


MAIL = EmailMessage(sender="a@example.com", to="b@example.com", subject="s", text="t")


async def test_rate_limit_answers_without_calling_and_names_the_wait() -> None:
    clock = ManualClock()
    p = Recording()
    guard = GuardedProvider(p, clock, rate_limit=RateLimit(rate=2.0, burst=2))
    assert (await guard.send(MAIL)).delivered
    assert (await guard.send(MAIL)).delivered
    r = await guard.send(MAIL)
    assert (r.failure, r.attempted, r.retry_after) == (FailureClass.RATE_LIMITED, False, 0.5)
    assert r.paced  # held back, not tried: the caller uses no attempt
    assert (await guard.send(MAIL)).retry_after == 1.0  # the next slot, not the same one
    assert len(p.sent) == 2 and guard.throttled == 2
    clock.advance(0.5)
    assert (await guard.send(MAIL)).delivered


async def test_provider_rate_limit_counts_against_the_breaker() -> None:
    clock = ManualClock()
    limited = DeliveryResult.failed(FailureClass.RATE_LIMITED, "429", retry_after=1.0)
    p = Recording(results=[limited, limited])
    guard = GuardedProvider(p, clock, breaker=BreakerConfig(failure_threshold=2, cooldown=5.0))
    await guard.send(MAIL)
    await guard.send(MAIL)
    r = await guard.send(MAIL)
    assert (r.attempted, r.retry_after) == (False, 5.0)
    assert len(p.sent) == 2


async def test_registry_routes_by_channel_and_closes_all() -> None:
    clock = ManualClock()
    p = Recording()
    registry = ProviderRegistry([GuardedProvider(p, clock)])
    assert registry.channels() == [DeliveryChannel.EMAIL]
    assert (await registry.send(MAIL)).delivered
    from tidings.core.delivery.messages import WebhookMessage

    hook = WebhookMessage("ep", "https://x.example.com", "a.b", "{}", "msg_1", ())
    r = await registry.send(hook)
    assert (r.failure, r.attempted) == (FailureClass.POLICY, False)
    await registry.aclose()
    assert p.closed
