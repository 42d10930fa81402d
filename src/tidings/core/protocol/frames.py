"""Replies and pushes of the Centrifuge protocol v2 (JSON), and their encoders.

Shapes follow `client.proto` as Centrifuge encodes them: field names as in the proto, zero
values left out, `bytes` fields (`data`, `conn_info`, `chan_info`) embedded as raw JSON:

    {"id":1,"connect":{"client":"c1","version":"1.0","ping":25,"pong":true}}
    {"id":2,"subscribe":{"recoverable":true,"epoch":"e","offset":7,"positioned":true}}
    {"id":3,"error":{"code":103,"message":"permission denied"}}
    {"push":{"channel":"news","pub":{"data":{"text":"hi"},"offset":8}}}
    {}                                   <- server ping (the client answers with `{}`)

Raw JSON is spliced in with `orjson.Fragment`, never decoded again. A literal newline can
only be insignificant whitespace in valid JSON (control characters inside strings must be
escaped), so newlines are turned into spaces to keep newline-delimited framing intact.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from tidings.core.protocol.codes import (
    ERROR_MESSAGES,
    TEMPORARY_ERRORS,
    Disconnect,
    ErrorCode,
    ReplyError,
)
from tidings.core.protocol.commands import (
    Command,
    ConnectCommand,
    HistoryCommand,
    PingCommand,
    PongCommand,
    PresenceCommand,
    PresenceStatsCommand,
    ProtocolError,
    PublishCommand,
    RefreshCommand,
    RpcCommand,
    SendCommand,
    SubRecovery,
    SubRefreshCommand,
    SubscribeCommand,
    UnsubscribeCommand,
    decode_command,
    decode_commands,
)
from tidings.core.protocol.messages import (
    ConnectResult,
    HistoryResult,
    JoinPush,
    LeavePush,
    MessagePush,
    PingResult,
    PresenceResult,
    PresenceStatsResult,
    PublicationPush,
    PublishResult,
    Push,
    RefreshPush,
    RefreshResult,
    Result,
    RpcResult,
    SubRefreshResult,
    SubscribePush,
    SubscribeResult,
    UnsubscribePush,
    UnsubscribeResult,
)
from tidings.types import ClientInfo, Publication

__all__ = [
    "PING",
    "Command",
    "ConnectCommand",
    "ConnectResult",
    "HistoryCommand",
    "HistoryResult",
    "JoinPush",
    "LeavePush",
    "MessagePush",
    "PingCommand",
    "PingResult",
    "PongCommand",
    "PresenceCommand",
    "PresenceResult",
    "PresenceStatsCommand",
    "PresenceStatsResult",
    "ProtocolError",
    "PublicationPush",
    "PublishCommand",
    "PublishResult",
    "Push",
    "RefreshCommand",
    "RefreshPush",
    "RefreshResult",
    "Result",
    "RpcCommand",
    "RpcResult",
    "SendCommand",
    "SubRecovery",
    "SubRefreshCommand",
    "SubRefreshResult",
    "SubscribeCommand",
    "SubscribePush",
    "SubscribeResult",
    "UnsubscribeCommand",
    "UnsubscribePush",
    "UnsubscribeResult",
    "decode_command",
    "decode_commands",
    "encode_error",
    "encode_push",
    "encode_push_disconnect",
    "encode_push_join",
    "encode_push_leave",
    "encode_push_message",
    "encode_push_publication",
    "encode_push_unsubscribe",
    "encode_reply",
    "encode_reply_error",
    "join_frames",
    "publication_object",
    "raw_json",
]

PING = b"{}"
"""The server's ping in JSON mode: an empty reply. The client's pong is the empty command."""

JSONObj = dict[str, Any]


# --- encoding ----------------------------------------------------------------------------


def raw_json(data: bytes) -> orjson.Fragment:
    """Embed already encoded JSON without decoding it (newlines become spaces)."""
    if b"\n" in data:
        data = data.replace(b"\n", b" ")
    return orjson.Fragment(data)


def _drop_zero(obj: JSONObj) -> JSONObj:
    """Leave out zero values, as proto3 JSON does (None, False, 0, "", empty containers)."""
    return {k: v for k, v in obj.items() if isinstance(v, orjson.Fragment) or v}


def _client_info(info: ClientInfo) -> JSONObj:
    obj: JSONObj = {"user": info.user, "client": info.client}
    if info.conn_info:
        obj["conn_info"] = raw_json(info.conn_info)
    if info.chan_info:
        obj["chan_info"] = raw_json(info.chan_info)
    return obj


def publication_object(pub: Publication) -> JSONObj:
    """The `Publication` message of a reply or push (data, info, offset, tags)."""
    obj: JSONObj = {}
    if pub.data:
        obj["data"] = raw_json(pub.data)
    if pub.info is not None:
        obj["info"] = _client_info(pub.info)
    if pub.offset:
        obj["offset"] = pub.offset
    if pub.tags:
        obj["tags"] = pub.tags
    return obj


def _raw_or_none(data: bytes | None) -> orjson.Fragment | None:
    return raw_json(data) if data else None


def _subscribe_object(r: SubscribeResult) -> JSONObj:
    return _drop_zero(
        {
            "expires": r.expires,
            "ttl": r.ttl,
            "recoverable": r.recoverable,
            "epoch": r.epoch,
            "publications": [publication_object(p) for p in r.publications],
            "recovered": r.recovered,
            "offset": r.offset,
            "positioned": r.positioned,
            "data": _raw_or_none(r.data),
            "was_recovering": r.was_recovering,
        }
    )


def _connect_object(r: ConnectResult) -> JSONObj:
    return _drop_zero(
        {
            "client": r.client,
            "version": r.version,
            "expires": r.expires,
            "ttl": r.ttl,
            "data": _raw_or_none(r.data),
            "subs": {ch: _subscribe_object(s) for ch, s in r.subs.items()},
            "ping": r.ping,
            "pong": r.pong,
            "session": r.session,
            "node": r.node,
            "time": r.time,
        }
    )


def _result_object(result: Result) -> tuple[str, JSONObj]:
    match result:
        case ConnectResult():
            return "connect", _connect_object(result)
        case SubscribeResult():
            return "subscribe", _subscribe_object(result)
        case UnsubscribeResult():
            return "unsubscribe", {}
        case PublishResult():
            return "publish", {}
        case PresenceResult():
            presence = {cid: _client_info(info) for cid, info in result.presence.items()}
            return "presence", {"presence": presence}
        case PresenceStatsResult():
            return "presence_stats", {
                "num_clients": result.num_clients,
                "num_users": result.num_users,
            }
        case HistoryResult():
            return "history", {
                "publications": [publication_object(p) for p in result.publications],
                "epoch": result.epoch,
                "offset": result.offset,
            }
        case PingResult():
            return "ping", {}
        case RpcResult():
            return "rpc", _drop_zero({"data": _raw_or_none(result.data)})
        case RefreshResult():
            return "refresh", _drop_zero(
                {
                    "client": result.client,
                    "version": result.version,
                    "expires": result.expires,
                    "ttl": result.ttl,
                }
            )
        case SubRefreshResult():
            return "sub_refresh", _drop_zero({"expires": result.expires, "ttl": result.ttl})
    raise TypeError(f"not a reply result: {result!r}")  # pragma: no cover


def encode_reply(id: int, result: Result) -> bytes:
    """`{"id":N,"<method>":{...}}` for a successful command."""
    key, obj = _result_object(result)
    return orjson.dumps({"id": id, key: obj})


def encode_reply_error(id: int, error: ReplyError) -> bytes:
    err: JSONObj = {"code": error.code, "message": error.message}
    if error.temporary:
        err["temporary"] = True
    return orjson.dumps({"id": id, "error": err})


def encode_error(
    id: int, code: int, message: str | None = None, temporary: bool | None = None
) -> bytes:
    """`{"id":N,"error":{"code":C,"message":M[,"temporary":true]}}`; message and temporary
    default to the documented ones for known codes."""
    try:
        known: ErrorCode | None = ErrorCode(code)
    except ValueError:
        known = None
    if message is None:
        message = ERROR_MESSAGES[known] if known is not None else "error"
    if temporary is None:
        temporary = known in TEMPORARY_ERRORS
    return encode_reply_error(id, ReplyError(code, message, temporary))


def _push_object(push: Push) -> tuple[str, JSONObj]:
    match push:
        case PublicationPush():
            return "pub", publication_object(push.pub)
        case JoinPush():
            return "join", {"info": _client_info(push.info)}
        case LeavePush():
            return "leave", {"info": _client_info(push.info)}
        case UnsubscribePush():
            return "unsubscribe", _drop_zero({"code": push.code, "reason": push.reason})
        case SubscribePush():
            return "subscribe", _drop_zero(
                {
                    "recoverable": push.recoverable,
                    "epoch": push.epoch,
                    "offset": push.offset,
                    "positioned": push.positioned,
                    "data": _raw_or_none(push.data),
                }
            )
        case MessagePush():
            return "message", _drop_zero({"data": _raw_or_none(push.data)})
        case Disconnect():
            return "disconnect", _drop_zero(
                {"code": push.code, "reason": push.reason, "reconnect": push.reconnect}
            )
        case ConnectResult():
            return "connect", _connect_object(push)
        case RefreshPush():
            return "refresh", _drop_zero({"expires": push.expires, "ttl": push.ttl})
    raise TypeError(f"not a push: {push!r}")  # pragma: no cover


def encode_push(channel: str, push: Push) -> bytes:
    """`{"push":{"channel":C,"<kind>":{...}}}`; the channel is left out when empty."""
    key, obj = _push_object(push)
    body: JSONObj = {"channel": channel, key: obj} if channel else {key: obj}
    return orjson.dumps({"push": body})


def encode_push_publication(channel: str, pub: Publication) -> bytes:
    """Encode a publication push once; the same bytes can go to every subscriber."""
    return orjson.dumps({"push": {"channel": channel, "pub": publication_object(pub)}})


def encode_push_join(channel: str, info: ClientInfo) -> bytes:
    return orjson.dumps({"push": {"channel": channel, "join": {"info": _client_info(info)}}})


def encode_push_leave(channel: str, info: ClientInfo) -> bytes:
    return orjson.dumps({"push": {"channel": channel, "leave": {"info": _client_info(info)}}})


def encode_push_unsubscribe(channel: str, code: int, reason: str) -> bytes:
    return encode_push(channel, UnsubscribePush(code, reason))


def encode_push_disconnect(disconnect: Disconnect) -> bytes:
    """The `disconnect` push of unidirectional transports (WebSocket closes with the code)."""
    return encode_push("", disconnect)


def encode_push_message(data: bytes) -> bytes:
    return encode_push("", MessagePush(data))


def join_frames(frames: Iterable[bytes]) -> bytes:
    """Several encoded replies/pushes in one transport frame, newline-delimited."""
    return b"\n".join(frames)
