"""Checks shared by the parsers of workflow definitions, preferences and schedules: each
raises `InvalidInput` naming the offending path."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from tidings.core.notify.types import Channel
from tidings.errors import InvalidInput

KNOWN_CHANNELS = ", ".join(c.value for c in Channel)


def check_known(m: Mapping[Any, Any], allowed: Collection[str], where: str) -> None:
    """`InvalidInput` naming the first key of `m` not in `allowed` (the path under `where`)."""
    for key in m:
        if key not in allowed:
            path = f"{where}.{key}" if where else str(key)
            raise InvalidInput(f"unknown field {key!r}", field=path)


def required(m: Mapping[str, Any], key: str, where: str) -> Any:
    """`m[key]`, or `InvalidInput` saying `where.key` is required."""
    if key not in m:
        raise InvalidInput("is required", field=f"{where}.{key}")
    return m[key]


def check_bool(value: Any, where: str) -> bool:
    """`value` if it is a boolean, else `InvalidInput` naming `where`."""
    if not isinstance(value, bool):
        raise InvalidInput("must be true or false", field=where)
    return value


def channel(name: Any, where: str) -> Channel:
    """The channel called `name`, or `InvalidInput` naming `where` and the known ones."""
    try:
        return Channel(name)
    except ValueError:
        raise InvalidInput(
            f"unknown channel {name!r} (known: {KNOWN_CHANNELS})", field=where
        ) from None
