"""Outgoing webhooks over HTTP: one signed POST per message (Standard Webhooks headers),
keep-alive connections, no redirects, a bounded response read, every failure classified."""

from __future__ import annotations

import asyncio
import socket
from urllib.parse import urlsplit

import httpx

from tidings import __version__
from tidings.adapters.lanes import LaneSlots
from tidings.core.delivery.classify import classify_http
from tidings.core.delivery.messages import DeliveryChannel, DeliveryResult, WebhookMessage
from tidings.core.delivery.webhooks import is_private_address, sign_headers
from tidings.core.retry import FailureClass
from tidings.errors import InvalidInput
from tidings.ports.clock import Clock

MAX_RESPONSE_BYTES = 16 * 1024


class HttpWebhookProvider:
    """`block_private`: refuse (permanently) hosts that resolve to loopback, private,
    link-local or other non-public addresses. The check runs on each send against the
    resolver's answer; an attacker who controls DNS can still change the answer between the
    check and the connection, so a deployment that must be sure also routes webhooks through
    an egress proxy or a network without internal routes."""

    def __init__(
        self,
        clock: Clock,
        *,
        timeout: float = 15.0,
        connect_timeout: float = 5.0,
        max_connections: int = 100,
        block_private: bool = False,
        name: str = "webhook",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._clock = clock
        self._name = name
        self._block_private = block_private
        # the pool's connections, taken by transactional requests before bulk ones; an eighth
        # of them kept for transactional requests
        self._slots = LaneSlots.for_pool(max_connections)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            follow_redirects=False,
            transport=transport,
            headers={"user-agent": f"Tidings-Webhooks/{__version__}"},
            trust_env=False,
        )

    @property
    def channel(self) -> DeliveryChannel:
        return DeliveryChannel.WEBHOOK

    @property
    def name(self) -> str:
        return self._name

    async def send(self, message: WebhookMessage) -> DeliveryResult:
        if self._block_private:
            refused = await self._private_target(message.url)
            if refused is not None:
                return DeliveryResult.failed(FailureClass.PERMANENT, refused)
        try:
            headers = sign_headers(
                message.secrets, message.message_id, int(self._clock.now()), message.body
            )
        except (ValueError, InvalidInput) as exc:
            return DeliveryResult.failed(FailureClass.PERMANENT, f"cannot sign: {exc}")
        headers["content-type"] = "application/json"
        try:
            async with (
                self._slots,
                self._client.stream(
                    "POST", message.url, content=message.body.encode(), headers=headers
                ) as response,
            ):
                await _drain(response)
                status, answer_headers = response.status_code, dict(response.headers)
        except httpx.TimeoutException as exc:
            return DeliveryResult.failed(FailureClass.TRANSIENT, f"timeout: {type(exc).__name__}")
        except httpx.HTTPError as exc:
            return DeliveryResult.failed(
                FailureClass.TRANSIENT, f"network error: {type(exc).__name__}: {exc}"
            )
        result = classify_http(status, answer_headers, self._clock.now())
        if result.delivered:
            return DeliveryResult.ok(message.message_id, status)
        return result

    async def _private_target(self, url: str) -> str | None:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except OSError:
            return None  # let the request fail and be classified like any network error
        for info in infos:
            address = str(info[4][0])
            if is_private_address(address):
                return f"{host} resolves to a non-public address ({address})"
        return None

    async def aclose(self) -> None:
        await self._client.aclose()


async def _drain(response: httpx.Response) -> None:
    """Read at most MAX_RESPONSE_BYTES so the connection can be reused; a receiver that sends
    more gets its connection closed instead of our memory."""
    seen = 0
    async for chunk in response.aiter_raw():
        seen += len(chunk)
        if seen > MAX_RESPONSE_BYTES:
            break
