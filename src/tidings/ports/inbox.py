"""Port of the in-app inbox: messages per subscriber with seen, read and archived states."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import field
from typing import Any, Protocol

from tidings.records import record


class Mark(enum.StrEnum):
    SEEN = "seen"
    READ = "read"  # also marks seen
    UNREAD = "unread"
    ARCHIVED = "archived"
    UNARCHIVED = "unarchived"


class Status(enum.StrEnum):
    ALL = "all"
    UNREAD = "unread"
    READ = "read"
    UNSEEN = "unseen"
    SEEN = "seen"


class Archived(enum.StrEnum):
    EXCLUDE = "exclude"
    INCLUDE = "include"
    ONLY = "only"


@record
class InboxItem:
    id: str
    subscriber: str
    title: str
    body: str
    created_at: float
    event_id: str | None = None
    workflow: str | None = None
    step: str | None = None
    action_url: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    seen_at: float | None = None
    read_at: float | None = None
    archived_at: float | None = None
    seq: int = 0  # the store's insertion order; assigned by `add` and `add_many`


@record
class Marked:
    """An item a mark changed, with its states after the mark (what `mark_changed` returns:
    enough to record the engagement on the item's notification message)."""

    id: str
    event_id: str | None
    seen_at: float | None
    read_at: float | None
    archived_at: float | None


@record
class Counts:
    """Items not archived that are unread / unseen."""

    unread: int
    unseen: int


class InboxStore(Protocol):
    """Contract:

    - `add` assigns `seq`, increasing with every insert for the whole store. It is idempotent
      per `(subscriber, event_id, step)` when `event_id` and `step` are set (a unique
      constraint; SQL holds NULLs distinct, so an item without a step is never a duplicate):
      a second add returns the stored item unchanged with `False`, whatever its content. An
      item whose `id` is stored already under another delivery key raises `Conflict`.
    - `add_many` is `add` for each item, in ONE transaction: all items are stored or none.
      It returns one `(item, created)` per input item, in input order. New items get `seq`
      increasing in input order. An item whose delivery key is stored already comes back
      as stored with `False`; within the batch the first item of a key wins and the later
      ones come back as that first item (as stored) with `False`. `Conflict` (nothing
      stored) when an item's `id` is stored already, or repeated in the batch, under
      another delivery key. An empty batch does nothing.
    - Items are only ever visible to their subscriber: `get` and `mark_changed` with `ids` of
      another subscriber's items find nothing (`get` raises `NotFound`).
    - `feed` returns newest first (descending `seq`) the items with `seq < before` (all when
      None), filtered by status and archived state, at most `limit`. Inserts never shift a
      page: new items get a higher `seq`.
    - `mark_changed` applies one state change to the listed `ids`, or when `ids` is None to
      every item of the subscriber with `seq <= until` (all when None), and returns the
      items it changed (`Marked`, their states after the mark, in no particular order):
      marking an item already in that state changes nothing. READ sets `read_at` and, if
      unset, `seen_at`; SEEN and ARCHIVED set their time if unset; UNREAD and UNARCHIVED
      clear theirs. One statement per chunk of ids, or one for a watermark or all.
    - `counts` counts the subscriber's items that are not archived; `counts_many` does it for
      many subscribers in one grouped query and has every requested subscriber in its result
      (zeros for those without items).
    - `purge` deletes every item of the subscriber and returns how many.
    """

    async def add(self, item: InboxItem) -> tuple[InboxItem, bool]: ...

    async def add_many(self, items: Sequence[InboxItem]) -> list[tuple[InboxItem, bool]]: ...

    async def get(self, subscriber: str, item_id: str) -> InboxItem: ...

    async def feed(
        self,
        subscriber: str,
        *,
        status: Status = Status.ALL,
        archived: Archived = Archived.EXCLUDE,
        before: int | None = None,
        limit: int,
    ) -> list[InboxItem]: ...

    async def mark_changed(
        self,
        subscriber: str,
        action: Mark,
        at: float,
        *,
        ids: Sequence[str] | None = None,
        until: int | None = None,
    ) -> list[Marked]: ...

    async def counts(self, subscriber: str) -> Counts: ...

    async def counts_many(self, subscribers: Sequence[str]) -> dict[str, Counts]: ...

    async def purge(self, subscriber: str) -> int: ...
