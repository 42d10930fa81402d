"""In-process subscriber directory and topics (reference for the contract suites)."""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import AsyncIterator, Sequence

from tidings.errors import Conflict, InvalidInput, NotFound
from tidings.ports.subscribers import Subscriber, Topic


class MemorySubscriberStore:
    def __init__(self) -> None:
        self._items: dict[str, Subscriber] = {}
        self.topics: MemoryTopicStore | None = None  # set by MemoryTopicStore

    async def put(self, subscriber: Subscriber) -> tuple[Subscriber, bool]:
        old = self._items.get(subscriber.id)
        tokens = {d.token for d in subscriber.devices}
        endpoints = {w.endpoint for w in subscriber.webpush}
        for other_id, other in list(self._items.items()):
            if other_id == subscriber.id:
                continue
            devices = tuple(d for d in other.devices if d.token not in tokens)
            webpush = tuple(w for w in other.webpush if w.endpoint not in endpoints)
            if devices != other.devices or webpush != other.webpush:
                self._items[other_id] = dataclasses.replace(other, devices=devices, webpush=webpush)
        if old is not None:
            subscriber = dataclasses.replace(subscriber, created_at=old.created_at)
        self._items[subscriber.id] = subscriber
        return subscriber, old is None

    async def get(self, subscriber_id: str) -> Subscriber:
        found = self._items.get(subscriber_id)
        if found is None:
            raise NotFound(f"subscriber {subscriber_id} not found")
        return found

    async def get_many(self, ids: Sequence[str], *, devices: bool = True) -> list[Subscriber]:
        found = [self._items[i] for i in ids if i in self._items]
        if devices:
            return found
        return [dataclasses.replace(s, devices=(), webpush=()) for s in found]

    async def delete(self, subscriber_id: str) -> None:
        if self._items.pop(subscriber_id, None) is None:
            raise NotFound(f"subscriber {subscriber_id} not found")
        if self.topics is not None:
            self.topics.forget(subscriber_id)

    async def page(self, *, after: str | None, limit: int) -> list[Subscriber]:
        ids = sorted(i for i in self._items if after is None or i > after)
        return [self._items[i] for i in ids[:limit]]

    def exists(self, subscriber_id: str) -> bool:
        return subscriber_id in self._items


class MemoryTopicStore:
    def __init__(self, subscribers: MemorySubscriberStore) -> None:
        self._subscribers = subscribers
        subscribers.topics = self
        self._topics: dict[str, Topic] = {}
        self._members: dict[str, list[str]] = {}  # sorted

    async def create(self, topic: Topic) -> Topic:
        if topic.key in self._topics:
            raise Conflict(f"topic {topic.key} exists", field="key")
        self._topics[topic.key] = topic
        self._members[topic.key] = []
        return topic

    async def get(self, key: str) -> Topic:
        found = self._topics.get(key)
        if found is None:
            raise NotFound(f"topic {key} not found")
        return found

    async def page(self, *, after: str | None, limit: int) -> list[Topic]:
        keys = sorted(k for k in self._topics if after is None or k > after)
        return [self._topics[k] for k in keys[:limit]]

    async def delete(self, key: str) -> None:
        await self.get(key)
        del self._topics[key]
        del self._members[key]

    async def add_members(self, key: str, subscriber_ids: Sequence[str], at: float) -> int:
        await self.get(key)
        unknown = sorted({i for i in subscriber_ids if not self._subscribers.exists(i)})
        if unknown:
            raise InvalidInput(f"unknown subscribers: {', '.join(unknown)}", field="subscribers")
        members = self._members[key]
        added = 0
        for sid in dict.fromkeys(subscriber_ids):
            i = bisect.bisect_left(members, sid)
            if i == len(members) or members[i] != sid:
                members.insert(i, sid)
                added += 1
        return added

    async def remove_members(self, key: str, subscriber_ids: Sequence[str]) -> int:
        await self.get(key)
        members = self._members[key]
        gone = set(subscriber_ids) & set(members)
        self._members[key] = [m for m in members if m not in gone]
        return len(gone)

    async def members(self, key: str, *, after: str | None, limit: int) -> list[str]:
        await self.get(key)
        members = self._members[key]
        start = 0 if after is None else bisect.bisect_right(members, after)
        return members[start : start + limit]

    async def count(self, key: str) -> int:
        await self.get(key)
        return len(self._members[key])

    async def iter_members(self, key: str, *, batch: int) -> AsyncIterator[list[str]]:
        after: str | None = None
        while True:
            page = await self.members(key, after=after, limit=batch)
            if not page:
                return
            yield page
            after = page[-1]

    def forget(self, subscriber_id: str) -> None:
        for key, members in self._members.items():
            if subscriber_id in members:
                self._members[key] = [m for m in members if m != subscriber_id]
