"""In-process preferences and suppression list (reference for the contract suites)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tidings.core.notify.decisions import Preferences
from tidings.core.notify.preferences import preferences_from_json, preferences_to_json
from tidings.ports.preferences import Suppression, split_position


class MemoryPreferenceStore:
    def __init__(self) -> None:
        # The JSON form, as the SQL store keeps it: no object is shared with callers.
        self._items: dict[str, tuple[dict[str, Any], float]] = {}

    async def get(self, subscriber: str) -> Preferences:
        found = self._items.get(subscriber)
        return Preferences() if found is None else preferences_from_json(found[0])

    async def get_many(self, subscribers: Sequence[str]) -> dict[str, Preferences]:
        return {
            s: preferences_from_json(self._items[s][0])
            for s in dict.fromkeys(subscribers)
            if s in self._items
        }

    async def put(self, subscriber: str, prefs: Preferences, at: float) -> Preferences:
        data = preferences_to_json(prefs)
        self._items[subscriber] = (data, at)
        return preferences_from_json(data)

    async def delete(self, subscriber: str) -> bool:
        return self._items.pop(subscriber, None) is not None


class MemorySuppressionStore:
    def __init__(self) -> None:
        self._items: dict[tuple[str, str], Suppression] = {}

    async def add(
        self, channel: str, address: str, reason: str, at: float, detail: str = ""
    ) -> bool:
        if (channel, address) in self._items:
            return False
        self._items[channel, address] = Suppression(channel, address, reason, detail, at)
        return True

    async def remove(self, channel: str, address: str) -> bool:
        return self._items.pop((channel, address), None) is not None

    async def check_many(self, channel: str, addresses: Sequence[str]) -> dict[str, str]:
        found = (self._items.get((channel, a)) for a in dict.fromkeys(addresses))
        return {s.address: s.reason for s in found if s is not None}

    async def page(
        self, *, channel: str | None, after: str | None, limit: int
    ) -> list[Suppression]:
        start = split_position(after) if after is not None else None
        keys = sorted(
            k
            for k in self._items
            if (channel is None or k[0] == channel) and (start is None or k > start)
        )
        return [self._items[k] for k in keys[:limit]]
