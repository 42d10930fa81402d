from __future__ import annotations

from typing import Any

import pytest

from tidings.core.channels import (
    ChannelError,
    ChannelName,
    ChannelResolver,
    DeliveryClass,
    NamespaceOptions,
    UnknownChannel,
    options_from_config,
    parse_channel,
    parse_duration,
    validate_channel,
)


@pytest.mark.parametrize(
    ("channel", "expected"),
    [
        ("news", ChannelName("news", "", False, None)),
        ("chat:room-1", ChannelName("chat:room-1", "chat", False, None)),
        ("chat:a:b", ChannelName("chat:a:b", "chat", False, None)),
        ("$gossips", ChannelName("$gossips", "", True, None)),
        ("$dialogs:x", ChannelName("$dialogs:x", "dialogs", True, None)),
        ("dm:talk#42,43", ChannelName("dm:talk#42,43", "dm", False, frozenset({"42", "43"}))),
        ("news#", ChannelName("news#", "", False, frozenset())),
    ],
)
def test_parse(channel: str, expected: ChannelName) -> None:
    assert parse_channel(channel) == expected


@pytest.mark.parametrize("channel", ["", "a" * 256, "has space", "ünïcode", "a*b", "a&b", 'q"'])
def test_invalid_names(channel: str) -> None:
    with pytest.raises(ChannelError) as info:
        validate_channel(channel)
    assert info.value.field == "channel"


def test_length_limit_is_inclusive_and_configurable() -> None:
    validate_channel("a" * 255)
    with pytest.raises(ChannelError):
        parse_channel("abcd", max_length=3)


def test_namespace_must_look_like_one() -> None:
    with pytest.raises(ChannelError, match="bad namespace"):
        parse_channel("x:room")  # namespace names have at least 2 characters


def test_resolver() -> None:
    chat = NamespaceOptions(presence=True)
    resolver = ChannelResolver(NamespaceOptions(join_leave=True), {"chat": chat})
    assert resolver.options("news").join_leave
    assert resolver.options("chat:1") is chat
    assert resolver.options("$chat:1") is chat
    with pytest.raises(UnknownChannel) as info:
        resolver.options("other:1")
    assert info.value.field == "channel"
    assert resolver.options("chat:#u1,u2") is chat  # a user-limited channel
    assert resolver.options_for(parse_channel("$chat:#u1")) is chat
    for bad, message in (
        ("x:room", "bad namespace"),
        ("chat:1 2", "may contain only"),
        ("", "empty"),
    ):
        with pytest.raises(ChannelError, match=message):
            resolver.options(bad)
    with pytest.raises(ChannelError, match="longer than 8"):
        ChannelResolver(max_length=8).options("chat:1234")
    with pytest.raises(ChannelError):
        ChannelResolver(namespaces={"x": chat})


def test_from_config_toml_shape() -> None:
    resolver = ChannelResolver.from_config(
        {
            "default": {"presence": True},
            "namespaces": {
                "chat": {"history_size": 100, "history_ttl": "5m", "join_leave": True},
                "prices": {"delivery": "latest"},
                "private-room": {"private": True, "allow_publish_for_client": True},
            },
        }
    )
    assert resolver.options("news") == NamespaceOptions(presence=True)
    chat = resolver.options("chat:1")
    assert chat.delivery is DeliveryClass.DURABLE and chat.history_ttl == 300.0
    assert chat.history_size == 100 and chat.join_leave and chat.positioned
    prices = resolver.options("prices:eur")
    assert (prices.delivery, prices.history_size, prices.history_ttl) == (
        DeliveryClass.LATEST,
        1,
        300.0,
    )
    assert resolver.options("private-room:1").private
    assert set(resolver.namespaces) == {"chat", "prices", "private-room"}


def test_from_config_centrifugo_list_shape() -> None:
    resolver = ChannelResolver.from_config(
        {"namespaces": [{"name": "chat", "history_size": 10, "history_ttl": 30}]}
    )
    assert resolver.options("chat:1").history_ttl == 30.0


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"colour": 1}, "channels.colour"),
        ({"max_length": 0}, "max_length"),
        ({"default": []}, "default"),
        ({"namespaces": 3}, "namespaces"),
        ({"namespaces": [{"history_size": 1}]}, "namespaces.0"),
        ({"namespaces": [{"name": "ab"}, {"name": "ab"}]}, "namespaces.ab"),
        ({"namespaces": {"a b": {}}}, "namespaces.a b"),
        ({"namespaces": {"chat": {"presense": True}}}, "namespaces.chat.presense"),
        ({"namespaces": {"chat": {"presence": "yes"}}}, "namespaces.chat.presence"),
        ({"namespaces": {"chat": {"history_size": -1}}}, "namespaces.chat.history_size"),
        ({"namespaces": {"chat": {"history_size": True}}}, "namespaces.chat.history_size"),
        ({"namespaces": {"chat": {"history_ttl": "soon"}}}, "namespaces.chat.history_ttl"),
        ({"namespaces": {"chat": {"delivery": "eventual"}}}, "namespaces.chat.delivery"),
        (
            {"namespaces": {"chat": {"delivery": "durable", "history_ttl": 5}}},
            "namespaces.chat.history_size",
        ),
        (
            {"namespaces": {"chat": {"delivery": "ephemeral", "history_size": 5}}},
            "namespaces.chat.delivery",
        ),
        (
            {"namespaces": {"chat": {"delivery": "latest", "history_size": 3}}},
            "namespaces.chat.history_size",
        ),
        ({"default": {"history_size": 5, "history_ttl": 0}}, "default.history_ttl"),
    ],
)
def test_config_errors_name_the_field(config: dict[str, Any], field: str) -> None:
    with pytest.raises(ChannelError) as info:
        ChannelResolver.from_config(config)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (5, 5.0),
        (2.5, 2.5),
        ("30", 30.0),
        ("250ms", 0.25),
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("7d", 604800.0),
        ("1.5h", 5400.0),
    ],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "5 minutes", "-1s", -1, True, None, float("nan")])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ChannelError):
        parse_duration(value, "x")


def test_options_from_config_defaults() -> None:
    assert options_from_config({}) == NamespaceOptions()
    assert options_from_config({"history_size": 3}).delivery is DeliveryClass.DURABLE
