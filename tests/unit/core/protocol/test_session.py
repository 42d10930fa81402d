"""The session state machine driven with raw bytes, no event loop (like websockets'
test_protocol)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from tidings.core.channels import ChannelResolver, DeliveryClass, NamespaceOptions
from tidings.core.protocol import (
    PING,
    Close,
    Delivery,
    Disconnect,
    DisconnectCode,
    ErrorCode,
    ServerSubscription,
    Session,
    SessionConfig,
    State,
    UnsubscribeCode,
)
from tidings.core.protocol.frames import HistoryResult as HistoryReply
from tidings.core.protocol.frames import PublishResult
from tidings.core.protocol.requests import (
    ConnectRequest,
    HistoryRequest,
    PresenceRequest,
    PublishRequest,
    RefreshRequest,
    SendRequest,
    SubRefreshRequest,
    SubscribeRequest,
    UnsubscribeRequest,
)
from tidings.types import HistoryResult, Publication, StreamPosition

T0 = 1000.0
CHAT = NamespaceOptions(
    history_size=10,
    history_ttl=60,
    presence=True,
    join_leave=True,
    allow_publish_for_client=True,
    allow_history_for_client=True,
    allow_presence_for_client=True,
    delivery=DeliveryClass.DURABLE,
)
RESOLVER = ChannelResolver(
    NamespaceOptions(),
    {
        "chat": CHAT,
        "priv": NamespaceOptions(private=True),
        "dm": NamespaceOptions(allow_user_limited=True),
        "last": NamespaceOptions(history_size=1, history_ttl=60, delivery=DeliveryClass.LATEST),
        "feed": NamespaceOptions(history_size=5, history_ttl=60, delivery=DeliveryClass.DURABLE),
        "lobby": NamespaceOptions(join_leave=True, force_push_join_leave=True),
    },
)
CONNECT = b'{"id":1,"connect":{"token":"tok","name":"js"}}'
CONNECTED = b'{"id":1,"connect":{"client":"c1","version":"9.9","ping":25,"pong":true}}'


def new(**config: object) -> Session:
    return Session(SessionConfig(server_version="9.9", **config), RESOLVER, T0)  # type: ignore[arg-type]


def connected(**config: object) -> Session:
    s = new(**config)
    [req] = s.receive(CONNECT, T0)
    assert isinstance(req, ConnectRequest)
    [reply] = s.connected(req, T0, client="c1", user="u1")
    assert reply == CONNECTED or config
    return s


def subscribe(s: Session, channel: str, cmd_id: int = 2, extra: str = "") -> SubscribeRequest:
    [req] = s.receive(f'{{"id":{cmd_id},"subscribe":{{"channel":"{channel}"{extra}}}}}', T0)
    assert isinstance(req, SubscribeRequest), req
    return req


def pub(offset: int, epoch: str = "e1", channel: str = "chat:1") -> Publication:
    return Publication(channel=channel, data=b'{"n":%d}' % offset, offset=offset, epoch=epoch)


def closed(out: Sequence[object], code: int) -> Close:
    assert isinstance(out[-1], Close), out
    assert out[-1].code == code
    return out[-1]


# --- connecting --------------------------------------------------------------------------


def test_connect_then_reply() -> None:
    s = new()
    assert s.state is State.AWAITING_CONNECT
    [req] = s.receive(CONNECT, T0)
    assert req == ConnectRequest(1, "tok", None, "js", "")
    assert isinstance(req, ConnectRequest)
    assert s.state.value == "connecting"
    assert s.connected(req, T0, client="c1", user="u1") == [CONNECTED]
    assert s.state.value == "connected"
    assert s.info.user == "u1" and s.info.client == "c1"


def test_connect_reply_with_ttl_and_data_and_no_pings() -> None:
    s = new(ping_interval=0)
    [req] = s.receive(CONNECT, T0)
    out = s.connected(req, T0, client="c1", user="u1", ttl=60, data=b'{"w":1}')  # type: ignore[arg-type]
    assert out == [
        b'{"id":1,"connect":{"client":"c1","version":"9.9","expires":true,"ttl":60,"data":{"w":1}}}'
    ]


@pytest.mark.parametrize(
    "frame",
    [
        b'{"id":2,"subscribe":{"channel":"news"}}',
        b"{}",
        b'{"send":{"data":1}}',
    ],
)
def test_anything_before_connect_is_a_bad_request(frame: bytes) -> None:
    s = new()
    close = closed(s.receive(frame, T0), 3501)
    assert close == Close(3501, "bad request", reconnect=False)
    assert s.state is State.CLOSED
    assert s.receive(CONNECT, T0) == []


def test_second_connect_is_a_bad_request() -> None:
    s = connected()
    closed(s.receive(b'{"id":5,"connect":{}}', T0), 3501)


def test_connect_while_connecting_is_a_bad_request() -> None:
    s = new()
    s.receive(CONNECT, T0)
    closed(s.receive(b'{"id":2,"connect":{}}', T0), 3501)


def test_commands_sent_while_connecting_run_after_the_reply() -> None:
    s = new()
    out = s.receive(CONNECT + b'\n{"id":2,"ping":{}}\n{"id":3,"subscribe":{"channel":"news"}}', T0)
    [req] = out
    after = s.connected(req, T0, client="c1", user="u1")  # type: ignore[arg-type]
    assert after[:2] == [CONNECTED, b'{"id":2,"ping":{}}']
    assert isinstance(after[2], SubscribeRequest) and after[2].channel == "news"


def test_too_many_commands_while_connecting() -> None:
    s = new(max_pending_commands=1)
    s.receive(CONNECT + b'\n{"id":2,"ping":{}}', T0)
    closed(s.receive(b'{"id":3,"ping":{}}', T0), 3013)


def test_failed_connect_with_an_error_reply_makes_the_connection_unusable() -> None:
    s = new()
    [req] = s.receive(CONNECT, T0)
    assert s.fail(req, ErrorCode.TOKEN_EXPIRED) == [  # type: ignore[arg-type]
        b'{"id":1,"error":{"code":109,"message":"token expired"}}'
    ]
    closed(s.receive(CONNECT, T0), 3501)


def test_failed_connect_with_a_disconnect_closes() -> None:
    s = new()
    [req] = s.receive(CONNECT, T0)
    close = closed(s.fail(req, Disconnect.of(DisconnectCode.INVALID_TOKEN)), 3500)  # type: ignore[arg-type]
    assert close.reason == "invalid token" and not close.reconnect


# --- framing and limits ------------------------------------------------------------------


def test_bad_json_closes_with_3501() -> None:
    s = connected()
    closed(s.receive(b'{"id":2,"subscribe":', T0), 3501)


def test_unknown_method_closes_with_3501() -> None:
    s = connected()
    closed(s.receive(b'{"id":2,"teleport":{}}', T0), 3501)


def test_command_without_id_closes() -> None:
    s = connected()
    closed(s.receive(b'{"ping":{}}', T0), 3501)


def test_oversize_command_and_frame() -> None:
    s = connected(max_command_size=64)
    big = b'{"id":2,"subscribe":{"channel":"' + b"a" * 64 + b'"}}'
    closed(s.receive(big, T0), 3501)
    s = connected(max_frame_size=100)
    closed(s.receive(b'{"id":2,"ping":{}}\n' * 6, T0), 3501)


def test_several_commands_in_one_frame() -> None:
    s = connected()
    out = s.receive(b'{"id":2,"subscribe":{"channel":"news"}}\n{"id":3,"ping":{}}\n', T0)
    assert isinstance(out[0], SubscribeRequest) and out[0].id == 2
    assert out[1] == b'{"id":3,"ping":{}}'


def test_commands_after_a_protocol_error_in_the_same_frame_are_not_run() -> None:
    s = connected()
    out = s.receive(b'{"id":2,"connect":{}}\n{"id":3,"ping":{}}', T0)
    assert len(out) == 1
    closed(out, 3501)


def test_rate_limit_answers_too_many_requests_then_refills() -> None:
    s = connected(commands_per_second=1.0, command_burst=2)  # connect took one token
    assert s.receive(b'{"id":2,"ping":{}}', T0) == [b'{"id":2,"ping":{}}']
    limited = b'{"id":3,"error":{"code":111,"message":"too many requests","temporary":true}}'
    assert s.receive(b'{"id":3,"ping":{}}', T0) == [limited]
    assert s.receive(b'{"send":{"data":1}}', T0) == []  # no id: dropped silently
    assert s.receive(b"{}", T0) == []  # pongs are never limited
    assert s.receive(b'{"id":4,"ping":{}}', T0 + 1.0) == [b'{"id":4,"ping":{}}']


def test_max_subscriptions() -> None:
    s = connected(max_subscriptions=2)
    subscribe(s, "a", 2)
    subscribe(s, "b", 3)
    assert s.receive(b'{"id":4,"subscribe":{"channel":"c"}}', T0) == [
        b'{"id":4,"error":{"code":106,"message":"limit exceeded"}}'
    ]


# --- subscriptions -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channel", "code"),
    [
        ("nope:x", 102),
        ("bad channel", 107),
        ("a" * 256, 107),
        ("priv:x", 103),
        ("$news", 103),
        ("dm:talk#u2,u3", 103),
    ],
)
def test_subscribe_refusals(channel: str, code: int) -> None:
    s = connected()
    [reply] = s.receive(f'{{"id":2,"subscribe":{{"channel":"{channel}"}}}}', T0)
    assert isinstance(reply, bytes) and reply.startswith(b'{"id":2,"error":{"code":%d' % code)


def test_private_and_user_limited_subscriptions_that_pass() -> None:
    s = connected()
    req = subscribe(s, "priv:x", extra=',"token":"sub-token"')
    assert req.token == "sub-token" and req.options.private
    subscribe(s, "dm:talk#u1,u2", 3)


def test_already_subscribed_also_while_in_flight() -> None:
    s = connected()
    subscribe(s, "news")
    assert s.receive(b'{"id":3,"subscribe":{"channel":"news"}}', T0) == [
        b'{"id":3,"error":{"code":105,"message":"already subscribed"}}'
    ]


def test_ephemeral_subscribe_reply_is_empty() -> None:
    s = connected()
    req = subscribe(s, "news")
    assert s.subscribed(req, T0) == [b'{"id":2,"subscribe":{}}']
    assert s.is_subscribed("news") and s.channels == {"news"} and s.positions() == {}


def test_durable_subscribe_reply_carries_the_position() -> None:
    s = connected()
    req = subscribe(s, "chat:1")
    out = s.subscribed(req, T0, position=StreamPosition(5, "e1"))
    assert out == [
        b'{"id":2,"subscribe":{"recoverable":true,"epoch":"e1","offset":5,"positioned":true}}'
    ]
    assert s.positions() == {"chat:1": StreamPosition(5, "e1")}


def test_recovered_subscribe_reply() -> None:
    s = connected()
    req = subscribe(s, "chat:1", extra=',"recover":true,"epoch":"e1","offset":3')
    assert req.since == StreamPosition(3, "e1")
    history = HistoryResult(StreamPosition(5, "e1"), (pub(4), pub(5)))
    out = s.subscribed(req, T0, position=StreamPosition(5, "e1"), history=history)
    assert out == [
        b'{"id":2,"subscribe":{"recoverable":true,"epoch":"e1","publications":['
        b'{"data":{"n":4},"offset":4},{"data":{"n":5},"offset":5}],"recovered":true,'
        b'"offset":3,"positioned":true,"was_recovering":true}}'
    ]
    assert s.positions() == {"chat:1": StreamPosition(5, "e1")}


def test_unrecoverable_subscribe_reply_has_no_publications() -> None:
    s = connected()
    req = subscribe(s, "chat:1", extra=',"recover":true,"epoch":"old","offset":3')
    history = HistoryResult(StreamPosition(5, "e2"), (pub(4, "e2"), pub(5, "e2")))
    out = s.subscribed(req, T0, position=StreamPosition(5, "e2"), history=history)
    assert out == [
        b'{"id":2,"subscribe":{"recoverable":true,"epoch":"e2","offset":5,"positioned":true,'
        b'"was_recovering":true}}'
    ]


def test_latest_delivery_recovers_only_the_newest_publication() -> None:
    s = connected()
    req = subscribe(s, "last:x", extra=',"recover":true,"epoch":"e1","offset":2')
    newest = pub(9, channel="last:x")
    history = HistoryResult(StreamPosition(9, "e1"), (newest,))
    [reply] = s.subscribed(req, T0, position=StreamPosition(9, "e1"), history=history)
    assert b'"publications":[{"data":{"n":9},"offset":9}],"recovered":true,"offset":2' in reply  # type: ignore[operator]
    assert s.on_publication(pub(11, channel="last:x")) is Delivery.DELIVER  # gaps are fine


def test_subscribe_failure_frees_the_channel() -> None:
    s = connected()
    req = subscribe(s, "priv:x", extra=',"token":"bad"')
    assert s.fail(req, ErrorCode.PERMISSION_DENIED) == [
        b'{"id":2,"error":{"code":103,"message":"permission denied"}}'
    ]
    subscribe(s, "priv:x", 3, extra=',"token":"good"')


def test_unsubscribe_replies_and_tells_the_hub() -> None:
    s = connected()
    req = subscribe(s, "news")
    s.subscribed(req, T0)
    assert s.receive(b'{"id":3,"unsubscribe":{"channel":"news"}}', T0) == [
        b'{"id":3,"unsubscribe":{}}',
        UnsubscribeRequest("news"),
    ]
    assert s.receive(b'{"id":4,"unsubscribe":{"channel":"news"}}', T0) == [
        b'{"id":4,"unsubscribe":{}}'
    ]


def test_unsubscribe_during_subscribe_drops_the_late_result() -> None:
    s = connected()
    req = subscribe(s, "news")
    s.receive(b'{"id":3,"unsubscribe":{"channel":"news"}}', T0)
    assert s.subscribed(req, T0) == []
    assert not s.is_subscribed("news")


def test_server_unsubscribe_pushes() -> None:
    s = connected()
    s.subscribed(subscribe(s, "news"), T0)
    assert s.server_unsubscribe("news") == [
        b'{"push":{"channel":"news","unsubscribe":{"code":2000,"reason":"server unsubscribe"}}}'
    ]
    assert s.server_unsubscribe("news", UnsubscribeCode.EXPIRED) == []


def test_server_side_subscriptions_in_the_connect_reply() -> None:
    s = new()
    [req] = s.receive(
        b'{"id":1,"connect":{"subs":{"chat:1":{"recover":true,"epoch":"e1","offset":4}}}}', T0
    )
    ss = ServerSubscription(
        CHAT, StreamPosition(5, "e1"), HistoryResult(StreamPosition(5, "e1"), (pub(5),))
    )
    [reply] = s.connected(req, T0, client="c1", user="u1", subs={"chat:1": ss})  # type: ignore[arg-type]
    assert reply == (
        b'{"id":1,"connect":{"client":"c1","version":"9.9","subs":{"chat:1":{"recoverable":true,'
        b'"epoch":"e1","publications":[{"data":{"n":5},"offset":5}],"recovered":true,'
        b'"offset":4,"positioned":true,"was_recovering":true}},"ping":25,"pong":true}}'
    )
    assert s.positions() == {"chat:1": StreamPosition(5, "e1")}


# --- publications ------------------------------------------------------------------------


def test_publications_are_delivered_in_order_and_deduplicated() -> None:
    s = connected()
    s.subscribed(subscribe(s, "chat:1"), T0, position=StreamPosition(5, "e1"))
    assert s.on_publication(pub(6)) is Delivery.DELIVER
    assert s.on_publication(pub(6)) is Delivery.DROP
    assert s.on_publication(pub(3)) is Delivery.DROP
    assert s.on_publication(pub(1, channel="other")) is Delivery.DROP
    assert s.positions() == {"chat:1": StreamPosition(6, "e1")}


def test_a_batch_that_follows_on_is_taken_whole_and_moves_the_offset() -> None:
    s = connected()
    s.subscribed(subscribe(s, "chat:1"), T0, position=StreamPosition(5, "e1"))
    assert s.on_batch("chat:1", "e1", 6, 9) is True
    assert s.positions() == {"chat:1": StreamPosition(9, "e1")}
    assert s.on_publication(pub(10)) is Delivery.DELIVER


@pytest.mark.parametrize(
    ("channel", "epoch", "first", "last"),
    [
        ("chat:1", "e1", 7, 9),  # a gap before it
        ("chat:1", "e1", 5, 9),  # overlaps what the client has
        ("chat:1", "e2", 6, 9),  # another epoch
        ("chat:1", "e1", 0, 0),  # not known to be contiguous
        ("other", "e1", 6, 9),  # not subscribed
    ],
)
def test_a_batch_off_the_steady_state_changes_nothing(
    channel: str, epoch: str, first: int, last: int
) -> None:
    s = connected()
    s.subscribed(subscribe(s, "chat:1"), T0, position=StreamPosition(5, "e1"))
    assert s.on_batch(channel, epoch, first, last) is False
    assert s.positions() == {"chat:1": StreamPosition(5, "e1")}
    assert s.closed_with is None


def test_a_batch_waits_while_the_subscribe_is_in_flight() -> None:
    s = connected()
    subscribe(s, "chat:1")
    assert s.on_batch("chat:1", "e1", 6, 9) is False


@pytest.mark.parametrize("bad", [pub(8), pub(7, epoch="e2")])
def test_a_gap_or_new_epoch_closes_with_insufficient_state(bad: Publication) -> None:
    s = connected()
    s.subscribed(subscribe(s, "chat:1"), T0, position=StreamPosition(6, "e1"))
    assert s.on_publication(bad) is Delivery.RESYNC
    assert s.closed_with == Close(3010, "insufficient state", reconnect=True, channels=("chat:1",))
    assert s.on_publication(pub(7)) is Delivery.DROP


def test_publications_during_subscribe_are_buffered_then_merged() -> None:
    s = connected()
    req = subscribe(s, "chat:1")
    assert [s.on_publication(pub(n)) for n in (5, 6, 7)] == [Delivery.BUFFERED] * 3
    out = s.subscribed(req, T0, position=StreamPosition(6, "e1"))
    assert out[1:] == [b'{"push":{"channel":"chat:1","pub":{"data":{"n":7},"offset":7}}}']
    assert s.on_publication(pub(8)) is Delivery.DELIVER


def test_buffered_gap_closes_after_the_reply() -> None:
    s = connected()
    req = subscribe(s, "chat:1")
    s.on_publication(pub(9))
    out = s.subscribed(req, T0, position=StreamPosition(6, "e1"))
    assert out[0].startswith(b'{"id":2,"subscribe"')  # type: ignore[union-attr]
    closed(out, 3010)


def test_buffer_overflow_closes() -> None:
    s = connected(max_buffered_publications=1)
    subscribe(s, "chat:1")
    assert s.on_publication(pub(1)) is Delivery.BUFFERED
    assert s.on_publication(pub(2)) is Delivery.RESYNC
    assert s.state is State.CLOSED


# --- channel commands --------------------------------------------------------------------


def test_publish_history_presence_requests() -> None:
    s = connected()
    out = s.receive(
        b'{"id":2,"publish":{"channel":"chat:1","data":{"t":1}}}\n'
        b'{"id":3,"history":{"channel":"chat:1","limit":5}}\n'
        b'{"id":4,"presence":{"channel":"chat:1"}}',
        T0,
    )
    assert out == [
        PublishRequest(2, "chat:1", b'{"t":1}', CHAT),
        HistoryRequest(3, "chat:1", 5, None, False),
        PresenceRequest(4, "chat:1"),
    ]
    assert s.reply(out[0], PublishResult()) == [b'{"id":2,"publish":{}}']  # type: ignore[arg-type]
    assert s.reply(out[1], HistoryReply((), "e1", 0)) == [  # type: ignore[arg-type]
        b'{"id":3,"history":{"publications":[],"epoch":"e1","offset":0}}'
    ]
    with pytest.raises(ValueError):
        s.reply(SendRequest(b"1"), PublishResult())


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b'{"id":2,"publish":{"channel":"news","data":1}}', 103),
        (b'{"id":2,"publish":{"channel":"nope:x","data":1}}', 102),
        (b'{"id":2,"history":{"channel":"news"}}', 108),
        (b'{"id":2,"history":{"channel":"feed:x"}}', 103),
        (b'{"id":2,"presence":{"channel":"news"}}', 108),
        (b'{"id":2,"presence_stats":{"channel":"feed:x"}}', 108),
        (b'{"id":2,"sub_refresh":{"channel":"news","token":"t"}}', 103),
    ],
)
def test_channel_command_refusals(frame: bytes, code: int) -> None:
    s = connected()
    [reply] = s.receive(frame, T0)
    assert reply.startswith(b'{"id":2,"error":{"code":%d' % code)  # type: ignore[union-attr]


def test_send_rpc_and_refresh() -> None:
    s = connected()
    out = s.receive(b'{"send":{"data":{"a":1}}}\n{"id":2,"refresh":{"token":"new"}}', T0)
    assert out == [SendRequest(b'{"a":1}'), RefreshRequest(2, "new")]
    assert s.refreshed(out[1], T0, ttl=120) == [  # type: ignore[arg-type]
        b'{"id":2,"refresh":{"client":"c1","version":"9.9","expires":true,"ttl":120}}'
    ]
    s.subscribed(subscribe(s, "news", 3), T0)
    [req] = s.receive(b'{"id":4,"sub_refresh":{"channel":"news","token":"t"}}', T0)
    assert req == SubRefreshRequest(4, "news", "t")
    assert s.sub_refreshed(req, T0, ttl=None) == [b'{"id":4,"sub_refresh":{}}']


# --- heartbeats, expiry, close -----------------------------------------------------------


def test_ping_pong() -> None:
    s = connected(ping_interval=25, pong_timeout=10)
    assert s.next_deadline() == T0 + 25
    assert s.heartbeat(T0 + 24) == []
    assert s.heartbeat(T0 + 25) == [PING]
    assert s.next_deadline() == T0 + 35
    assert s.receive(b"{}", T0 + 26) == []
    assert s.heartbeat(T0 + 40) == []
    assert s.heartbeat(T0 + 50) == [PING]


def test_no_pong_closes() -> None:
    s = connected(ping_interval=25, pong_timeout=10)
    s.heartbeat(T0 + 25)
    closed(s.heartbeat(T0 + 35), 3012)


def test_stale_connection_closes() -> None:
    s = new(stale_timeout=10)
    assert s.heartbeat(T0 + 9) == []
    assert s.next_deadline() == T0 + 10
    closed(s.heartbeat(T0 + 10), 3502)


def test_connection_expires_unless_refreshed() -> None:
    s = new(expire_grace=5, ping_interval=0)
    [req] = s.receive(CONNECT, T0)
    s.connected(req, T0, client="c1", user="u1", ttl=60)  # type: ignore[arg-type]
    assert s.next_deadline() == T0 + 65
    [refresh] = s.receive(b'{"id":2,"refresh":{"token":"t"}}', T0 + 50)
    s.refreshed(refresh, T0 + 50, ttl=60)  # type: ignore[arg-type]
    assert s.heartbeat(T0 + 100) == []
    closed(s.heartbeat(T0 + 115), 3005)


def test_subscription_expires() -> None:
    s = connected(expire_grace=0, ping_interval=0)
    s.subscribed(subscribe(s, "news"), T0, ttl=30)
    assert s.next_deadline() == T0 + 30
    closed(s.heartbeat(T0 + 30), 3006)


def test_close_is_idempotent_and_lists_channels() -> None:
    s = connected()
    s.subscribed(subscribe(s, "news"), T0)
    subscribe(s, "chat:1", 3)
    first = s.close(Disconnect.of(DisconnectCode.SHUTDOWN))
    assert first == Close(3001, "shutdown", reconnect=True, channels=("news", "chat:1"))
    assert s.close(Disconnect.of(DisconnectCode.CONNECTION_CLOSED)) is first
    assert s.receive(b'{"id":9,"ping":{}}', T0) == []
    assert s.heartbeat(T0 + 100) == [] and s.next_deadline() is None


@pytest.mark.parametrize(
    ("channel", "extra", "wants"),
    [
        ("chat:1", "", False),  # the namespace publishes join/leave, the client did not ask
        ("chat:1", ',"join_leave":true', True),
        ("lobby:1", "", True),  # pushed to every subscriber
        ("feed:1", ',"join_leave":true', False),  # the namespace has none to give
    ],
)
def test_join_leave_pushes_go_to_those_who_ask(channel: str, extra: str, wants: bool) -> None:
    s = connected()
    req = subscribe(s, channel, extra=extra)
    assert s.wants_join_leave(channel) is False  # not before the reply
    s.subscribed(req, T0)
    assert s.wants_join_leave(channel) is wants
