"""The in-app inbox: items per subscriber, the feed, counts and marks, and live updates on
the subscriber's personal gateway channel.

Live updates go out after the store has committed (the inbox is the truth, the push is the
fast path) to the user-limited channel `<namespace>:#<subscriber>`, which only a connection
of that user may subscribe to. Two JSON messages:

- `{"type": "item", "item": {...}}` when an item is added or one item is marked;
- `{"type": "counts", "unread": n, "unseen": m}` after every change (add, mark, bulk mark).

A failed publish is logged and never fails the change: a client that missed it refetches
counts and feed on reconnect. Re-adding the same delivery republishes the item with the same
idempotency key, so a delivery retried after a crash between insert and publish still
reaches the browser, once.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

from tidings.core import subscribers as rules
from tidings.core.paging import decode_cursor, encode_cursor
from tidings.errors import InvalidInput
from tidings.ports.clock import Clock
from tidings.ports.inbox import Archived, Counts, InboxItem, InboxStore, Mark, Status

log = logging.getLogger(__name__)

# (channel, data, idempotency key) -> anything; the gateway hub's server publish.
Publisher = Callable[[str, bytes, str | None], Awaitable[object]]
DEFAULT_NAMESPACE = "inbox"
MAX_PAGE = 100
MAX_BULK = 1000
MAX_TITLE = 500
MAX_BODY = 10_000
MAX_URL = 2048


@dataclass(frozen=True, slots=True)
class Feed:
    items: list[InboxItem]
    next_cursor: str | None  # older items; None at the end
    watermark: str | None  # names the newest item of this page, for "mark all until here"
    counts: Counts


class InboxService:
    def __init__(
        self,
        store: InboxStore,
        clock: Clock,
        publish: Publisher | None = None,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        max_data_bytes: int = rules.MAX_DATA_BYTES,
    ) -> None:
        self.store = store
        self.clock = clock
        self.publish = publish
        self.namespace = namespace
        self.max_data_bytes = max_data_bytes

    def channel(self, subscriber: str) -> str:
        """The subscriber's personal channel: user-limited to that subscriber."""
        return f"{self.namespace}:#{subscriber}"

    async def add(
        self,
        subscriber: str,
        *,
        title: str,
        body: str = "",
        action_url: str | None = None,
        data: dict[str, Any] | None = None,
        event_id: str | None = None,
        workflow: str | None = None,
        step: str | None = None,
    ) -> tuple[InboxItem, bool]:
        """Put an item in the subscriber's inbox. With `event_id` the add is idempotent per
        `(event_id, subscriber, step)` (`step` defaults to `in_app`): a retried delivery gets
        the stored item and `False`."""
        rules.subscriber_id(subscriber, field="subscriber")
        if not title or len(title) > MAX_TITLE:
            raise InvalidInput(f"must be 1..{MAX_TITLE} characters", field="title")
        if len(body) > MAX_BODY:
            raise InvalidInput(f"at most {MAX_BODY} characters", field="body")
        if action_url is not None:
            url = urlsplit(action_url)
            relative = not url.scheme and not url.netloc and action_url.startswith("/")
            if len(action_url) > MAX_URL or not (
                relative or (url.scheme in ("http", "https") and url.netloc)
            ):
                raise InvalidInput("must be an http(s) URL or a path", field="action_url")
        data = rules.check_data({} if data is None else data, self.max_data_bytes)
        if event_id is not None and step is None:
            step = "in_app"
        item = InboxItem(
            id=str(uuid.uuid4()),
            subscriber=subscriber,
            title=title,
            body=body,
            created_at=self.clock.now(),
            event_id=event_id,
            workflow=workflow,
            step=step,
            action_url=action_url,
            data=data,
        )
        stored, created = await self.store.add(item)
        await self._push(subscriber, {"type": "item", "item": item_json(stored)}, stored.id)
        await self._push_counts(subscriber)
        return stored, created

    async def feed(
        self,
        subscriber: str,
        *,
        status: Status = Status.ALL,
        archived: Archived = Archived.EXCLUDE,
        cursor: str | None = None,
        limit: int = 20,
    ) -> Feed:
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"must be 1..{MAX_PAGE}", field="limit")
        before = None if cursor is None else _seq(cursor, "cursor")
        found = await self.store.feed(
            subscriber, status=status, archived=archived, before=before, limit=limit + 1
        )
        items = found[:limit]
        more = len(found) > limit
        return Feed(
            items=items,
            next_cursor=encode_cursor({"seq": items[-1].seq}) if more else None,
            watermark=encode_cursor({"seq": items[0].seq}) if items else None,
            counts=await self.store.counts(subscriber),
        )

    async def get(self, subscriber: str, item_id: str) -> InboxItem:
        return await self.store.get(subscriber, item_id)

    async def counts(self, subscriber: str) -> Counts:
        return await self.store.counts(subscriber)

    async def mark_one(self, subscriber: str, item_id: str, action: Mark) -> InboxItem:
        await self.store.get(subscriber, item_id)  # NotFound for another subscriber's item
        changed = await self.store.mark(subscriber, action, self.clock.now(), ids=[item_id])
        item = await self.store.get(subscriber, item_id)
        if changed:
            await self._push(subscriber, {"type": "item", "item": item_json(item)}, None)
            await self._push_counts(subscriber)
        return item

    async def mark(
        self,
        subscriber: str,
        action: Mark,
        *,
        ids: Sequence[str] | None = None,
        until: str | None = None,
    ) -> int:
        """Mark the listed items, or (no `ids`) every item up to the `until` watermark (all
        items when None). Items of other subscribers are never touched. Returns how many
        items changed."""
        if ids is not None and until is not None:
            raise InvalidInput("give ids or until, not both", field="until")
        if ids is not None and not 1 <= len(ids) <= MAX_BULK:
            raise InvalidInput(f"give 1..{MAX_BULK} ids", field="ids")
        upto = None if until is None else _seq(until, "until")
        changed = await self.store.mark(subscriber, action, self.clock.now(), ids=ids, until=upto)
        if changed:
            await self._push_counts(subscriber)
        return changed

    async def _push_counts(self, subscriber: str) -> None:
        if self.publish is None:
            return
        c = await self.store.counts(subscriber)
        await self._push(subscriber, {"type": "counts", "unread": c.unread, "unseen": c.unseen})

    async def _push(self, subscriber: str, message: dict[str, Any], key: str | None = None) -> None:
        if self.publish is None:
            return
        try:
            await self.publish(
                self.channel(subscriber),
                orjson.dumps(message),
                None if key is None else f"inbox-item:{key}",
            )
        except Exception:
            log.warning(
                "inbox live update not published",
                exc_info=True,
                extra={"subscriber": subscriber, "type": message["type"]},
            )


def item_json(item: InboxItem) -> dict[str, Any]:
    """An item as the API and the live channel show it."""
    return {
        "id": item.id,
        "subscriber": item.subscriber,
        "title": item.title,
        "body": item.body,
        "action_url": item.action_url,
        "data": item.data,
        "event_id": item.event_id,
        "workflow": item.workflow,
        "step": item.step,
        "created_at": _iso(item.created_at),
        "seen_at": _iso(item.seen_at),
        "read_at": _iso(item.read_at),
        "archived_at": _iso(item.archived_at),
    }


def _iso(at: float | None) -> str | None:
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


def _seq(cursor: str, field: str) -> int:
    return int(decode_cursor(cursor, {"seq": int}, field)["seq"])
