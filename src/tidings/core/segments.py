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
from typing import Any, Final, Protocol

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


class Profile(Protocol):
    """The profile fields a segment filters on (a stored subscriber or a row of one)."""

    @property
    def id(self) -> str: ...
    @property
    def email(self) -> str | None: ...
    @property
    def phone(self) -> str | None: ...
    @property
    def locale(self) -> str | None: ...
    @property
    def timezone(self) -> str | None: ...
    @property
    def data(self) -> Mapping[str, Any]: ...


def context(profile: Profile) -> dict[str, Any]:
    """The condition context of one subscriber: fields that are not set are left out."""
    found: dict[str, Any] = {"id": profile.id, DATA: profile.data}
    for name, value in (
        ("email", profile.email),
        ("phone", profile.phone),
        ("locale", profile.locale),
        ("timezone", profile.timezone),
    ):
        if value is not None:
            found[name] = value
    return {"subscriber": found}


def matches(where: Condition | None, profile: Profile) -> bool:
    """Whether the subscriber is in the segment; no filter holds everyone."""
    return where is None or evaluate(where, context(profile))
