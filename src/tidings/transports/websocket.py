"""The gateway's WebSocket endpoint, served natively on uvicorn's port.

uvicorn hands a connection to its WebSocket protocol class once it sees an Upgrade request.
`websocket_protocol(hub)` returns such a class: requests for the gateway path are served
here, on the `websockets` sans-I/O core, without the ASGI per-message send loop; any other
WebSocket path goes on to uvicorn's own implementation and the ASGI app.

Publications reach each subscriber as one pre-built frame (`EncodedBatch.ws_frame`, the
publications of one loop pass) written straight to the socket. Backpressure is the
transport's write buffer: past `max_buffer_bytes` uvloop calls `pause_writing`, and the
client connection drops, coalesces or disconnects by delivery class until it drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, cast

from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import CLOSED, OPEN
from websockets.server import ServerProtocol
from websockets.typing import Origin

from tidings.core.protocol import requests as r
from tidings.services.gateway import ClientConnection, EncodedBatch, EncodedPush, Hub

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 3.0


class GatewayConnection(asyncio.Protocol):
    """One WebSocket connection of the gateway; also the client connection's `Transport`."""

    def __init__(
        self, hub: Hub, *, max_size: int, origins: list[Origin | None] | None = None
    ) -> None:
        self.hub = hub
        self.ws = ServerProtocol(origins=origins, max_size=max_size)
        self.client: ClientConnection | None = None
        self.transport: asyncio.Transport | None = None
        self._fragments: list[bytes] | None = None
        self.paused = False  # the write buffer is past max_buffer_bytes
        self.open = False  # handshake done, no close frame sent or received

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=self.hub.options.max_buffer_bytes)

    def data_received(self, data: bytes) -> None:
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Request):
                self._handshake(event)
            elif isinstance(event, Frame) and self.client is not None:
                self._frame(event.opcode, bytes(event.data), event.fin)
        self._flush()

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        client, self.client, self.transport = self.client, None, None
        if client is not None:
            client.transport_lost()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.client is not None:
            self.client.writable()

    # --- handshake and frames --------------------------------------------------------------

    def _handshake(self, request: Request) -> None:
        response = self.ws.accept(request)
        if response.status_code == 101 and self.hub.draining:
            response = self.ws.reject(503, "shutting down\n")
        self.ws.send_response(response)
        if response.status_code == 101:
            self.open = True
            self.client = ClientConnection(self.hub, self)

    def _frame(self, opcode: Opcode, data: bytes, fin: bool) -> None:
        assert self.client is not None
        if opcode in (Opcode.TEXT, Opcode.BINARY):
            if fin:
                self.client.receive(data)
            else:
                self._fragments = [data]
        elif opcode is Opcode.CONT and self._fragments is not None:
            self._fragments.append(data)
            if fin:
                message, self._fragments = b"".join(self._fragments), None
                self.client.receive(message)

    def _flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        for chunk in self.ws.data_to_send():
            if chunk:
                transport.write(chunk)
            elif transport.can_write_eof():
                transport.write_eof()
        if self.open and self.ws.state is not OPEN:
            self.open = False
        if self.ws.state is CLOSED or self.ws.close_expected():
            if self.ws.state is CLOSED:
                transport.close()
            else:
                loop = asyncio.get_running_loop()
                loop.call_later(CLOSE_TIMEOUT, transport.close)

    # --- Transport (for ClientConnection) --------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.open:
            self.ws.send_text(data)
            self._flush()

    def write_push(self, push: EncodedPush) -> None:
        if self.open and self.transport is not None:
            self.transport.write(push.ws_frame)

    def write_batch(self, batch: EncodedBatch) -> None:
        if self.open and self.transport is not None:
            self.transport.write(batch.ws_frame)

    def close(self, close: r.Close) -> None:
        self.client = None
        self.open = False
        with contextlib.suppress(InvalidState):
            self.ws.send_close(close.code, close.reason)
        self._flush()


def websocket_protocol(
    hub: Hub,
    *,
    path: str = "/connection/websocket",
    fallback: type[asyncio.Protocol] | None = None,
    max_size: int = 1024 * 1024,
    origins: list[str] | None = None,
) -> type[asyncio.Protocol]:
    """A uvicorn `ws` protocol class serving the gateway at `path` natively."""
    target = path.encode()
    allowed: list[Origin | None] | None = [Origin(o) for o in origins] + [None] if origins else None

    class GatewayWebSocketProtocol(asyncio.Protocol):
        def __init__(
            self, config: Any, server_state: Any, app_state: Any, _loop: Any = None
        ) -> None:
            self._args = {"config": config, "server_state": server_state, "app_state": app_state}
            self._impl: asyncio.Protocol | None = None
            self._transport: asyncio.BaseTransport | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self._transport = transport

        def data_received(self, data: bytes) -> None:
            if self._impl is None:
                assert self._transport is not None
                request_target = data.split(b" ", 2)[1] if data.count(b" ") >= 2 else b""
                if request_target.split(b"?", 1)[0] == target:
                    self._impl = GatewayConnection(hub, max_size=max_size, origins=allowed)
                elif fallback is not None:
                    self._impl = fallback(**self._args)
                else:
                    self._transport.close()
                    return
                self._impl.connection_made(self._transport)
            assert isinstance(self._impl, asyncio.Protocol)
            self._impl.data_received(data)

        def eof_received(self) -> bool | None:
            return self._impl.eof_received() if self._impl is not None else None

        def connection_lost(self, exc: Exception | None) -> None:
            impl, self._impl, self._transport = self._impl, None, None  # no cycles left
            if impl is not None:
                impl.connection_lost(exc)

        def pause_writing(self) -> None:
            if self._impl is not None:
                self._impl.pause_writing()

        def resume_writing(self) -> None:
            if self._impl is not None:
                self._impl.resume_writing()

    return GatewayWebSocketProtocol
