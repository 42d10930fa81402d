"""Ports of the subscriber directory: subscribers (with push devices and Web Push
subscriptions) and topics (named sets of subscribers)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import field
from typing import Any, Protocol

from tidings.core.subscribers import Device, WebPushSubscription
from tidings.records import record


@record
class Subscriber:
    """A recipient as the application knows it; `id` is the application's own user id."""

    id: str
    email: str | None = None
    phone: str | None = None  # E.164
    locale: str | None = None  # BCP 47
    timezone: str | None = None  # IANA
    data: dict[str, Any] = field(default_factory=dict)
    devices: tuple[Device, ...] = ()
    webpush: tuple[WebPushSubscription, ...] = ()
    created_at: float = 0.0
    updated_at: float = 0.0


@record
class Topic:
    key: str
    name: str
    created_at: float = 0.0


class SubscriberStore(Protocol):
    """Contract:

    - `put` stores the whole record (profile, devices, Web Push subscriptions) atomically,
      replacing what was there; `created_at` of an existing subscriber is kept and the stored
      record is returned with `True` when it was created. A device token or a Web Push
      endpoint belongs to one subscriber at a time: putting it on another subscriber moves it
      there (the device changed hands).
    - `get` and `delete` raise `NotFound` for an unknown id; `delete` removes the devices,
      Web Push subscriptions and topic memberships with the subscriber.
    - `get_many` returns the subscribers that exist, in the order of `ids`; with
      `devices=False` their `devices` and `webpush` are left empty, for callers that need
      neither (the orchestrator when no step of the workflow pushes).
    - `page` pages by id in ascending order (the store's own string order, stable): the
      subscribers with an id greater than `after`, at most `limit` of them. Inserts during
      paging never shift a page, so a walk sees every subscriber that existed throughout
      exactly once.
    """

    async def put(self, subscriber: Subscriber) -> tuple[Subscriber, bool]: ...

    async def get(self, subscriber_id: str) -> Subscriber: ...

    async def get_many(self, ids: Sequence[str], *, devices: bool = True) -> list[Subscriber]: ...

    async def delete(self, subscriber_id: str) -> None: ...

    async def page(self, *, after: str | None, limit: int) -> list[Subscriber]: ...


class TopicStore(Protocol):
    """Contract:

    - `create` raises `Conflict` for a key in use; `get`, `delete` and member operations
      raise `NotFound` for an unknown topic. Deleting a topic drops its memberships only.
    - `add_members` is all or nothing and idempotent: subscribers already in the topic are
      left as they are, unknown subscriber ids raise `InvalidInput(field="subscribers")`
      naming them and add nobody; returns how many were added.
    - `remove_members` is idempotent (ids not in the topic are ignored); returns how many
      were removed.
    - `members` pages member ids in ascending order after `after`, as
      `SubscriberStore.page` does; `count` is the number of members.
    - `iter_members` yields every member id in batches of at most `batch`, each batch read
      in its own short query (keyset paging), so memory stays bounded by the batch whatever
      the topic's size and no transaction is held open between batches.
    """

    async def create(self, topic: Topic) -> Topic: ...

    async def get(self, key: str) -> Topic: ...

    async def page(self, *, after: str | None, limit: int) -> list[Topic]: ...

    async def delete(self, key: str) -> None: ...

    async def add_members(self, key: str, subscriber_ids: Sequence[str], at: float) -> int: ...

    async def remove_members(self, key: str, subscriber_ids: Sequence[str]) -> int: ...

    async def members(self, key: str, *, after: str | None, limit: int) -> list[str]: ...

    async def count(self, key: str) -> int: ...

    def iter_members(self, key: str, *, batch: int) -> AsyncIterator[list[str]]: ...
