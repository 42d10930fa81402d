"""What a `Session` asks of the I/O layer, and how it tells it to close.

Every request with an `id` must be answered exactly once through the session: with
`Session.connected` / `subscribed` / `refreshed` / `reply` on success or `Session.fail`.
`UnsubscribeRequest` and `SendRequest` are notifications and take no answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field

from tidings.core.channels import NamespaceOptions
from tidings.core.protocol.codes import Disconnect
from tidings.core.protocol.commands import SubRecovery
from tidings.records import record
from tidings.types import HistoryResult, StreamPosition


@record
class ConnectRequest:
    """Authenticate (usually `tidings.core.tokens.decode_connection_token`), then call
    `Session.connected` or `Session.fail`."""

    id: int
    token: str
    data: bytes | None
    name: str
    version: str
    headers: Mapping[str, str] = field(default_factory=dict)
    subs: Mapping[str, SubRecovery] = field(default_factory=dict)


@record
class SubscribeRequest:
    """Check the token if any, join the channel in the hub, read the stream position (and,
    when `since` is set, the history after it), then call `Session.subscribed`."""

    id: int
    channel: str
    options: NamespaceOptions
    token: str = ""
    since: StreamPosition | None = None  # set when the client asks to recover
    data: bytes | None = None
    join_leave: bool = False


@record
class UnsubscribeRequest:
    """Leave the channel in the hub. The client already has its reply."""

    channel: str


@record
class PublishRequest:
    id: int
    channel: str
    data: bytes
    options: NamespaceOptions


@record
class PresenceRequest:
    id: int
    channel: str


@record
class PresenceStatsRequest:
    id: int
    channel: str


@record
class HistoryRequest:
    id: int
    channel: str
    limit: int
    since: StreamPosition | None
    reverse: bool


@record
class RpcRequest:
    id: int
    method: str
    data: bytes | None


@record
class SendRequest:
    """An asynchronous message from the client; there is nothing to answer."""

    data: bytes


@record
class RefreshRequest:
    """Check the fresh connection token, then call `Session.refreshed`."""

    id: int
    token: str


@record
class SubRefreshRequest:
    """Check the fresh subscription token, then call `Session.sub_refreshed`."""

    id: int
    channel: str
    token: str


Request = (
    ConnectRequest
    | SubscribeRequest
    | UnsubscribeRequest
    | PublishRequest
    | PresenceRequest
    | PresenceStatsRequest
    | HistoryRequest
    | RpcRequest
    | SendRequest
    | RefreshRequest
    | SubRefreshRequest
)


@record
class Close:
    """Close the transport: a WebSocket closes with `code` and `reason`; a unidirectional
    stream first writes `encode_push_disconnect(close.disconnect)`. `channels` are the
    channels the connection was in (or joining); remove it from them in the hub."""

    code: int
    reason: str
    reconnect: bool
    channels: tuple[str, ...] = ()

    @property
    def disconnect(self) -> Disconnect:
        return Disconnect(self.code, self.reason)


@record
class ServerSubscription:
    """A channel the server subscribes the client to at connect (token `channels` claim).

    `position` is the stream top; `history` the history after the position the client sent
    back in `connect.subs` (when it asked to recover)."""

    options: NamespaceOptions
    position: StreamPosition | None = None
    history: HistoryResult | None = None
    data: bytes | None = None
