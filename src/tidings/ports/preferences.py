"""Ports of a subscriber's notification preferences and of the address suppression list."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Protocol

from tidings.core.notify.decisions import Preferences
from tidings.records import record


class SuppressionReason(enum.StrEnum):
    """Why an address gets nothing. The stores take and give these as plain strings."""

    HARD_BOUNCE = "hard_bounce"
    UNSUBSCRIBED = "unsubscribed"
    COMPLAINT = "complaint"
    INVALID_TOKEN = "invalid_token"  # noqa: S105 - a reason code, not a secret
    MANUAL = "manual"


@record
class Suppression:
    """An address on a channel that must get nothing."""

    channel: str
    address: str
    reason: str
    detail: str = ""
    created_at: float = 0.0

    @property
    def position(self) -> str:
        """Its place in the list order, ``"<channel>:<address>"``: pass the last item's
        position as `SuppressionStore.page(after=...)` for the next page."""
        return f"{self.channel}:{self.address}"


def split_position(after: str) -> tuple[str, str]:
    """(channel, address) of a `Suppression.position`. Channel names hold no ``:``, so the
    first one separates them; a string without one is a channel with an empty address."""
    channel, _, address = after.partition(":")
    return channel, address


class PreferenceStore(Protocol):
    """Contract:

    - One record per subscriber id, replaced whole by `put`, which returns what a later
      `get` gives back (the preferences as stored, after a round trip through their JSON
      form). `at` is recorded as the time of the change.
    - `get` of a subscriber with nothing stored is `Preferences()` (the defaults), never an
      error. The store does not check that the subscriber exists: the service does.
    - `get_many` returns only the subscribers that have something stored, keyed by id; ids
      may repeat. It reads with one query per 1000 ids (the orchestrator asks for batches of
      up to 1000), never one per subscriber.
    - `delete` removes the record; True when there was one.
    """

    async def get(self, subscriber: str) -> Preferences: ...

    async def get_many(self, subscribers: Sequence[str]) -> dict[str, Preferences]: ...

    async def put(self, subscriber: str, prefs: Preferences, at: float) -> Preferences: ...

    async def delete(self, subscriber: str) -> bool: ...


class SuppressionStore(Protocol):
    """Addresses that must get nothing on a channel: hard bounces, unsubscribes and
    complaints, invalid push tokens, manual blocks. Keyed by (channel, address), compared
    exactly: the service normalises addresses (lowercase email, E.164 phones) before they
    reach the store.

    Contract:

    - `add` is idempotent and safe under concurrency: an address already suppressed keeps
      its first reason, detail and time, and `add` answers False; True when this call added
      it. `reason` is a `SuppressionReason` value.
    - `remove` answers True when the address was suppressed.
    - `check_many` answers address -> reason for those of `addresses` that are suppressed on
      `channel` (others are absent; repeats are fine), with one query per 1000 addresses.
    - `page` lists in ascending (channel, address) order, only `channel` when given: the
      suppressions after the position `after` (see `Suppression.position`), at most `limit`.
      Keyset paging: adds and removes during a walk never repeat or skip an item that stays.
    """

    async def add(
        self, channel: str, address: str, reason: str, at: float, detail: str = ""
    ) -> bool: ...

    async def remove(self, channel: str, address: str) -> bool: ...

    async def check_many(self, channel: str, addresses: Sequence[str]) -> dict[str, str]: ...

    async def page(
        self, *, channel: str | None, after: str | None, limit: int
    ) -> list[Suppression]: ...
