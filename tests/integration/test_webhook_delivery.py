"""Outgoing webhooks end to end against a real HTTP receiver (uvicorn on a free port) whose
signatures are checked with the reference `standardwebhooks` library: classes of answers,
auto-disable after persistent failure, and the circuit breaker keeping a dead endpoint from
being called."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from standardwebhooks.webhooks import Webhook

from tests.integration.lane_order import bulk_then_urgent
from tidings.adapters.clock import ManualClock
from tidings.adapters.memory.webhooks import MemoryWebhookEndpointStore
from tidings.adapters.providers.webhook import HttpWebhookProvider
from tidings.core.delivery.breaker import BreakerConfig, BreakerState
from tidings.core.delivery.messages import WebhookMessage
from tidings.core.delivery.webhooks import DisablePolicy
from tidings.core.retry import FailureClass
from tidings.services.providers import GuardedProvider, WebhookService


@dataclass
class Receiver:
    """Answers with the queued (status, headers), then 200; records every request."""

    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    always: tuple[int, dict[str, str]] | None = None
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    port: int = 0
    delay: float = 0.0  # seconds before each answer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.requests.append((headers, body))
        if self.delay:
            await asyncio.sleep(self.delay)
        status, extra = self.always or (self.answers.pop(0) if self.answers else (200, {}))
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode(), v.encode()) for k, v in extra.items()],
            }
        )
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    r.port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(r, log_config=None, access_log=False, lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield r
    finally:
        server.should_exit = True
        await task


@dataclass
class Kit:
    clock: ManualClock
    service: WebhookService
    guard: GuardedProvider[Any]
    store: MemoryWebhookEndpointStore


@pytest.fixture
async def kit() -> AsyncIterator[Kit]:
    clock = ManualClock(start=time.time())  # the reference verifier checks the timestamp
    store = MemoryWebhookEndpointStore()
    guard: GuardedProvider[Any] = GuardedProvider(
        HttpWebhookProvider(clock, timeout=2.0),
        clock,
        breaker=BreakerConfig(failure_threshold=3, cooldown=30.0),
        key=lambda m: m.endpoint_id,
    )
    service = WebhookService(
        store, guard, clock, policy=DisablePolicy(after_failures=5, after_seconds=3600.0)
    )
    try:
        yield Kit(clock, service, guard, store)
    finally:
        await guard.aclose()


async def deliver(kit: Kit, endpoint_id: str, n: int = 1, event: str = "order.paid") -> Any:
    return await kit.service.deliver(
        endpoint_id, event, {"order": n}, message_id=f"msg_{n}", occurred_at=1_767_225_600.0
    )


async def test_delivered_and_verified_with_the_reference_library(
    kit: Kit, receiver: Receiver
) -> None:
    ep = await kit.service.create(receiver.url, event_types=("order.paid",))
    result = await deliver(kit, ep.id, 7)
    assert result.delivered and result.status == 200
    assert result.provider_message_id == "msg_7"
    ((headers, body),) = receiver.requests
    assert headers["webhook-id"] == "msg_7"
    assert headers["content-type"] == "application/json"
    assert Webhook(ep.secret).verify(body, headers) == {
        "type": "order.paid",
        "timestamp": "2026-01-01T00:00:00Z",
        "data": {"order": 7},
    }


async def test_rotated_secret_old_and_new_both_verify_during_the_grace(
    kit: Kit, receiver: Receiver
) -> None:
    ep = await kit.service.create(receiver.url)
    rotated = await kit.service.rotate_secret(ep.id, grace=600.0)
    assert rotated.secret != ep.secret
    assert (await deliver(kit, ep.id)).delivered
    headers, body = receiver.requests[-1]
    Webhook(ep.secret).verify(body, headers)
    Webhook(rotated.secret).verify(body, headers)
    kit.clock.advance(601.0)
    assert (await deliver(kit, ep.id, 2)).delivered
    headers, _ = receiver.requests[-1]
    assert len(headers["webhook-signature"].split(" ")) == 1


async def test_filtered_and_disabled_endpoints_get_nothing(kit: Kit, receiver: Receiver) -> None:
    ep = await kit.service.create(receiver.url, event_types=("order.paid",))
    filtered = await deliver(kit, ep.id, event="user.created")
    assert (filtered.failure, filtered.attempted) == (FailureClass.POLICY, False)
    await kit.service.disable(ep.id)
    disabled = await deliver(kit, ep.id)
    assert (disabled.failure, disabled.attempted) == (FailureClass.POLICY, False)
    assert receiver.requests == []
    assert [e.id for e in await kit.service.endpoints_for("order.paid")] == []


@pytest.mark.parametrize(
    ("status", "headers", "failure", "retry_after"),
    [
        (500, {}, FailureClass.TRANSIENT, None),
        (429, {"retry-after": "17"}, FailureClass.RATE_LIMITED, 17.0),
        (503, {"retry-after": "5"}, FailureClass.RATE_LIMITED, 5.0),
        (400, {}, FailureClass.PERMANENT, None),
        (302, {"location": "http://elsewhere/"}, FailureClass.PERMANENT, None),
    ],
)
async def test_answers_are_classified(
    kit: Kit,
    receiver: Receiver,
    status: int,
    headers: dict[str, str],
    failure: FailureClass,
    retry_after: float | None,
) -> None:
    ep = await kit.service.create(receiver.url)
    receiver.answers.append((status, headers))
    result = await deliver(kit, ep.id)
    assert (result.failure, result.retry_after, result.status) == (failure, retry_after, status)
    assert (await kit.store.get(ep.id)).failures == 1
    assert len(receiver.requests) == 1  # redirects are not followed


async def test_410_gone_disables_the_endpoint(kit: Kit, receiver: Receiver) -> None:
    ep = await kit.service.create(receiver.url)
    receiver.answers.append((410, {}))
    result = await deliver(kit, ep.id)
    assert (result.failure, result.disable) == (FailureClass.PERMANENT, True)
    stored = await kit.store.get(ep.id)
    assert not stored.enabled and stored.disabled_reason is not None
    assert "410" in stored.disabled_reason
    assert not (await deliver(kit, ep.id, 2)).attempted
    assert len(receiver.requests) == 1
    await kit.service.enable(ep.id)
    assert (await deliver(kit, ep.id, 3)).delivered


async def test_timeouts_and_refused_connections_are_transient(kit: Kit) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    ep = await kit.service.create(f"http://127.0.0.1:{port}/hook")
    result = await deliver(kit, ep.id)
    assert result.failure is FailureClass.TRANSIENT and result.attempted

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts, never answers
    try:
        ep2 = await kit.service.create(f"http://127.0.0.1:{silent.getsockname()[1]}/hook")
        result = await deliver(kit, ep2.id)
        assert result.failure is FailureClass.TRANSIENT
        assert "timeout" in result.reason
    finally:
        silent.close()


async def test_endpoint_auto_disabled_after_persistent_failure(
    kit: Kit, receiver: Receiver
) -> None:
    receiver.always = (500, {})
    ep = await kit.service.create(receiver.url)
    # Five failures within minutes: the streak is long enough in count, not in time.
    for i in range(5):
        await deliver(kit, ep.id, i)
        kit.clock.advance(31.0)  # past the breaker's cool-down each time
    stored = await kit.store.get(ep.id)
    assert stored.enabled and stored.failures >= 5
    # An hour after the first failure, the next failure disables it.
    kit.clock.advance(3600.0)
    await deliver(kit, ep.id, 99)
    stored = await kit.store.get(ep.id)
    assert not stored.enabled
    assert stored.disabled_reason is not None and "500" in stored.disabled_reason
    calls = len(receiver.requests)
    kit.clock.advance(3600.0)
    assert not (await deliver(kit, ep.id, 100)).attempted
    assert len(receiver.requests) == calls
    # Re-enabled, it works again and the streak is gone.
    receiver.always = None
    enabled = await kit.service.enable(ep.id)
    assert (enabled.enabled, enabled.failures) == (True, 0)
    assert (await deliver(kit, ep.id, 101)).delivered


async def test_a_success_ends_the_streak(kit: Kit, receiver: Receiver) -> None:
    ep = await kit.service.create(receiver.url)
    receiver.answers += [(500, {}), (500, {})]
    await deliver(kit, ep.id, 1)
    await deliver(kit, ep.id, 2)
    assert (await kit.store.get(ep.id)).failures == 2
    assert (await deliver(kit, ep.id, 3)).delivered
    stored = await kit.store.get(ep.id)
    assert (stored.failures, stored.failing_since) == (0, None)


async def test_breaker_opens_on_a_dead_endpoint_and_no_call_reaches_it_while_open(
    kit: Kit, receiver: Receiver
) -> None:
    receiver.always = (503, {})
    dead = await kit.service.create(receiver.url)
    healthy_receiver_calls = 0
    for i in range(3):
        assert (await deliver(kit, dead.id, i)).attempted
    assert kit.guard.state(dead.id) is BreakerState.OPEN
    assert len(receiver.requests) == 3
    # A storm of retries while open: none reaches the receiver, each is told to come back
    # when the cool-down ends.
    results = await asyncio.gather(*(deliver(kit, dead.id, 10 + i) for i in range(50)))
    assert len(receiver.requests) == 3
    assert all(not r.attempted and r.failure is FailureClass.RATE_LIMITED for r in results)
    assert all(r.retry_after == 30.0 for r in results)
    kit.clock.advance(10.0)
    assert (await deliver(kit, dead.id, 70)).retry_after == 20.0
    # Another endpoint on the same provider is not affected.
    receiver.always = None
    other = await kit.service.create(receiver.url + "?other")
    assert (await deliver(kit, other.id, 80)).delivered
    healthy_receiver_calls += 1
    # After the cool-down one probe goes through; it succeeds and the circuit closes.
    kit.clock.advance(20.0)
    assert kit.guard.state(dead.id) is BreakerState.HALF_OPEN
    assert (await deliver(kit, dead.id, 90)).delivered
    assert kit.guard.state(dead.id) is BreakerState.CLOSED
    assert len(receiver.requests) == 3 + healthy_receiver_calls + 1
    # The streak counted only attempts that were made.
    assert (await kit.store.get(dead.id)).failures == 0


async def test_a_new_url_or_an_enable_clears_the_circuit_and_the_streak(
    kit: Kit, receiver: Receiver
) -> None:
    receiver.always = (503, {})
    ep = await kit.service.create(receiver.url + "?old")
    for i in range(3):
        assert (await deliver(kit, ep.id, i)).attempted
    assert kit.guard.state(ep.id) is BreakerState.OPEN
    assert (await kit.store.get(ep.id)).failures == 3
    receiver.always = None
    # a description change is no new destination: still open, the streak kept
    await kit.service.update(ep.id, description="billing")
    assert not (await deliver(kit, ep.id, 10)).attempted
    assert (await kit.store.get(ep.id)).failures == 3
    # the URL fixed: the next delivery goes straight through, the streak starts afresh
    moved = await kit.service.update(ep.id, url=receiver.url + "?new")
    assert moved.failures == 0 and moved.failing_since is None
    assert kit.guard.state(ep.id) is BreakerState.CLOSED
    assert (await deliver(kit, ep.id, 11)).delivered
    # an operator's enable clears an open circuit too
    receiver.always = (503, {})
    for i in range(3):
        await deliver(kit, ep.id, 20 + i)
    assert kit.guard.state(ep.id) is BreakerState.OPEN
    receiver.always = None
    await kit.service.enable(ep.id)
    assert (await deliver(kit, ep.id, 30)).delivered


async def test_private_targets_are_refused_when_blocked(receiver: Receiver) -> None:
    clock = ManualClock(start=time.time())
    provider = HttpWebhookProvider(clock, block_private=True)
    store = MemoryWebhookEndpointStore()
    service = WebhookService(store, provider, clock, allow_private=True)
    try:
        ep = await service.create(receiver.url)  # the service allows it; the provider not
        result = await service.deliver(
            ep.id, "a.b", {}, message_id="msg_1", occurred_at=clock.now()
        )
        assert result.failure is FailureClass.PERMANENT
        assert "non-public" in result.reason
        assert receiver.requests == []
    finally:
        await provider.aclose()


async def test_a_message_that_cannot_be_signed_is_permanent(kit: Kit, receiver: Receiver) -> None:
    ep = await kit.service.create(receiver.url)
    result = await kit.service.deliver(
        ep.id, "a.b", {}, message_id="msg.with.dots", occurred_at=kit.clock.now()
    )
    assert result.failure is FailureClass.PERMANENT and "sign" in result.reason
    assert receiver.requests == []


async def test_a_transactional_webhook_goes_before_the_bulk_ones_waiting(
    receiver: Receiver,
) -> None:
    """The provider's connections are taken by transactional requests before bulk ones: a
    transactional webhook waits for the requests in flight, not for a bulk slice queued."""
    receiver.delay = 0.02
    provider = HttpWebhookProvider(ManualClock(start=time.time()), max_connections=2)
    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

    def hook(n: str) -> WebhookMessage:
        return WebhookMessage("ep", receiver.url, "t", "{}", n, (secret,))

    async def send(name: str) -> bool:
        return (await provider.send(hook(name))).delivered

    try:
        await bulk_then_urgent(send)
    finally:
        await provider.aclose()
    order = [headers["webhook-id"] for headers, _ in receiver.requests]
    assert len(order) == 11
    assert order.index("urgent") <= 1  # at most the request in flight before it
