"""In-process inbox (reference for the contract suite)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from tidings.errors import Conflict, NotFound
from tidings.ports.inbox import Archived, Counts, InboxItem, Mark, Status


class MemoryInboxStore:
    def __init__(self) -> None:
        self._by_subscriber: dict[str, dict[str, InboxItem]] = {}  # insertion order = seq
        self._ids: set[str] = set()
        self._deliveries: dict[tuple[str, str, str | None], str] = {}
        self._seq = 0

    async def add(self, item: InboxItem) -> tuple[InboxItem, bool]:
        key = (item.subscriber, item.event_id, item.step) if item.event_id is not None else None
        if key is not None and key in self._deliveries:
            return self._by_subscriber[item.subscriber][self._deliveries[key]], False
        if item.id in self._ids:
            raise Conflict(f"inbox item {item.id} exists", field="id")
        self._seq += 1
        stored = dataclasses.replace(item, seq=self._seq)
        self._by_subscriber.setdefault(item.subscriber, {})[item.id] = stored
        self._ids.add(item.id)
        if key is not None:
            self._deliveries[key] = item.id
        return stored, True

    async def get(self, subscriber: str, item_id: str) -> InboxItem:
        found = self._by_subscriber.get(subscriber, {}).get(item_id)
        if found is None:
            raise NotFound(f"inbox item {item_id} not found")
        return found

    async def feed(
        self,
        subscriber: str,
        *,
        status: Status = Status.ALL,
        archived: Archived = Archived.EXCLUDE,
        before: int | None = None,
        limit: int,
    ) -> list[InboxItem]:
        out: list[InboxItem] = []
        for item in reversed(self._by_subscriber.get(subscriber, {}).values()):
            if before is not None and item.seq >= before:
                continue
            if not (_status_ok(item, status) and _archived_ok(item, archived)):
                continue
            out.append(item)
            if len(out) >= limit:
                break
        return out

    async def mark(
        self,
        subscriber: str,
        action: Mark,
        at: float,
        *,
        ids: Sequence[str] | None = None,
        until: int | None = None,
    ) -> int:
        items = self._by_subscriber.get(subscriber, {})
        if ids is not None:
            chosen = [items[i] for i in dict.fromkeys(ids) if i in items]
        else:
            chosen = [i for i in items.values() if until is None or i.seq <= until]
        changed = 0
        for item in chosen:
            new = _apply(item, action, at)
            if new != item:
                items[item.id] = new
                changed += 1
        return changed

    async def counts(self, subscriber: str) -> Counts:
        live = [i for i in self._by_subscriber.get(subscriber, {}).values() if not i.archived_at]
        return Counts(
            unread=sum(1 for i in live if i.read_at is None),
            unseen=sum(1 for i in live if i.seen_at is None),
        )

    async def purge(self, subscriber: str) -> int:
        items = self._by_subscriber.pop(subscriber, {})
        self._ids -= set(items)
        self._deliveries = {k: v for k, v in self._deliveries.items() if k[0] != subscriber}
        return len(items)


def _apply(item: InboxItem, action: Mark, at: float) -> InboxItem:
    match action:
        case Mark.SEEN:
            return item if item.seen_at is not None else dataclasses.replace(item, seen_at=at)
        case Mark.READ:
            if item.read_at is not None:
                return item
            return dataclasses.replace(
                item, read_at=at, seen_at=item.seen_at if item.seen_at is not None else at
            )
        case Mark.UNREAD:
            return dataclasses.replace(item, read_at=None)
        case Mark.ARCHIVED:
            if item.archived_at is not None:
                return item
            return dataclasses.replace(item, archived_at=at)
        case Mark.UNARCHIVED:
            return dataclasses.replace(item, archived_at=None)


def _status_ok(item: InboxItem, status: Status) -> bool:
    match status:
        case Status.ALL:
            return True
        case Status.UNREAD:
            return item.read_at is None
        case Status.READ:
            return item.read_at is not None
        case Status.UNSEEN:
            return item.seen_at is None
        case Status.SEEN:
            return item.seen_at is not None


def _archived_ok(item: InboxItem, archived: Archived) -> bool:
    if archived is Archived.INCLUDE:
        return True
    return (item.archived_at is not None) == (archived is Archived.ONLY)
