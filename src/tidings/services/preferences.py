"""Subscriber notification preferences and the address suppression list.

Preferences are one JSON document per subscriber (format and validation in
`core/notify/preferences.py`): `put` replaces it, `patch` merges a JSON Merge Patch into it
(RFC 7396: objects merge key by key, `null` removes a choice so its default applies again,
lists such as `quiet_hours` are replaced whole). Both answer `NotFound` for a subscriber the
directory does not know.

Suppressed addresses are normalised here, so every entry point and the orchestrator's
lookups agree: email lowercased whole, SMS numbers in E.164, push tokens and Web Push
endpoints as given.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import urlsplit

from tidings.core import subscribers as rules
from tidings.core.notify.decisions import Preferences
from tidings.core.notify.preferences import merge_preferences, preferences_from_json
from tidings.core.notify.types import Channel
from tidings.errors import InvalidInput, NotFound
from tidings.ports.clock import Clock
from tidings.ports.preferences import (
    PreferenceStore,
    Suppression,
    SuppressionReason,
    SuppressionStore,
)
from tidings.ports.subscribers import SubscriberStore
from tidings.records import record

# The channels that send to an address of the recipient's (in-app and webhooks do not).
SUPPRESSIBLE: Final = (Channel.EMAIL, Channel.SMS, Channel.PUSH, Channel.WEBPUSH)
MAX_ADDRESS: Final = 1024
MAX_DETAIL: Final = 1000
MAX_PAGE: Final = 1000


@record
class SuppressionPage:
    items: list[Suppression]
    next_after: str | None  # pass as `after` for the next page; None: this was the last


class PreferenceService:
    def __init__(
        self,
        store: PreferenceStore,
        suppressions: SuppressionStore,
        subscribers: SubscriberStore,
        clock: Clock,
    ) -> None:
        self.store = store
        self.suppressions = suppressions
        self.subscribers = subscribers
        self.clock = clock

    # --- preferences --------------------------------------------------------------------

    async def get(self, subscriber: str) -> Preferences:
        """The subscriber's preferences; the defaults when they have chosen nothing."""
        await self.subscribers.get(subscriber)
        return await self.store.get(subscriber)

    async def put(self, subscriber: str, body: Any) -> Preferences:
        """Replace the preferences with the document `body`; keys left out take defaults."""
        prefs = preferences_from_json(body)
        await self.subscribers.get(subscriber)
        return await self.store.put(subscriber, prefs, self.clock.now())

    async def patch(self, subscriber: str, body: Any) -> Preferences:
        """Merge `body` (a JSON Merge Patch of the document) into the stored preferences,
        e.g. ``{"workflows": {"comment.created": {"channels": {"sms": false}}}}`` turns that
        one switch off and keeps everything else.

        Read, merge, replace: two patches of the same subscriber at the same instant can
        lose one of them (the last write wins), as two PUTs would."""
        await self.subscribers.get(subscriber)
        current = await self.store.get(subscriber)
        merged = merge_preferences(current, body)
        return await self.store.put(subscriber, merged, self.clock.now())

    # --- suppression list ---------------------------------------------------------------

    async def suppress(
        self, channel: str, address: str, reason: str, detail: str = ""
    ) -> tuple[str, bool]:
        """Suppress `address` on `channel`; returns the normalised address and whether it
        was added now (False: it already was, with its first reason kept)."""
        ch, normal = normalize_address(channel, address)
        try:
            why = SuppressionReason(reason)
        except ValueError:
            known = ", ".join(r.value for r in SuppressionReason)
            raise InvalidInput(f"must be one of {known}", field="reason") from None
        if not isinstance(detail, str) or len(detail) > MAX_DETAIL:
            raise InvalidInput(f"must be text of at most {MAX_DETAIL} characters", field="detail")
        added = await self.suppressions.add(ch, normal, why.value, self.clock.now(), detail)
        return normal, added

    async def unsuppress(self, channel: str, address: str) -> str:
        """Take `address` off the list; returns it normalised. `NotFound` if it was not on."""
        ch, normal = normalize_address(channel, address)
        if not await self.suppressions.remove(ch, normal):
            raise NotFound(f"{normal} is not suppressed on {ch}")
        return normal

    async def list_suppressions(
        self, *, channel: str | None = None, after: str | None = None, limit: int = 100
    ) -> SuppressionPage:
        """A page in (channel, address) order; `after` is the previous page's `next_after`."""
        ch = None if channel is None else _channel(channel)
        if after is not None and (":" not in after or len(after) > 64 + MAX_ADDRESS):
            raise InvalidInput("not a position a page gave out (next_after)", field="after")
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"must be 1..{MAX_PAGE}", field="limit")
        found = await self.suppressions.page(channel=ch, after=after, limit=limit + 1)
        items = found[:limit]
        more = len(found) > limit and bool(items)
        return SuppressionPage(items, items[-1].position if more else None)


def normalize_address(channel: str, address: str) -> tuple[str, str]:
    """(channel, address) as the suppression list keys them, or `InvalidInput` naming
    `channel` or `address`."""
    ch = _channel(channel)
    if not isinstance(address, str) or not address.strip():
        raise InvalidInput("must not be empty", field="address")
    value = address.strip()
    if len(value) > MAX_ADDRESS:
        raise InvalidInput(f"at most {MAX_ADDRESS} characters", field="address")
    if ch is Channel.EMAIL:
        local, at, domain = value.rpartition("@")
        if not at or not local or "." not in domain or len(value) > 320 or " " in value:
            raise InvalidInput("not an email address", field="address")
        return ch.value, rules.suppression_key(ch.value, value)
    if ch is Channel.SMS:
        return ch.value, rules.normalize_phone(value, field="address")
    if ch is Channel.PUSH:
        if not 8 <= len(value) <= rules.MAX_TOKEN_LENGTH:
            raise InvalidInput(
                f"a device token is 8..{rules.MAX_TOKEN_LENGTH} characters", field="address"
            )
        return ch.value, value
    url = urlsplit(value)
    if url.scheme != "https" or not url.hostname:
        raise InvalidInput("a Web Push endpoint is an https URL", field="address")
    return ch.value, value


def _channel(channel: str) -> Channel:
    for ch in SUPPRESSIBLE:
        if ch.value == channel:
            return ch
    known = ", ".join(c.value for c in SUPPRESSIBLE)
    raise InvalidInput(f"must be one of {known}", field="channel")
