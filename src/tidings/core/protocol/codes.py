"""Error, unsubscribe and disconnect codes of the Centrifuge client protocol.

Numbers, messages and reasons are those of https://centrifugal.dev/docs/server/codes so the
official SDKs react as they do with Centrifugo: errors 100-113 answer one command, unsubscribe
codes >= 2500 make the SDK resubscribe, disconnect codes 3000-3499 make it reconnect and
3500-3999 are terminal.
"""

from __future__ import annotations

import enum

from tidings.records import record


class ErrorCode(enum.IntEnum):
    INTERNAL = 100
    UNAUTHORIZED = 101
    UNKNOWN_CHANNEL = 102
    PERMISSION_DENIED = 103
    METHOD_NOT_FOUND = 104
    ALREADY_SUBSCRIBED = 105
    LIMIT_EXCEEDED = 106
    BAD_REQUEST = 107
    NOT_AVAILABLE = 108
    TOKEN_EXPIRED = 109
    EXPIRED = 110
    TOO_MANY_REQUESTS = 111
    UNRECOVERABLE_POSITION = 112
    CONCURRENT_PAGINATION = 113


ERROR_MESSAGES: dict[ErrorCode, str] = {
    ErrorCode.INTERNAL: "internal server error",
    ErrorCode.UNAUTHORIZED: "unauthorized",
    ErrorCode.UNKNOWN_CHANNEL: "unknown channel",
    ErrorCode.PERMISSION_DENIED: "permission denied",
    ErrorCode.METHOD_NOT_FOUND: "method not found",
    ErrorCode.ALREADY_SUBSCRIBED: "already subscribed",
    ErrorCode.LIMIT_EXCEEDED: "limit exceeded",
    ErrorCode.BAD_REQUEST: "bad request",
    ErrorCode.NOT_AVAILABLE: "not available",
    ErrorCode.TOKEN_EXPIRED: "token expired",
    ErrorCode.EXPIRED: "expired",
    ErrorCode.TOO_MANY_REQUESTS: "too many requests",
    ErrorCode.UNRECOVERABLE_POSITION: "unrecoverable position",
    ErrorCode.CONCURRENT_PAGINATION: "concurrent pagination",
}

TEMPORARY_ERRORS = frozenset(
    {ErrorCode.INTERNAL, ErrorCode.TOO_MANY_REQUESTS, ErrorCode.CONCURRENT_PAGINATION}
)


@record
class ReplyError:
    """The `error` of a reply. Temporary errors are worth retrying; the others are not."""

    code: int
    message: str
    temporary: bool = False

    @classmethod
    def of(cls, code: ErrorCode, message: str | None = None) -> ReplyError:
        return cls(int(code), message or ERROR_MESSAGES[code], code in TEMPORARY_ERRORS)


class UnsubscribeCode(enum.IntEnum):
    SERVER = 2000  # explicit server-side unsubscribe: no resubscribe
    INSUFFICIENT_STATE = 2500  # stream position lost: resubscribe and recover
    EXPIRED = 2501  # subscription expired: resubscribe with a fresh token


UNSUBSCRIBE_REASONS: dict[UnsubscribeCode, str] = {
    UnsubscribeCode.SERVER: "server unsubscribe",
    UnsubscribeCode.INSUFFICIENT_STATE: "insufficient state",
    UnsubscribeCode.EXPIRED: "subscription expired",
}


class DisconnectCode(enum.IntEnum):
    CONNECTION_CLOSED = 3000
    # 3000-3499: the client reconnects.
    SHUTDOWN = 3001
    SERVER_ERROR = 3004
    EXPIRED = 3005
    SUB_EXPIRED = 3006
    SLOW = 3008
    WRITE_ERROR = 3009
    INSUFFICIENT_STATE = 3010
    FORCE_RECONNECT = 3011
    NO_PONG = 3012
    TOO_MANY_REQUESTS = 3013
    STATE_INVALIDATED = 3014
    # 3500-3999: terminal, the client does not reconnect.
    INVALID_TOKEN = 3500
    BAD_REQUEST = 3501
    STALE = 3502
    FORCE_NO_RECONNECT = 3503
    CONNECTION_LIMIT = 3504
    CHANNEL_LIMIT = 3505
    INAPPROPRIATE_PROTOCOL = 3506
    PERMISSION_DENIED = 3507
    NOT_AVAILABLE = 3508
    TOO_MANY_ERRORS = 3509


DISCONNECT_REASONS: dict[DisconnectCode, str] = {
    DisconnectCode.CONNECTION_CLOSED: "connection closed",
    DisconnectCode.SHUTDOWN: "shutdown",
    DisconnectCode.SERVER_ERROR: "internal server error",
    DisconnectCode.EXPIRED: "connection expired",
    DisconnectCode.SUB_EXPIRED: "subscription expired",
    DisconnectCode.SLOW: "slow",
    DisconnectCode.WRITE_ERROR: "write error",
    DisconnectCode.INSUFFICIENT_STATE: "insufficient state",
    DisconnectCode.FORCE_RECONNECT: "force reconnect",
    DisconnectCode.NO_PONG: "no pong",
    DisconnectCode.TOO_MANY_REQUESTS: "too many requests",
    DisconnectCode.STATE_INVALIDATED: "state invalidated",
    DisconnectCode.INVALID_TOKEN: "invalid token",
    DisconnectCode.BAD_REQUEST: "bad request",
    DisconnectCode.STALE: "stale",
    DisconnectCode.FORCE_NO_RECONNECT: "force disconnect",
    DisconnectCode.CONNECTION_LIMIT: "connection limit",
    DisconnectCode.CHANNEL_LIMIT: "channel limit",
    DisconnectCode.INAPPROPRIATE_PROTOCOL: "inappropriate protocol",
    DisconnectCode.PERMISSION_DENIED: "permission denied",
    DisconnectCode.NOT_AVAILABLE: "not available",
    DisconnectCode.TOO_MANY_ERRORS: "too many errors",
}


def reconnects(code: int) -> bool:
    """Whether an SDK reconnects after a disconnect with `code` (3000-3499 and non-protocol
    WebSocket close codes do; 3500-3999 and 4500-4999 are terminal)."""
    return not (3500 <= code <= 3999 or 4500 <= code <= 4999)


@record
class Disconnect:
    """Why the server ends a connection: a WebSocket close code and reason (at most 123
    bytes), or a `disconnect` push on unidirectional transports."""

    code: int
    reason: str

    @property
    def reconnect(self) -> bool:
        return reconnects(self.code)

    @classmethod
    def of(cls, code: DisconnectCode, reason: str | None = None) -> Disconnect:
        return cls(int(code), reason or DISCONNECT_REASONS[code])
