"""Typed replies and pushes of the Centrifuge protocol v2, as in `client.proto`.

`bytes` fields hold JSON bytes (the JSON encoding embeds them raw); `frames` encodes these.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field

from tidings.core.protocol.codes import Disconnect
from tidings.records import record
from tidings.types import ClientInfo, Publication

# --- reply results -----------------------------------------------------------------------


@record
class SubscribeResult:
    expires: bool = False
    ttl: int = 0
    recoverable: bool = False
    epoch: str = ""
    publications: tuple[Publication, ...] = ()
    recovered: bool = False
    offset: int = 0
    positioned: bool = False
    data: bytes | None = None
    was_recovering: bool = False


@record
class ConnectResult:
    """Reply to connect; also the payload of the `connect` push of unidirectional streams."""

    client: str
    version: str = ""
    expires: bool = False
    ttl: int = 0
    data: bytes | None = None
    subs: Mapping[str, SubscribeResult] = field(default_factory=dict)
    ping: int = 0  # seconds between server pings
    pong: bool = False  # the client must answer pings
    session: str = ""
    node: str = ""
    time: int = 0  # server time, Unix milliseconds


@record
class UnsubscribeResult:
    pass


@record
class PublishResult:
    pass


@record
class PresenceResult:
    presence: Mapping[str, ClientInfo] = field(default_factory=dict)  # by client id


@record
class PresenceStatsResult:
    num_clients: int = 0
    num_users: int = 0


@record
class HistoryResult:
    publications: tuple[Publication, ...] = ()
    epoch: str = ""
    offset: int = 0


@record
class PingResult:
    pass


@record
class RpcResult:
    data: bytes | None = None


@record
class RefreshResult:
    client: str = ""
    version: str = ""
    expires: bool = False
    ttl: int = 0


@record
class SubRefreshResult:
    expires: bool = False
    ttl: int = 0


Result = (
    ConnectResult
    | SubscribeResult
    | UnsubscribeResult
    | PublishResult
    | PresenceResult
    | PresenceStatsResult
    | HistoryResult
    | PingResult
    | RpcResult
    | RefreshResult
    | SubRefreshResult
)


# --- pushes ------------------------------------------------------------------------------


@record
class PublicationPush:
    pub: Publication


@record
class JoinPush:
    info: ClientInfo


@record
class LeavePush:
    info: ClientInfo


@record
class UnsubscribePush:
    code: int
    reason: str


@record
class SubscribePush:
    """The server subscribed the client (server-side subscription)."""

    recoverable: bool = False
    epoch: str = ""
    offset: int = 0
    positioned: bool = False
    data: bytes | None = None


@record
class MessagePush:
    data: bytes


@record
class RefreshPush:
    expires: bool = False
    ttl: int = 0


Push = (
    PublicationPush
    | JoinPush
    | LeavePush
    | UnsubscribePush
    | SubscribePush
    | MessagePush
    | Disconnect
    | ConnectResult
    | RefreshPush
)
