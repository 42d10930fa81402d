"""Email over SMTP against a real aiosmtpd server: delivery, connection reuse counted at the
server, reply codes classified, a server that is down or restarts."""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.policy
import random
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.integration.lane_order import bulk_then_urgent
from tidings.adapters.clock import ManualClock
from tidings.adapters.providers.smtp import SmtpConfig, SmtpProvider
from tidings.core.delivery.breaker import BreakerConfig, BreakerState
from tidings.core.delivery.messages import Bounce, EmailMessage
from tidings.core.retry import FailureClass
from tidings.services.providers import GuardedProvider


@dataclass
class Sink:
    """An SMTP handler: refuses some recipients by their local part, keeps the rest."""

    sessions: list[Any] = field(default_factory=list)
    messages: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    mail_options: list[list[str]] = field(default_factory=list)
    noops: int = 0
    delay: float = 0.0  # seconds each DATA takes

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        if not any(s is session for s in self.sessions):
            self.sessions.append(session)
        session.host_name = hostname
        return responses

    async def handle_NOOP(self, server: Any, session: Any, envelope: Any, arg: str) -> str:
        self.noops += 1
        return "250 OK"

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address.split("@")[0] == "blocked":
            return "553 5.7.1 Sender address rejected"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        self.mail_options.append(list(options))
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        local = address.split("@")[0]
        if local == "unknown":
            return "550 5.1.1 No such user"
        if local == "crowded":
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        local = envelope.rcpt_tos[0].split("@")[0]
        if local == "later":
            return "451 4.3.0 Try again later"
        if local == "closing":
            return "421 4.3.2 Service shutting down"
        if local == "rejected":
            return "554 5.7.1 Message refused by policy"
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 2.0.0 OK queued"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    sink: Sink
    port: int
    controller: Controller | None = None

    def start(self) -> None:
        self.controller = Controller(self.sink, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server(Sink(), free_port())
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
async def provider(server: Server, clock: ManualClock) -> AsyncIterator[SmtpProvider]:
    p = SmtpProvider(
        SmtpConfig(host="127.0.0.1", port=server.port, pool_size=3, timeout=5.0), clock
    )
    try:
        yield p
    finally:
        await p.aclose()


def mail(
    to: str = "zoe@example.org",
    n: int = 0,
    sender: str = "Tidings <noreply@example.com>",
    **kw: Any,
) -> EmailMessage:
    return EmailMessage(
        sender=sender,
        to=to,
        subject=f"Order {n}",
        text=f"Hello {n}",
        html=f"<p>Hello {n}</p>",
        **kw,
    )


async def test_delivers_a_multipart_message(provider: SmtpProvider, server: Server) -> None:
    result = await provider.send(mail(n=1, message_id="evt1-email"))
    assert result.delivered and result.status == 250
    assert result.provider_message_id == "<evt1-email@example.com>"
    ((mail_from, rcpt, content),) = server.sink.messages
    assert (mail_from, rcpt) == ("noreply@example.com", ["zoe@example.org"])
    parsed = email.message_from_bytes(content, policy=email.policy.default)
    assert parsed["Message-ID"] == "<evt1-email@example.com>"
    assert parsed["Subject"] == "Order 1"
    assert parsed.get_content_type() == "multipart/alternative"
    html = parsed.get_body(("html",))
    assert html is not None and "<p>Hello 1</p>" in html.get_content()


async def test_connections_are_reused(provider: SmtpProvider, server: Server) -> None:
    for i in range(20):
        assert (await provider.send(mail(n=i))).delivered
    assert len(server.sink.sessions) == 1
    assert provider.connections_opened == 1
    assert len(server.sink.messages) == 20


async def test_concurrent_sends_stay_within_the_pool(
    provider: SmtpProvider, server: Server
) -> None:
    import asyncio

    results = await asyncio.gather(*(provider.send(mail(n=i)) for i in range(60)))
    assert all(r.delivered for r in results)
    assert len(server.sink.messages) == 60
    assert 1 <= len(server.sink.sessions) <= 3
    assert len({r.provider_message_id for r in results}) == 60


async def test_refused_recipient_is_a_hard_bounce_and_the_connection_stays_usable(
    provider: SmtpProvider, server: Server
) -> None:
    result = await provider.send(mail("unknown@example.org"))
    assert (result.failure, result.bounce, result.status) == (
        FailureClass.PERMANENT,
        Bounce.HARD,
        550,
    )
    assert "5.1.1" in result.reason
    assert (await provider.send(mail())).delivered  # after RSET, on the same connection
    assert len(server.sink.sessions) == 1
    assert [m[1] for m in server.sink.messages] == [["zoe@example.org"]]


async def test_the_envelope_sender_and_the_size_go_in_mail_from(
    server: Server, clock: ManualClock
) -> None:
    config = SmtpConfig(host="127.0.0.1", port=server.port, envelope_from="bounces+x@example.net")
    p = SmtpProvider(config, clock)
    try:
        assert (await p.send(mail())).delivered
    finally:
        await p.aclose()
    ((mail_from, rcpt, content),) = server.sink.messages
    assert (mail_from, rcpt) == ("bounces+x@example.net", ["zoe@example.org"])
    assert b"From: Tidings <noreply@example.com>" in content
    # RFC 1870: the size the server advertises SIZE for, in octets as sent (CRLF lines)
    ((size,),) = server.sink.mail_options
    assert size.upper().startswith("SIZE=")
    assert int(size[5:]) == len(content)


async def test_a_refused_sender_is_permanent_and_the_connection_stays_usable(
    provider: SmtpProvider, server: Server
) -> None:
    result = await provider.send(mail(sender="blocked@example.com"))
    assert (result.failure, result.status) == (FailureClass.PERMANENT, 553)
    assert "Sender address rejected" in result.reason
    assert (await provider.send(mail())).delivered  # after RSET, on the same connection
    assert len(server.sink.sessions) == 1
    assert [m[0] for m in server.sink.messages] == ["noreply@example.com"]


@pytest.mark.parametrize(
    ("to", "failure", "status"),
    [
        ("later@example.org", FailureClass.TRANSIENT, 451),
        ("crowded@example.org", FailureClass.RATE_LIMITED, 452),
        ("closing@example.org", FailureClass.TRANSIENT, 421),
    ],
)
async def test_temporary_replies(
    provider: SmtpProvider, server: Server, to: str, failure: FailureClass, status: int
) -> None:
    result = await provider.send(mail(to))
    assert (result.failure, result.status) == (failure, status)
    assert result.provider_fault
    assert (await provider.send(mail())).delivered
    # A 421 closes the connection; the others keep it.
    assert len(server.sink.sessions) == (2 if status == 421 else 1)


async def test_server_down_is_transient(clock: ManualClock) -> None:
    p = SmtpProvider(SmtpConfig(host="127.0.0.1", port=free_port(), timeout=2.0), clock)
    try:
        result = await p.send(mail())
        assert result.failure is FailureClass.TRANSIENT and result.attempted
        assert "connection" in result.reason.lower()
    finally:
        await p.aclose()


async def test_a_dropped_idle_connection_is_replaced(
    provider: SmtpProvider, server: Server
) -> None:
    assert (await provider.send(mail(n=1))).delivered
    server.stop()  # the server goes away with our pooled connection ...
    server.start()  # ... and comes back on the same port
    assert (await provider.send(mail(n=2))).delivered
    assert provider.connections_opened == 2
    assert len(server.sink.messages) == 2


async def test_idle_connections_are_checked_with_noop_and_recycled(
    server: Server, clock: ManualClock
) -> None:
    p = SmtpProvider(
        SmtpConfig(
            host="127.0.0.1",
            port=server.port,
            noop_after=5.0,
            idle_timeout=60.0,
            max_messages_per_connection=3,
        ),
        clock,
    )
    try:
        assert (await p.send(mail(n=1))).delivered
        clock.advance(10.0)
        assert (await p.send(mail(n=2))).delivered
        assert server.sink.noops == 1 and p.connections_opened == 1
        assert (await p.send(mail(n=3))).delivered
        assert (await p.send(mail(n=4))).delivered  # the first carried 3: a new one
        assert p.connections_opened == 2
        clock.advance(61.0)
        assert (await p.send(mail(n=5))).delivered  # idle too long: a new one
        assert p.connections_opened == 3
    finally:
        await p.aclose()


async def test_invalid_message_is_permanent_not_an_exception(provider: SmtpProvider) -> None:
    result = await provider.send(mail("not-an-address"))
    assert result.failure is FailureClass.PERMANENT
    result = await provider.send(mail(headers={"Bcc": "spy@example.com"}))
    assert result.failure is FailureClass.PERMANENT


async def test_breaker_stops_connecting_to_a_dead_server(clock: ManualClock) -> None:
    smtp = SmtpProvider(SmtpConfig(host="127.0.0.1", port=free_port(), timeout=2.0), clock)
    guard = GuardedProvider(smtp, clock, breaker=BreakerConfig(failure_threshold=3, cooldown=60))
    try:
        for _ in range(3):
            assert (await guard.send(mail())).attempted
        assert guard.state() is BreakerState.OPEN
        for _ in range(100):
            r = await guard.send(mail())
            assert (r.attempted, r.failure, r.retry_after) == (
                False,
                FailureClass.RATE_LIMITED,
                60.0,
            )
        assert smtp.connections_opened == 3
    finally:
        await guard.aclose()


async def test_permanent_refusals_do_not_open_the_breaker(
    provider: SmtpProvider, clock: ManualClock
) -> None:
    guard = GuardedProvider(provider, clock, breaker=BreakerConfig(failure_threshold=2))
    for _ in range(5):
        assert (await guard.send(mail("unknown@example.org"))).failure is FailureClass.PERMANENT
    assert guard.state() is BreakerState.CLOSED


async def test_a_transactional_send_goes_before_the_bulk_sends_waiting(
    server: Server, clock: ManualClock
) -> None:
    """A bulk delivery job hands the provider a slice at once: a transactional email
    arriving then takes the connection bulk sends leave free, ahead of the bulk ones
    queued."""
    server.sink.delay = 0.02
    p = SmtpProvider(SmtpConfig(host="127.0.0.1", port=server.port, pool_size=2), clock)

    async def send(name: str) -> bool:
        return (await p.send(mail(f"{name}@example.org"))).delivered

    try:
        await bulk_then_urgent(send, settle=0.005)
    finally:
        await p.aclose()
    order = [rcpt[0] for _, rcpt, _ in server.sink.messages]
    assert len(order) == 11
    assert order.index("urgent@example.org") <= 1  # at most the send in flight before it


async def test_a_body_holding_the_boundary_gets_another_one(
    provider: SmtpProvider, server: Server
) -> None:
    seed = random.Random(7)
    first, second = (f"=_{seed.getrandbits(128):032x}" for _ in range(2))
    provider._random = random.Random(7)  # the provider's next boundary is `first`
    message = dataclasses.replace(mail(), text=f"see {first} here")
    assert (await provider.send(message)).delivered
    ((_, _, content),) = server.sink.messages
    parsed = email.message_from_bytes(content, policy=email.policy.default)
    assert parsed.get_boundary() == second
    body = parsed.get_body(("plain",))
    assert body is not None and body.get_content().strip() == f"see {first} here"
