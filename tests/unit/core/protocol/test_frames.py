"""Decoding commands and encoding replies/pushes, checked on raw bytes."""

from __future__ import annotations

import contextlib

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.core.protocol.codes import Disconnect, DisconnectCode, ErrorCode, ReplyError
from tidings.core.protocol.frames import (
    PING,
    ConnectCommand,
    ConnectResult,
    HistoryCommand,
    HistoryResult,
    PingCommand,
    PingResult,
    PongCommand,
    PresenceResult,
    PresenceStatsCommand,
    PresenceStatsResult,
    ProtocolError,
    PublishCommand,
    PublishResult,
    RefreshPush,
    RefreshResult,
    RpcCommand,
    RpcResult,
    SendCommand,
    SubRecovery,
    SubRefreshCommand,
    SubRefreshResult,
    SubscribeCommand,
    SubscribePush,
    SubscribeResult,
    UnsubscribeCommand,
    UnsubscribeResult,
    decode_commands,
    encode_error,
    encode_push,
    encode_push_disconnect,
    encode_push_join,
    encode_push_leave,
    encode_push_message,
    encode_push_publication,
    encode_push_unsubscribe,
    encode_reply,
    encode_reply_error,
    join_frames,
)
from tidings.types import ClientInfo, Publication, StreamPosition


def pub(offset: int, data: bytes = b'{"n":1}', **kw: object) -> Publication:
    return Publication(channel="chat:1", data=data, offset=offset, epoch="e1", **kw)  # type: ignore[arg-type]


# --- decoding ----------------------------------------------------------------------------


def test_decodes_what_centrifuge_js_sends() -> None:
    frame = (
        b'{"connect":{"token":"t0k","name":"js","data":{"a": [1, 2]},'
        b'"subs":{"news":{"recover":true,"epoch":"e","offset":7}}},"id":1}\n'
        b'{"subscribe":{"channel":"chat:1","recover":true,"epoch":"e1","offset":3},"id":2}\n'
        b'{"publish":{"channel":"chat:1","data":{"text":"hi"}},"id":3}\n'
        b'{"history":{"channel":"chat:1","limit":10,"since":{"offset":2,"epoch":"e1"},'
        b'"reverse":true},"id":4}\n'
        b'{"presence_stats":{"channel":"chat:1"},"id":5}\n'
        b'{"unsubscribe":{"channel":"chat:1"},"id":6}\n'
        b'{"rpc":{"method":"m","data":null},"id":7}\n'
        b'{"sub_refresh":{"channel":"chat:1","token":"s"},"id":8}\n'
        b'{"ping":{},"id":9}\n'
        b'{"send":{"data":"x"}}\n'
        b"{}\n"
    )
    assert decode_commands(frame) == [
        ConnectCommand(
            id=1,
            token="t0k",
            name="js",
            data=b'{"a":[1,2]}',
            subs={"news": SubRecovery(recover=True, epoch="e", offset=7)},
        ),
        SubscribeCommand(id=2, channel="chat:1", recover=True, epoch="e1", offset=3),
        PublishCommand(id=3, channel="chat:1", data=b'{"text":"hi"}'),
        HistoryCommand(
            id=4, channel="chat:1", limit=10, since=StreamPosition(2, "e1"), reverse=True
        ),
        PresenceStatsCommand(id=5, channel="chat:1"),
        UnsubscribeCommand(id=6, channel="chat:1"),
        RpcCommand(id=7, method="m", data=None),
        SubRefreshCommand(id=8, channel="chat:1", token="s"),
        PingCommand(id=9),
        SendCommand(data=b'"x"'),
        PongCommand(),
    ]


def test_accepts_str_frames_and_offsets_up_to_uint64() -> None:
    [cmd] = decode_commands(
        '{"id":4294967295,"subscribe":{"channel":"a","offset":18446744073709551615}}'
    )
    assert cmd == SubscribeCommand(id=2**32 - 1, channel="a", offset=2**64 - 1)


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\n",
        b"{not json",
        b"[1,2]",
        b'"connect"',
        b'{"id":1,"subscribe":{"channel":"a"}}\n\n{"id":2,"ping":{}}',
        b'{"id":1,"frobnicate":{}}',
        b'{"id":1}',
        b'{"subscribe":{"channel":"a"}}',
        b'{"id":-1,"ping":{}}',
        b'{"id":4294967296,"ping":{}}',
        b'{"id":true,"ping":{}}',
        b'{"id":"1","ping":{}}',
        b'{"id":1,"subscribe":[]}',
        b'{"id":1,"subscribe":{}}',
        b'{"id":1,"subscribe":{"channel":5}}',
        b'{"id":1,"subscribe":{"channel":"a","recover":"yes"}}',
        b'{"id":1,"subscribe":{"channel":"a","offset":-1}}',
        b'{"id":1,"publish":{"channel":"a"}}',
        b'{"id":1,"connect":{"headers":{"a":1}}}',
        b'{"id":1,"history":{"channel":"a","since":1}}',
    ],
)
def test_malformed_frames_mean_disconnect_bad_request(frame: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_commands(frame)
    assert info.value.disconnect == Disconnect(3501, "bad request")
    assert not info.value.disconnect.reconnect


def test_command_size_limit_applies_per_command() -> None:
    line = b'{"id":1,"ping":{}}'
    assert len(decode_commands(line + b"\n" + line, max_command_size=len(line))) == 2
    with pytest.raises(ProtocolError, match="larger than"):
        decode_commands(line, max_command_size=len(line) - 1)


def test_the_first_method_in_proto_order_wins() -> None:
    [cmd] = decode_commands(b'{"id":1,"ping":{},"subscribe":{"channel":"a"}}')
    assert cmd == SubscribeCommand(id=1, channel="a")


@given(st.binary(max_size=200))
def test_decoding_arbitrary_bytes_only_ever_raises_protocol_error(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_commands(data)


@given(
    st.lists(
        st.tuples(st.integers(1, 2**32 - 1), st.text(min_size=1, max_size=20)),
        min_size=1,
        max_size=5,
    )
)
def test_subscribe_frames_round_trip(items: list[tuple[int, str]]) -> None:
    frame = b"\n".join(orjson.dumps({"id": i, "subscribe": {"channel": c}}) for i, c in items)
    assert decode_commands(frame) == [SubscribeCommand(id=i, channel=c) for i, c in items]


# --- replies -----------------------------------------------------------------------------


def test_connect_reply_shape() -> None:
    result = ConnectResult(client="c1", version="0.1.0", ping=25, pong=True)
    assert encode_reply(1, result) == (
        b'{"id":1,"connect":{"client":"c1","version":"0.1.0","ping":25,"pong":true}}'
    )


def test_connect_reply_with_expiry_data_and_server_side_subscriptions() -> None:
    result = ConnectResult(
        client="c1",
        expires=True,
        ttl=60,
        data=b'{"hello": true}',
        subs={"news": SubscribeResult(recoverable=True, epoch="e", offset=3, positioned=True)},
    )
    assert encode_reply(1, result) == (
        b'{"id":1,"connect":{"client":"c1","expires":true,"ttl":60,"data":{"hello": true},'
        b'"subs":{"news":{"recoverable":true,"epoch":"e","offset":3,"positioned":true}}}}'
    )


def test_subscribe_reply_leaves_zero_values_out() -> None:
    assert encode_reply(2, SubscribeResult()) == b'{"id":2,"subscribe":{}}'
    recovered = SubscribeResult(
        recoverable=True,
        epoch="e1",
        publications=(pub(4, b'{"n":4}'), pub(5, b'{"n":5}')),
        recovered=True,
        offset=3,
        positioned=True,
        was_recovering=True,
    )
    assert encode_reply(2, recovered) == (
        b'{"id":2,"subscribe":{"recoverable":true,"epoch":"e1","publications":['
        b'{"data":{"n":4},"offset":4},{"data":{"n":5},"offset":5}],"recovered":true,'
        b'"offset":3,"positioned":true,"was_recovering":true}}'
    )


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (UnsubscribeResult(), b'{"id":7,"unsubscribe":{}}'),
        (PublishResult(), b'{"id":7,"publish":{}}'),
        (PingResult(), b'{"id":7,"ping":{}}'),
        (PresenceStatsResult(), b'{"id":7,"presence_stats":{"num_clients":0,"num_users":0}}'),
        (PresenceResult(), b'{"id":7,"presence":{"presence":{}}}'),
        (
            PresenceResult({"c1": ClientInfo("u1", "c1", conn_info=b'{"name":"Ann"}')}),
            b'{"id":7,"presence":{"presence":{"c1":{"user":"u1","client":"c1",'
            b'"conn_info":{"name":"Ann"}}}}}',
        ),
        (HistoryResult(), b'{"id":7,"history":{"publications":[],"epoch":"","offset":0}}'),
        (
            HistoryResult((pub(9),), "e1", 9),
            b'{"id":7,"history":{"publications":[{"data":{"n":1},"offset":9}],'
            b'"epoch":"e1","offset":9}}',
        ),
        (RpcResult(b"[1, 2]"), b'{"id":7,"rpc":{"data":[1, 2]}}'),
        (RpcResult(), b'{"id":7,"rpc":{}}'),
        (
            RefreshResult("c1", "", True, 30),
            b'{"id":7,"refresh":{"client":"c1","expires":true,"ttl":30}}',
        ),
        (SubRefreshResult(True, 30), b'{"id":7,"sub_refresh":{"expires":true,"ttl":30}}'),
    ],
)
def test_reply_shapes(result: object, expected: bytes) -> None:
    assert encode_reply(7, result) == expected  # type: ignore[arg-type]


def test_error_replies() -> None:
    assert encode_error(3, 103) == b'{"id":3,"error":{"code":103,"message":"permission denied"}}'
    assert encode_error(3, 100) == (
        b'{"id":3,"error":{"code":100,"message":"internal server error","temporary":true}}'
    )
    assert encode_error(3, 4001, "custom", temporary=True) == (
        b'{"id":3,"error":{"code":4001,"message":"custom","temporary":true}}'
    )
    assert encode_reply_error(3, ReplyError.of(ErrorCode.TOO_MANY_REQUESTS)) == (
        b'{"id":3,"error":{"code":111,"message":"too many requests","temporary":true}}'
    )


# --- pushes ------------------------------------------------------------------------------


def test_publication_push_embeds_data_raw_byte_for_byte() -> None:
    data = b'{ "text" : "h\\u00e9llo",  "n": 1.50 }'  # odd spacing and escapes survive
    assert encode_push_publication("chat:1", pub(8, data)) == (
        b'{"push":{"channel":"chat:1","pub":{"data":' + data + b',"offset":8}}}'
    )


def test_publication_push_with_info_and_tags_and_no_offset() -> None:
    info = ClientInfo("u1", "c1", conn_info=b'{"name":"Ann"}', chan_info=b'"mod"')
    p = Publication("news", b"[1]", 0, "", info=info, tags={"kind": "alert"})
    assert encode_push_publication("news", p) == (
        b'{"push":{"channel":"news","pub":{"data":[1],"info":{"user":"u1","client":"c1",'
        b'"conn_info":{"name":"Ann"},"chan_info":"mod"},"tags":{"kind":"alert"}}}}'
    )


def test_pretty_printed_data_cannot_break_newline_framing() -> None:
    frame = encode_push_publication("news", pub(1, b'{\n  "a": "x\\ny"\n}\n'))
    assert b"\n" not in frame
    assert orjson.loads(frame)["push"]["pub"]["data"] == {"a": "x\ny"}


def test_other_pushes() -> None:
    info = ClientInfo("u1", "c1")
    assert encode_push_join("chat:1", info) == (
        b'{"push":{"channel":"chat:1","join":{"info":{"user":"u1","client":"c1"}}}}'
    )
    assert encode_push_leave("chat:1", info) == (
        b'{"push":{"channel":"chat:1","leave":{"info":{"user":"u1","client":"c1"}}}}'
    )
    assert encode_push_unsubscribe("chat:1", 2000, "server unsubscribe") == (
        b'{"push":{"channel":"chat:1","unsubscribe":{"code":2000,"reason":"server unsubscribe"}}}'
    )
    assert encode_push_disconnect(Disconnect.of(DisconnectCode.SHUTDOWN)) == (
        b'{"push":{"disconnect":{"code":3001,"reason":"shutdown","reconnect":true}}}'
    )
    assert encode_push_disconnect(Disconnect.of(DisconnectCode.FORCE_NO_RECONNECT)) == (
        b'{"push":{"disconnect":{"code":3503,"reason":"force disconnect"}}}'
    )
    assert encode_push_message(b'{"m":1}') == b'{"push":{"message":{"data":{"m":1}}}}'
    assert encode_push("news", SubscribePush(recoverable=True, epoch="e", offset=2)) == (
        b'{"push":{"channel":"news","subscribe":{"recoverable":true,"epoch":"e","offset":2}}}'
    )
    assert encode_push("", ConnectResult(client="c1")) == b'{"push":{"connect":{"client":"c1"}}}'
    assert (
        encode_push("", RefreshPush(True, 10)) == b'{"push":{"refresh":{"expires":true,"ttl":10}}}'
    )


def test_frames_join_with_newlines_and_ping_is_empty_object() -> None:
    assert PING == b"{}"
    assert join_frames([b'{"id":1,"ping":{}}', PING]) == b'{"id":1,"ping":{}}\n{}'
