"""Email over SMTP with aiosmtplib and a small pool of reused connections.

Each `send` takes one of `pool_size` slots (`LaneSlots`: a transactional send waiting for one
goes before the bulk sends waiting, and bulk sends leave one slot in eight, at least one,
to transactional ones) and borrows a connection (the most recently used first,
so warm ones stay warm),
runs one transaction and gives it back. A connection idle longer than `noop_after` is
checked with NOOP before use; one idle longer than `idle_timeout`, or that has carried
`max_messages_per_connection` messages, is closed and replaced. A reply of 421 or a lost
connection discards it. When a reused connection turns out to be dead (the server dropped it
while idle) the message is tried once more on a fresh one. A refused transaction is reset
(RSET) before the connection is reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
from dataclasses import dataclass
from typing import Literal

import aiosmtplib

from tidings.adapters.lanes import LaneSlots
from tidings.core.delivery.classify import classify_smtp
from tidings.core.delivery.email import (
    BoundaryInBody,
    address,
    message_id_header,
    render_mime,
)
from tidings.core.delivery.messages import DeliveryChannel, DeliveryResult, EmailMessage
from tidings.core.retry import FailureClass
from tidings.errors import InvalidInput
from tidings.ports.clock import Clock
from tidings.records import record


@record
class SmtpConfig:
    host: str = "127.0.0.1"
    port: int = 25
    security: Literal["none", "starttls", "tls"] = "none"
    username: str | None = None
    password: str | None = None
    validate_certs: bool = True
    timeout: float = 30.0
    pool_size: int = 4
    max_messages_per_connection: int = 100
    idle_timeout: float = 60.0
    noop_after: float = 5.0
    local_hostname: str | None = None
    envelope_from: str | None = None  # MAIL FROM (the bounce address); default: From
    message_id_domain: str | None = None  # default: the domain of From


@dataclass(slots=True)
class _Connection:
    client: aiosmtplib.SMTP
    sent: int
    last_used: float


class SmtpProvider:
    def __init__(self, config: SmtpConfig, clock: Clock, *, name: str = "smtp") -> None:
        if config.pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self.config = config
        self._clock = clock
        self._name = name
        self._idle: list[_Connection] = []
        # one slot per connection, an eighth (at least one) kept for transactional sends, which
        # also wait in front of bulk ones
        self._slots = LaneSlots.for_pool(config.pool_size)
        self._closed = False
        self.connections_opened = 0
        # Message-IDs and MIME boundaries: unique, not secret (a boundary found in the body is
        # replaced), so a generator seeded once rather than a system call a message.
        self._random = random.Random(secrets.token_bytes(32))
        self._envelope = (
            address(config.envelope_from, "envelope_from")[1] if config.envelope_from else ""
        )

    @property
    def channel(self) -> DeliveryChannel:
        return DeliveryChannel.EMAIL

    @property
    def name(self) -> str:
        return self._name

    async def send(self, message: EmailMessage) -> DeliveryResult:
        if self._closed:
            raise RuntimeError("the SMTP provider is closed")
        try:
            _, sender = address(message.sender, "sender")
            _, to = address(message.to, "to")
            domain = self.config.message_id_domain or sender.rpartition("@")[2]
            msg_id = message_id_header(message.message_id or self._token(), domain)
            mime = self._mime(message, msg_id)
        except InvalidInput as exc:
            return DeliveryResult.failed(FailureClass.PERMANENT, f"invalid message: {exc}")
        envelope = self._envelope or sender
        async with self._slots:
            for attempt in (1, 2):
                try:
                    conn = await self._acquire()
                except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                    return _connection_failure(exc)
                reused = conn.sent > 0
                try:
                    await _transaction(conn.client, envelope, to, mime)
                except aiosmtplib.SMTPResponseException as exc:
                    if exc.code == 421:
                        await self._discard(conn)
                    else:
                        self._release(conn)
                    return classify_smtp(exc.code, exc.message)
                except (aiosmtplib.SMTPServerDisconnected, ConnectionError) as exc:
                    await self._discard(conn)
                    if reused and attempt == 1:
                        continue  # the server dropped an idle connection: once more, fresh
                    return _connection_failure(exc)
                except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                    await self._discard(conn)
                    return _connection_failure(exc)
                conn.sent += 1
                conn.last_used = self._clock.monotonic()
                self._release(conn)
                return DeliveryResult.ok(msg_id, 250)
        raise AssertionError("unreachable")  # pragma: no cover

    def _token(self) -> str:
        return f"{self._random.getrandbits(128):032x}"

    def _mime(self, message: EmailMessage, msg_id: str) -> bytes:
        for _ in range(8):
            try:
                return render_mime(message, msg_id, self._clock.now(), self._token())
            except BoundaryInBody:
                continue
        raise InvalidInput("no MIME boundary that the body does not contain", field="text")

    async def _acquire(self) -> _Connection:
        now = self._clock.monotonic()
        while self._idle:
            conn = self._idle.pop()
            idle = now - conn.last_used
            if (
                not conn.client.is_connected
                or idle > self.config.idle_timeout
                or conn.sent >= self.config.max_messages_per_connection
            ):
                await self._discard(conn)
                continue
            if idle > self.config.noop_after:
                try:
                    await conn.client.noop()
                except (aiosmtplib.SMTPException, OSError, TimeoutError):
                    await self._discard(conn)
                    continue
            return conn
        return await self._open()

    async def _open(self) -> _Connection:
        c = self.config
        client = aiosmtplib.SMTP(
            hostname=c.host,
            port=c.port,
            username=c.username,
            password=c.password,
            local_hostname=c.local_hostname,
            timeout=c.timeout,
            use_tls=c.security == "tls",
            start_tls=c.security == "starttls",
            validate_certs=c.validate_certs,
        )
        self.connections_opened += 1
        try:
            await client.connect()
            if client.is_ehlo_or_helo_needed:  # (connect greets only for STARTTLS or AUTH)
                try:
                    await client.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await client.helo()
        except BaseException:
            client.close()
            raise
        return _Connection(client, 0, self._clock.monotonic())

    def _release(self, conn: _Connection) -> None:
        if self._closed:
            conn.client.close()
            return
        self._idle.append(conn)

    async def _discard(self, conn: _Connection) -> None:
        if conn.client.is_connected:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                await asyncio.wait_for(conn.client.quit(), timeout=1.0)
        conn.client.close()

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await self._discard(conn)


async def _transaction(client: aiosmtplib.SMTP, sender: str, to: str, mime: bytes) -> None:
    """MAIL, RCPT and DATA for one recipient, as aiosmtplib's `sendmail` runs them, on
    addresses `address` has checked (plain ASCII addr-specs), so none is parsed again; the
    envelope is reset (RSET) after a refusal so the connection can carry the next one."""
    options = [b"SIZE=%d" % len(mime)] if client.supports_extension("size") else []
    try:
        reply = await client.execute_command(b"MAIL", b"FROM:<%s>" % sender.encode(), *options)
        if reply.code != 250:
            raise aiosmtplib.SMTPSenderRefused(reply.code, reply.message, sender)
        reply = await client.execute_command(b"RCPT", b"TO:<%s>" % to.encode())
        if reply.code not in (250, 251):
            raise aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, to)
        await client.data(mime)
    except aiosmtplib.SMTPResponseException:
        with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
            await client.rset()
        raise


def _connection_failure(exc: BaseException) -> DeliveryResult:
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return classify_smtp(exc.code, exc.message)
    return DeliveryResult.failed(
        FailureClass.TRANSIENT, f"SMTP connection failed: {type(exc).__name__}: {exc}"
    )
