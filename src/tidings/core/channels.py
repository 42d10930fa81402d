"""Channel names and the options of the namespaces they belong to.

A channel is ``namespace:name`` or, without a ``:``, a channel of the default namespace. Two
more boundaries follow Centrifugo: a leading ``$`` marks a private channel (a subscription
token is always required) and ``#`` ends the name with a comma separated list of the only
users allowed in (``dialogs:chat#42,43``), when the namespace has ``allow_user_limited``.

Options come from configuration shaped like this TOML::

    [channels.default]
    presence = true

    [channels.namespaces.chat]
    history_size = 100
    history_ttl = "5m"
    join_leave = true
    allow_publish_for_client = true
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from tidings.errors import InvalidInput
from tidings.records import record

MAX_CHANNEL_LENGTH = 255
NAMESPACE_SEPARATOR = ":"
USER_SEPARATOR = "#"
PRIVATE_PREFIX = "$"

# ASCII only; `*` and `&` are reserved (as in Centrifugo), whitespace and quotes never occur.
_CHANNEL_RE = re.compile(r"[A-Za-z0-9_\-.:@#$,=+!~;/|]+")
_NAMESPACE_RE = re.compile(r"[A-Za-z0-9_\-]{2,}")
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)?")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class ChannelError(InvalidInput):
    """A channel name or a channel configuration is not acceptable."""

    code = "invalid_channel"


class UnknownChannel(ChannelError):
    """The channel's namespace is not configured (protocol error 102)."""

    code = "unknown_channel"


class DeliveryClass(enum.StrEnum):
    DURABLE = "durable"  # kept in history; subscribers recover what they missed
    EPHEMERAL = "ephemeral"  # delivered live only, never kept
    LATEST = "latest"  # only the newest publication is kept; resubscribers get just that one


@record
class NamespaceOptions:
    history_size: int = 0
    history_ttl: float = 0.0  # seconds
    presence: bool = False
    join_leave: bool = False  # publish join/leave to subscribers that ask for them
    force_push_join_leave: bool = False  # ... and to every subscriber, asked or not
    allow_publish_for_client: bool = False
    allow_history_for_client: bool = False
    allow_presence_for_client: bool = False
    private: bool = False  # subscribing needs a subscription token
    allow_user_limited: bool = False  # `name#u1,u2` admits only the listed users
    delivery: DeliveryClass = DeliveryClass.EPHEMERAL

    def __post_init__(self) -> None:
        if self.history_size < 0:
            raise ChannelError("history_size must be >= 0", field="history_size")
        if self.history_ttl < 0:
            raise ChannelError("history_ttl must be >= 0", field="history_ttl")
        if self.delivery is DeliveryClass.EPHEMERAL and self.history_size:
            raise ChannelError(
                "an ephemeral namespace keeps no history: set delivery or drop history_size",
                field="delivery",
            )
        if self.delivery is DeliveryClass.DURABLE and not self.history_enabled:
            raise ChannelError(
                "durable delivery needs history_size > 0 and history_ttl > 0",
                field="history_size" if self.history_size <= 0 else "history_ttl",
            )
        if self.delivery is DeliveryClass.LATEST and (
            self.history_size != 1 or self.history_ttl <= 0
        ):
            raise ChannelError(
                "latest delivery keeps exactly one publication (history_size = 1, history_ttl > 0)",
                field="history_size" if self.history_size != 1 else "history_ttl",
            )

    @property
    def history_enabled(self) -> bool:
        return self.history_size > 0 and self.history_ttl > 0

    @property
    def positioned(self) -> bool:
        """Publications carry offsets that subscribers track and can recover from."""
        return self.delivery is not DeliveryClass.EPHEMERAL


@record
class ChannelName:
    channel: str
    namespace: str  # "" for the default namespace
    private: bool  # starts with `$`
    users: frozenset[str] | None  # after `#`, if any


def validate_channel(channel: str, *, max_length: int = MAX_CHANNEL_LENGTH) -> None:
    """Raise `ChannelError` unless `channel` is 1..max_length allowed ASCII characters."""
    if not channel:
        raise ChannelError("channel is empty", field="channel")
    if len(channel) > max_length:
        raise ChannelError(f"channel longer than {max_length} characters", field="channel")
    if not _CHANNEL_RE.fullmatch(channel):
        raise ChannelError(
            "channel may contain only ASCII letters, digits and _-.:@#$,=+!~;/|",
            field="channel",
        )


def _namespace(body: str) -> str:
    """The namespace of a channel without its private prefix ("" for the default)."""
    namespace, separator, _ = body.partition(NAMESPACE_SEPARATOR)
    if not separator:
        return ""
    if not _NAMESPACE_RE.fullmatch(namespace):
        raise ChannelError(f"bad namespace in channel: {namespace!r}", field="channel")
    return namespace


def parse_channel(channel: str, *, max_length: int = MAX_CHANNEL_LENGTH) -> ChannelName:
    """Validate and split a channel into its namespace, private flag and allowed users."""
    validate_channel(channel, max_length=max_length)
    private = channel.startswith(PRIVATE_PREFIX)
    body = channel[1:] if private else channel
    namespace = _namespace(body)
    users: frozenset[str] | None = None
    if USER_SEPARATOR in body:
        listed = body.rsplit(USER_SEPARATOR, 1)[1]
        users = frozenset(u for u in listed.split(",") if u)
    return ChannelName(channel=channel, namespace=namespace, private=private, users=users)


class ChannelResolver:
    """Maps channels to the options of their namespace."""

    __slots__ = ("_default", "_max_length", "_namespaces")

    def __init__(
        self,
        default: NamespaceOptions | None = None,
        namespaces: Mapping[str, NamespaceOptions] | None = None,
        *,
        max_length: int = MAX_CHANNEL_LENGTH,
    ) -> None:
        self._default = default or NamespaceOptions()
        self._namespaces = dict(namespaces or {})
        self._max_length = max_length
        for name in self._namespaces:
            if not _NAMESPACE_RE.fullmatch(name):
                raise ChannelError(
                    f"namespace name {name!r} must match [A-Za-z0-9_-]{{2,}}", field="namespaces"
                )

    @property
    def namespaces(self) -> Mapping[str, NamespaceOptions]:
        return dict(self._namespaces)

    def parse(self, channel: str) -> ChannelName:
        return parse_channel(channel, max_length=self._max_length)

    def options(self, channel: str) -> NamespaceOptions:
        """The channel's options; `UnknownChannel` if its namespace is not configured,
        `ChannelError` if the name is invalid. (Every publish asks: the name is checked and
        its namespace read without parsing the rest.)"""
        validate_channel(channel, max_length=self._max_length)
        body = channel[1:] if channel.startswith(PRIVATE_PREFIX) else channel
        return self._options(_namespace(body))

    def options_for(self, name: ChannelName) -> NamespaceOptions:
        return self._options(name.namespace)

    def _options(self, namespace: str) -> NamespaceOptions:
        if not namespace:
            return self._default
        try:
            return self._namespaces[namespace]
        except KeyError:
            raise UnknownChannel(f"unknown namespace: {namespace!r}", field="channel") from None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ChannelResolver:
        """Build from `{"default": {...}, "namespaces": {name: {...}}, "max_length": 255}`.

        `namespaces` may also be a list of tables with a `name` key (Centrifugo's shape).
        Errors name the offending field, e.g. `namespaces.chat.history_ttl`.
        """
        _check_keys(config, {"default", "namespaces", "max_length"}, "channels")
        max_length = config.get("max_length", MAX_CHANNEL_LENGTH)
        if not _is_int(max_length) or not 1 <= max_length <= 1024:
            raise ChannelError("must be an integer in 1..1024", field="max_length")
        default_table = config.get("default")
        default = options_from_config({} if default_table is None else default_table, "default")
        raw = config.get("namespaces")
        raw = {} if raw is None else raw
        items: list[tuple[str, Any]]
        if isinstance(raw, Mapping):
            items = list(raw.items())
        elif isinstance(raw, list):
            items = []
            for i, table in enumerate(raw):
                if not isinstance(table, Mapping) or not isinstance(table.get("name"), str):
                    raise ChannelError("needs a string `name`", field=f"namespaces.{i}")
                items.append((table["name"], {k: v for k, v in table.items() if k != "name"}))
        else:
            raise ChannelError("must be a table or a list of tables", field="namespaces")
        namespaces: dict[str, NamespaceOptions] = {}
        for name, table in items:
            where = f"namespaces.{name}"
            if not isinstance(name, str) or not _NAMESPACE_RE.fullmatch(name):
                raise ChannelError("namespace name must match [A-Za-z0-9_-]{2,}", field=where)
            if name in namespaces:
                raise ChannelError("namespace defined twice", field=where)
            namespaces[name] = options_from_config(table, where)
        return cls(default, namespaces, max_length=max_length)


_BOOL_FIELDS = {f.name for f in fields(NamespaceOptions) if f.type in ("bool", bool)}


def options_from_config(table: Any, where: str = "options") -> NamespaceOptions:
    """Build `NamespaceOptions` from one configuration table.

    `delivery` defaults to durable when history is configured and ephemeral otherwise;
    `latest` defaults `history_size` to 1. `history_ttl` is seconds or a duration string
    (`"90s"`, `"5m"`, `"1h"`, `"7d"`); durable and latest history default to 300 seconds.
    """
    if not isinstance(table, Mapping):
        raise ChannelError("must be a table", field=where)
    known = {f.name for f in fields(NamespaceOptions)}
    _check_keys(table, known, where)
    kwargs: dict[str, Any] = {}
    for key in _BOOL_FIELDS & table.keys():
        if not isinstance(table[key], bool):
            raise ChannelError("must be true or false", field=f"{where}.{key}")
        kwargs[key] = table[key]
    if "history_size" in table:
        size = table["history_size"]
        if not _is_int(size) or size < 0:
            raise ChannelError("must be an integer >= 0", field=f"{where}.history_size")
        kwargs["history_size"] = size
    if "history_ttl" in table:
        kwargs["history_ttl"] = parse_duration(table["history_ttl"], f"{where}.history_ttl")
    if "delivery" in table:
        try:
            delivery = DeliveryClass(table["delivery"])
        except ValueError:
            allowed = ", ".join(d.value for d in DeliveryClass)
            raise ChannelError(f"must be one of {allowed}", field=f"{where}.delivery") from None
    else:
        delivery = DeliveryClass.DURABLE if kwargs.get("history_size") else DeliveryClass.EPHEMERAL
    kwargs["delivery"] = delivery
    if delivery is DeliveryClass.LATEST:
        kwargs.setdefault("history_size", 1)
    if delivery is not DeliveryClass.EPHEMERAL:
        kwargs.setdefault("history_ttl", 300.0)
    try:
        return NamespaceOptions(**kwargs)
    except ChannelError as exc:
        raise ChannelError(exc.message, field=f"{where}.{exc.field}") from None


def parse_duration(value: Any, field: str = "duration") -> float:
    """Seconds from a number or a string like `"250ms"`, `"30s"`, `"5m"`, `"2h"`, `"7d"`."""
    if _is_int(value) or isinstance(value, float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION_RE.fullmatch(value.strip())):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ChannelError("must be seconds or a duration like 30s, 5m, 1h, 7d", field=field)
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ChannelError("must be a finite duration >= 0", field=field)
    return seconds


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_keys(table: Mapping[str, Any], known: set[str], where: str) -> None:
    for key in table:
        if key not in known:
            raise ChannelError(f"unknown option {key!r}", field=f"{where}.{key}")
