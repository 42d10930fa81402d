"""Segment filters: which subscribers a segment holds, in the workflow condition language.

A filter is a condition (see :mod:`tidings.core.notify.conditions`) whose paths all start at
the ``subscriber`` root and name a profile field: ``subscriber.id``, ``subscriber.email``,
``subscriber.phone``, ``subscriber.locale``, ``subscriber.timezone`` or custom data,
``subscriber.data.<field>[.<field>...]``. For example::

    {"subscriber.locale": {"in": ["de", "de-AT"]},
     "subscriber.email": {"exists": true},
     "subscriber.data.orders": {"gte": 3},
     "not": {"subscriber.data.plan": "free"}}

A profile field that is not set is missing (not null) in a segment's context, so
``{"exists": true}`` means "has one" and every other operator is false on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from tidings.core.notify.conditions import All, AnyOf, Compare, Condition, Not, evaluate
from tidings.core.notify.conditions import parse_condition as _parse_condition
from tidings.errors import InvalidInput

PROFILE_FIELDS: Final = ("id", "email", "phone", "locale", "timezone")
DATA: Final = "data"


def parse_filter(spec: Any, field: str = "filter") -> Condition:
    """Parse a segment filter; :class:`InvalidInput` names the bad part (``filter.<path>``)."""
    condition = _parse_condition(spec, field)
    for c in compares(condition):
        _check_path(c.path, field)
    return condition


def compares(condition: Condition) -> list[Compare]:
    """Every comparison in a condition, depth first."""
    if isinstance(condition, All | AnyOf):
        return [c for item in condition.items for c in compares(item)]
    if isinstance(condition, Not):
        return compares(condition.item)
    return [condition]


def _check_path(path: tuple[str, ...], field: str) -> None:
    where = f"{field}.{'.'.join(path)}"
    known = ", ".join(f"subscriber.{f}" for f in PROFILE_FIELDS) + " and subscriber.data.<field>"
    if path[0] != "subscriber" or len(path) < 2:
        raise InvalidInput(f"a segment filters on {known}", field=where)
    if path[1] == DATA:
        return
    if path[1] not in PROFILE_FIELDS or len(path) > 2:
        raise InvalidInput(f"unknown field {'.'.join(path)!r}: use {known}", field=where)


def context(
    subscriber_id: str,
    *,
    email: str | None = None,
    phone: str | None = None,
    locale: str | None = None,
    timezone: str | None = None,
    data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The condition context of one subscriber: fields that are not set are left out."""
    profile: dict[str, Any] = {"id": subscriber_id, DATA: dict(data or {})}
    for name, value in (
        ("email", email),
        ("phone", phone),
        ("locale", locale),
        ("timezone", timezone),
    ):
        if value is not None:
            profile[name] = value
    return {"subscriber": profile}


def matches(where: Condition | None, subscriber: Mapping[str, Any]) -> bool:
    """Whether the subscriber of a context (see `context`) is in the segment; no filter holds
    everyone."""
    return where is None or evaluate(where, subscriber)
