"""The Centrifuge client protocol v2 (JSON encoding), sans I/O.

`commands` decodes what clients send, `frames` encodes replies and pushes, `session` is the
per-connection state machine and `recovery` the all-or-nothing recovery decision.
"""

from tidings.core.protocol.codes import (
    Disconnect,
    DisconnectCode,
    ErrorCode,
    ReplyError,
    UnsubscribeCode,
)
from tidings.core.protocol.commands import Command, ProtocolError, decode_commands
from tidings.core.protocol.frames import (
    PING,
    encode_error,
    encode_push,
    encode_push_disconnect,
    encode_push_join,
    encode_push_leave,
    encode_push_publication,
    encode_reply,
    join_frames,
)
from tidings.core.protocol.recovery import Recovery, decide_recovery
from tidings.core.protocol.requests import Close, Request, ServerSubscription
from tidings.core.protocol.session import Delivery, Output, Session, SessionConfig, State

__all__ = [
    "PING",
    "Close",
    "Command",
    "Delivery",
    "Disconnect",
    "DisconnectCode",
    "ErrorCode",
    "Output",
    "ProtocolError",
    "Recovery",
    "ReplyError",
    "Request",
    "ServerSubscription",
    "Session",
    "SessionConfig",
    "State",
    "UnsubscribeCode",
    "decide_recovery",
    "decode_commands",
    "encode_error",
    "encode_push",
    "encode_push_disconnect",
    "encode_push_join",
    "encode_push_leave",
    "encode_push_publication",
    "encode_reply",
    "join_frames",
]
