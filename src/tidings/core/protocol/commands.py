"""Client commands of the Centrifuge protocol v2 (JSON) and their decoder.

A frame holds one or more commands separated by `\\n`. Each command is an object with an `id`
(uint32, echoed in the reply) and one request field named after its method. Field names are
those of `client.proto`; `bytes` fields such as `data` carry embedded JSON, which the decoder
keeps as compact JSON bytes. The empty command `{}` is the pong to a server ping.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import field
from typing import Any

import orjson

from tidings.core.protocol.codes import Disconnect, DisconnectCode
from tidings.errors import TidingsError
from tidings.records import record
from tidings.types import StreamPosition

MAX_UINT32 = 2**32 - 1
MAX_UINT64 = 2**64 - 1


class ProtocolError(TidingsError):
    """The client broke the protocol; the connection must close with `disconnect`."""

    code = "protocol"

    def __init__(self, message: str, disconnect: Disconnect | None = None) -> None:
        super().__init__(message)
        self.disconnect = disconnect or Disconnect.of(DisconnectCode.BAD_REQUEST)


@record
class SubRecovery:
    """A server-side subscription's position sent back in `connect.subs` on reconnect."""

    recover: bool = False
    epoch: str = ""
    offset: int = 0


@record
class ConnectCommand:
    id: int
    token: str = ""
    data: bytes | None = None
    subs: Mapping[str, SubRecovery] = field(default_factory=dict)
    name: str = ""
    version: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)


@record
class SubscribeCommand:
    id: int
    channel: str
    token: str = ""
    recover: bool = False
    epoch: str = ""
    offset: int = 0
    data: bytes | None = None
    positioned: bool = False
    recoverable: bool = False
    join_leave: bool = False


@record
class UnsubscribeCommand:
    id: int
    channel: str


@record
class PublishCommand:
    id: int
    channel: str
    data: bytes


@record
class PresenceCommand:
    id: int
    channel: str


@record
class PresenceStatsCommand:
    id: int
    channel: str


@record
class HistoryCommand:
    id: int
    channel: str
    limit: int = 0  # 0: position only; -1: all the server allows
    since: StreamPosition | None = None
    reverse: bool = False


@record
class PingCommand:
    id: int


@record
class SendCommand:
    """Asynchronous message to the server; it has no id and gets no reply."""

    data: bytes
    id: int = 0


@record
class RpcCommand:
    id: int
    method: str = ""
    data: bytes | None = None


@record
class RefreshCommand:
    id: int
    token: str


@record
class SubRefreshCommand:
    id: int
    channel: str
    token: str


@record
class PongCommand:
    """The empty command `{}`: the answer to a server ping."""

    id: int = 0


Command = (
    ConnectCommand
    | SubscribeCommand
    | UnsubscribeCommand
    | PublishCommand
    | PresenceCommand
    | PresenceStatsCommand
    | HistoryCommand
    | PingCommand
    | SendCommand
    | RpcCommand
    | RefreshCommand
    | SubRefreshCommand
    | PongCommand
)


def decode_commands(data: bytes | str, *, max_command_size: int | None = None) -> list[Command]:
    """Decode one frame of newline-delimited commands.

    One trailing `\\n` is allowed; an empty frame or an empty line is not. Raises
    `ProtocolError` (disconnect 3501 bad request) for malformed JSON, a command that is not an
    object, a missing or invalid id, an unknown method, ill-typed fields, or a command longer
    than `max_command_size` bytes.
    """
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    if not raw:
        raise ProtocolError("empty frame")
    lines = raw.split(b"\n")
    if max_command_size is not None and any(len(line) > max_command_size for line in lines):
        raise ProtocolError(f"command larger than {max_command_size} bytes")
    return [decode_command(line) for line in lines]


def decode_command(line: bytes) -> Command:
    """Decode a single JSON command (see `decode_commands`)."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("command is not a JSON object")
    cmd_id = _int(obj, "id", 0, MAX_UINT32)
    for method, parse in _METHODS:
        body = obj.get(method)
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ProtocolError(f"{method} must be an object")
        if cmd_id == 0 and method != "send":
            raise ProtocolError(f"{method} command without id")
        return parse(cmd_id, body)
    if cmd_id == 0:
        return PongCommand()
    raise ProtocolError("unknown method")


def _str(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ProtocolError(f"{key} must be a string")
    return value


def _bool(body: Mapping[str, Any], key: str) -> bool:
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ProtocolError(f"{key} must be a boolean")
    return value


def _int(body: Mapping[str, Any], key: str, low: int, high: int) -> int:
    value = body.get(key)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ProtocolError(f"{key} must be an integer in {low}..{high}")
    return value


def _raw(body: Mapping[str, Any], key: str) -> bytes | None:
    value = body.get(key)
    return None if value is None else orjson.dumps(value)


def _channel(body: Mapping[str, Any]) -> str:
    channel = _str(body, "channel")
    if not channel:
        raise ProtocolError("channel required")
    return channel


def _str_map(body: Mapping[str, Any], key: str) -> dict[str, str]:
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ProtocolError(f"{key} must be an object of strings")
    return value


def _connect(cmd_id: int, body: Mapping[str, Any]) -> ConnectCommand:
    subs: dict[str, SubRecovery] = {}
    raw_subs = body.get("subs") or {}
    if not isinstance(raw_subs, dict):
        raise ProtocolError("subs must be an object")
    for channel, sub in raw_subs.items():
        if not isinstance(sub, dict):
            raise ProtocolError("subs entries must be objects")
        subs[channel] = SubRecovery(
            recover=_bool(sub, "recover"),
            epoch=_str(sub, "epoch"),
            offset=_int(sub, "offset", 0, MAX_UINT64),
        )
    return ConnectCommand(
        id=cmd_id,
        token=_str(body, "token"),
        data=_raw(body, "data"),
        subs=subs,
        name=_str(body, "name"),
        version=_str(body, "version"),
        headers=_str_map(body, "headers"),
    )


def _subscribe(cmd_id: int, body: Mapping[str, Any]) -> SubscribeCommand:
    return SubscribeCommand(
        id=cmd_id,
        channel=_channel(body),
        token=_str(body, "token"),
        recover=_bool(body, "recover"),
        epoch=_str(body, "epoch"),
        offset=_int(body, "offset", 0, MAX_UINT64),
        data=_raw(body, "data"),
        positioned=_bool(body, "positioned"),
        recoverable=_bool(body, "recoverable"),
        join_leave=_bool(body, "join_leave"),
    )


def _publish(cmd_id: int, body: Mapping[str, Any]) -> PublishCommand:
    data = _raw(body, "data")
    if data is None:
        raise ProtocolError("publish needs data")
    return PublishCommand(id=cmd_id, channel=_channel(body), data=data)


def _history(cmd_id: int, body: Mapping[str, Any]) -> HistoryCommand:
    since = None
    raw_since = body.get("since")
    if raw_since is not None:
        if not isinstance(raw_since, dict):
            raise ProtocolError("since must be an object")
        since = StreamPosition(
            offset=_int(raw_since, "offset", 0, MAX_UINT64), epoch=_str(raw_since, "epoch")
        )
    return HistoryCommand(
        id=cmd_id,
        channel=_channel(body),
        limit=_int(body, "limit", -1, 2**31 - 1),
        since=since,
        reverse=_bool(body, "reverse"),
    )


def _send(cmd_id: int, body: Mapping[str, Any]) -> SendCommand:
    return SendCommand(data=_raw(body, "data") or b"null", id=cmd_id)


# In client.proto field order: the server takes the first request field that is set.
_METHODS: tuple[tuple[str, Callable[[int, Mapping[str, Any]], Command]], ...] = (
    ("connect", _connect),
    ("subscribe", _subscribe),
    ("unsubscribe", lambda i, b: UnsubscribeCommand(id=i, channel=_channel(b))),
    ("publish", _publish),
    ("presence", lambda i, b: PresenceCommand(id=i, channel=_channel(b))),
    ("presence_stats", lambda i, b: PresenceStatsCommand(id=i, channel=_channel(b))),
    ("history", _history),
    ("ping", lambda i, b: PingCommand(id=i)),
    ("send", _send),
    ("rpc", lambda i, b: RpcCommand(id=i, method=_str(b, "method"), data=_raw(b, "data"))),
    ("refresh", lambda i, b: RefreshCommand(id=i, token=_str(b, "token"))),
    (
        "sub_refresh",
        lambda i, b: SubRefreshCommand(id=i, channel=_channel(b), token=_str(b, "token")),
    ),
)
