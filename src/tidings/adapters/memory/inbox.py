"""In-process inbox (reference for the contract suite)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from tidings.errors import Conflict, NotFound
from tidings.ports.inbox import Archived, Counts, InboxItem, Mark, Marked, Status


class MemoryInboxStore:
    def __init__(self) -> None:
        self._by_subscriber: dict[str, dict[str, InboxItem]] = {}  # insertion order = seq
        self._ids: set[str] = set()
        self._deliveries: dict[tuple[str, str, str], str] = {}  # delivery key -> item id
        self._seq = 0

    async def add(self, item: InboxItem) -> tuple[InboxItem, bool]:
        return (await self.add_many([item]))[0]

    async def add_many(self, items: Sequence[InboxItem]) -> list[tuple[InboxItem, bool]]:
        # Plan first (raising before any change: all or nothing), then store.
        plan: list[int | str] = []  # per item: the index of the new item it is, or a stored id
        first: dict[tuple[str, str, str], int] = {}  # delivery key -> index in `new`
        new: list[InboxItem] = []
        new_ids: set[str] = set()
        for item in items:
            key = _key(item)
            if key is not None:
                if key in self._deliveries:
                    plan.append(self._deliveries[key])
                    continue
                if key in first:
                    plan.append(first[key])
                    continue
            if item.id in self._ids or item.id in new_ids:
                raise Conflict(f"inbox item {item.id} exists", field="id")
            if key is not None:
                first[key] = len(new)
            plan.append(len(new))
            new.append(item)
            new_ids.add(item.id)
        stored: list[InboxItem] = []
        for item in new:
            self._seq += 1
            s = dataclasses.replace(item, seq=self._seq)
            self._by_subscriber.setdefault(item.subscriber, {})[item.id] = s
            self._ids.add(item.id)
            key = _key(item)
            if key is not None:
                self._deliveries[key] = item.id
            stored.append(s)
        out: list[tuple[InboxItem, bool]] = []
        claimed: set[int] = set()
        for item, p in zip(items, plan, strict=True):
            if isinstance(p, str):
                out.append((self._by_subscriber[item.subscriber][p], False))
            else:
                out.append((stored[p], p not in claimed))
                claimed.add(p)
        return out

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

    async def mark_changed(
        self,
        subscriber: str,
        action: Mark,
        at: float,
        *,
        ids: Sequence[str] | None = None,
        until: int | None = None,
    ) -> list[Marked]:
        items = self._by_subscriber.get(subscriber, {})
        if ids is not None:
            chosen = [items[i] for i in dict.fromkeys(ids) if i in items]
        else:
            chosen = [i for i in items.values() if until is None or i.seq <= until]
        changed: list[Marked] = []
        for item in chosen:
            new = _apply(item, action, at)
            if new != item:
                items[item.id] = new
                changed.append(
                    Marked(new.id, new.event_id, new.seen_at, new.read_at, new.archived_at)
                )
        return changed

    async def counts(self, subscriber: str) -> Counts:
        live = [i for i in self._by_subscriber.get(subscriber, {}).values() if not i.archived_at]
        return Counts(
            unread=sum(1 for i in live if i.read_at is None),
            unseen=sum(1 for i in live if i.seen_at is None),
        )

    async def counts_many(self, subscribers: Sequence[str]) -> dict[str, Counts]:
        return {s: await self.counts(s) for s in dict.fromkeys(subscribers)}

    async def purge(self, subscriber: str) -> int:
        items = self._by_subscriber.pop(subscriber, {})
        self._ids -= set(items)
        self._deliveries = {k: v for k, v in self._deliveries.items() if k[0] != subscriber}
        return len(items)


def _key(item: InboxItem) -> tuple[str, str, str] | None:
    """The delivery key, when the item has one (SQL's unique constraint holds NULLs distinct,
    so an item without an event or a step has none)."""
    if item.event_id is None or item.step is None:
        return None
    return item.subscriber, item.event_id, item.step


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
