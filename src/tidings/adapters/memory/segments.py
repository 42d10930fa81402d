"""In-process segments and audience walks (reference for the contract suite): every candidate
is read and the filter is evaluated in Python."""

from __future__ import annotations

import dataclasses

from tidings.adapters.memory.columns import json_copy
from tidings.adapters.memory.subscribers import MemorySubscriberStore, MemoryTopicStore
from tidings.errors import NotFound
from tidings.ports.segments import Audience, Scan, Segment, count_by_scan, scan_candidates


class MemorySegmentStore:
    def __init__(self) -> None:
        self._items: dict[str, Segment] = {}

    async def put(self, segment: Segment) -> tuple[Segment, bool]:
        old = self._items.get(segment.key)
        stored = dataclasses.replace(segment, filter=json_copy(segment.filter))
        if old is not None:
            stored = dataclasses.replace(stored, created_at=old.created_at)
        self._items[segment.key] = stored
        return stored, old is None

    async def get(self, key: str) -> Segment:
        found = self._items.get(key)
        if found is None:
            raise NotFound(f"segment {key} not found")
        return found

    async def page(self, *, after: str | None, limit: int) -> list[Segment]:
        keys = sorted(k for k in self._items if after is None or k > after)
        return [self._items[k] for k in keys[:limit]]

    async def delete(self, key: str) -> None:
        if self._items.pop(key, None) is None:
            raise NotFound(f"segment {key} not found")


class MemoryAudiences:
    def __init__(self, subscribers: MemorySubscriberStore, topics: MemoryTopicStore) -> None:
        self._subscribers = subscribers
        self._topics = topics

    async def scan(
        self, audience: Audience, *, after: str | None, limit: int, examine: int
    ) -> Scan:
        if audience.topic is None:
            candidates = await self._subscribers.page(after=after, limit=examine)
        else:
            ids = await self._topics.members(audience.topic, after=after, limit=examine)
            candidates = await self._subscribers.get_many(ids)
        return scan_candidates(audience.where, candidates, limit=limit, examine=examine)

    async def count(self, audience: Audience) -> int:
        return await count_by_scan(self, audience)
