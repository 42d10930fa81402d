"""Port of the in-app inbox: messages per subscriber with seen, read and archived states."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


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


@dataclass(frozen=True, slots=True)
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
    seq: int = 0  # the store's insertion order; assigned by `add`


@dataclass(frozen=True, slots=True)
class Counts:
    """Items not archived that are unread / unseen."""

    unread: int
    unseen: int


class InboxStore(Protocol):
    """Contract:

    - `add` assigns `seq`, increasing with every insert for the whole store. It is idempotent
      per `(subscriber, event_id, step)` when `event_id` is set (a unique constraint): a
      second add returns the stored item unchanged with `False`, whatever its content.
    - Items are only ever visible to their subscriber: `get` and `mark` with `ids` of another
      subscriber's items find nothing (`get` raises `NotFound`).
    - `feed` returns newest first (descending `seq`) the items with `seq < before` (all when
      None), filtered by status and archived state, at most `limit`. Inserts never shift a
      page: new items get a higher `seq`.
    - `mark` applies one state change to the listed `ids`, or when `ids` is None to every
      item of the subscriber with `seq <= until` (all when None), and returns how many items
      changed: marking an item already in that state changes nothing. READ sets `read_at`
      and, if unset, `seen_at`; SEEN and ARCHIVED set their time if unset; UNREAD and
      UNARCHIVED clear theirs.
    - `counts` counts the subscriber's items that are not archived.
    - `purge` deletes every item of the subscriber and returns how many.
    """

    async def add(self, item: InboxItem) -> tuple[InboxItem, bool]: ...

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

    async def mark(
        self,
        subscriber: str,
        action: Mark,
        at: float,
        *,
        ids: Sequence[str] | None = None,
        until: int | None = None,
    ) -> int: ...

    async def counts(self, subscriber: str) -> Counts: ...

    async def purge(self, subscriber: str) -> int: ...
