"""The in-app inbox: items per subscriber, the feed, counts and marks, and live updates on
the subscriber's personal gateway channel.

Live updates go out after the store has committed (the inbox is the truth, the push is the
fast path) to the user-limited channel `<namespace>:#<subscriber>`, which only a connection
of that user may subscribe to. Two JSON messages:

- `{"type": "item", "item": {...}}` when an item is added (each item of a batch) or one item
  is marked;
- `{"type": "counts", "unread": n, "unseen": m}` after every change (add, mark, bulk mark;
  once per subscriber after a batch, after its items).

A failed publish is logged and never fails the change: a client that missed it refetches
counts and feed on reconnect. Re-adding the same delivery republishes the item with the same
idempotency key, so a delivery retried after a crash between insert and publish still
reaches the browser, once; a retried batch likewise.

Engagement: a mark that sets seen, read or archived on items of notifications hands the
changed items to `on_engaged` (wiring gives it the orchestrator's `inbox_marked`), which
records that engagement on the items' messages and wakes the runs waiting for it. Only
items with an event are handed, in one call per mark (a bulk mark's items together), and a
mark that changed nothing hands nothing. The orchestrator marks items the other way with
`mark_reported` (a status reported for an in-app message), which never calls `on_engaged`,
so neither side echoes the other. A failing `on_engaged` is logged and never fails the
mark: the item is the truth, and a run waiting for it reads it at its deadline.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from tidings.core import subscribers as rules
from tidings.core.paging import decode_cursor, encode_cursor
from tidings.core.templates import action_url_ok
from tidings.errors import InvalidInput, NotFound
from tidings.ports.clock import Clock
from tidings.ports.inbox import (
    Archived,
    Counts,
    InboxItem,
    InboxStore,
    Mark,
    Marked,
    Status,
)
from tidings.records import record
from tidings.services.lanes import LaneGate

log = logging.getLogger(__name__)

# (channel, data, idempotency key) -> anything; the gateway hub's server publish.
Publisher = Callable[[str, bytes, str | None], Awaitable[object]]
# (subscriber, items a mark changed) -> anything; records their engagement on their messages.
Engaged = Callable[[str, Sequence[Marked]], Awaitable[object]]
# The marks that are engagement on the item's message (the others undo a state).
ENGAGING = frozenset({Mark.SEEN, Mark.READ, Mark.ARCHIVED})
DEFAULT_NAMESPACE = "inbox"
MAX_PAGE = 100
MAX_BULK = 1000
MAX_TITLE = 500
MAX_BODY = 10_000
MAX_URL = 2048
MAX_ID = 64  # the store's column
MAX_BATCH = 1000  # items of one `add_many`
_YIELD_EVERY = 32  # items a batch handles between two passes of the event loop


@record
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
        gate: LaneGate | None = None,
        on_engaged: Engaged | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.publish = publish
        self.on_engaged = on_engaged
        self.namespace = namespace
        self.max_data_bytes = max_data_bytes
        self._gate = gate or LaneGate()  # long loops yield through it

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
        item = self._checked(
            InboxItem(
                id=str(uuid.uuid4()),
                subscriber=subscriber,
                title=title,
                body=body,
                created_at=self.clock.now(),
                event_id=event_id,
                workflow=workflow,
                step=step,
                action_url=action_url,
                data={} if data is None else data,
            )
        )
        stored, created = await self.store.add(item)
        await self._push(subscriber, {"type": "item", "item": item_json(stored)}, stored.id)
        await self._push_counts(subscriber)
        return stored, created

    async def add_many(
        self, items: Sequence[InboxItem], *, push: bool = True
    ) -> list[tuple[InboxItem, bool]]:
        """Put many items in their subscribers' inboxes in one transaction, such as one event's
        in-app message to each recipient. The caller builds the items: their `id` (stable, so
        a retried batch names the same items) and `created_at` are kept; `seq` and the
        seen/read/archived states are not (new items start unseen).

        Every item is checked as `add` checks it, all before anything is written: an invalid
        one raises `InvalidInput` naming its index (`items.3.title`). Returns `(item,
        created)` per item in input order, with `add`'s idempotency (see
        `InboxStore.add_many`). Then each subscriber's channel gets its items of the batch,
        stored or found stored (keyed by item id, as `add` does: a retried batch republishes
        with the same keys), followed by one counts message; with `push=False` the caller
        sends them with `push` when it chooses (after its own commit)."""
        if len(items) > MAX_BATCH:
            raise InvalidInput(f"at most {MAX_BATCH} items", field="items")
        checked = [self._checked(item, f"items.{n}.") for n, item in enumerate(items)]
        if not checked:
            return []
        results = await self.store.add_many(checked)
        if push:
            await self.push(results)
        return results

    def _checked(self, item: InboxItem, where: str = "") -> InboxItem:
        """The item to store, or `InvalidInput` naming the field (prefixed with `where`).
        `step` defaults to `in_app` when `event_id` is set; `seq` and the states are reset."""
        try:
            if not item.id or len(item.id) > MAX_ID:
                raise InvalidInput(f"must be 1..{MAX_ID} characters", field="id")
            rules.subscriber_id(item.subscriber, field="subscriber")
            if not item.title or len(item.title) > MAX_TITLE:
                raise InvalidInput(f"must be 1..{MAX_TITLE} characters", field="title")
            if len(item.body) > MAX_BODY:
                raise InvalidInput(f"at most {MAX_BODY} characters", field="body")
            action_url = item.action_url
            if action_url is not None and (
                len(action_url) > MAX_URL or not action_url_ok(action_url)
            ):
                raise InvalidInput(
                    "must be an http(s) URL with a host or a path starting with / "
                    "(no backslash or control character)",
                    field="action_url",
                )
            rules.check_data(item.data, self.max_data_bytes)
        except InvalidInput as exc:
            if not where:
                raise
            raise InvalidInput(exc.message, field=f"{where}{exc.field}") from None
        if item.event_id is not None and item.step is None:
            return _fresh(item, "in_app")
        if item.seq or item.seen_at is not None or item.read_at is not None:
            return _fresh(item)
        return item if item.archived_at is None else _fresh(item)

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
        changed = await self.store.mark_changed(subscriber, action, self.clock.now(), ids=[item_id])
        item = await self.store.get(subscriber, item_id)
        if changed:
            await self._push(subscriber, {"type": "item", "item": item_json(item)}, None)
            await self._push_counts(subscriber)
            await self._engaged(subscriber, action, changed)
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
        changed = await self.store.mark_changed(
            subscriber, action, self.clock.now(), ids=ids, until=upto
        )
        if changed:
            await self._push_counts(subscriber)
            await self._engaged(subscriber, action, changed)
        return len(changed)

    async def mark_reported(
        self, subscriber: str, item_id: str, action: Mark, at: float
    ) -> Marked | None:
        """Mark one item at `at` for an engagement reported on its notification message:
        the live item and counts go out as `mark_one` sends them, and `on_engaged` is not
        called (the report records it already). None when the subscriber has no such item
        or the mark changed nothing."""
        changed = await self.store.mark_changed(subscriber, action, at, ids=[item_id])
        if not changed:
            return None
        if self.publish is not None:
            try:
                item = await self.store.get(subscriber, item_id)
            except NotFound:  # purged in between: nobody to tell
                return changed[0]
            await self._push(subscriber, {"type": "item", "item": item_json(item)}, None)
            await self._push_counts(subscriber)
        return changed[0]

    async def _engaged(self, subscriber: str, action: Mark, changed: Sequence[Marked]) -> None:
        """Hand the changed items of notifications to `on_engaged`, once per mark."""
        if self.on_engaged is None or action not in ENGAGING:
            return
        items = [m for m in changed if m.event_id is not None]
        if not items:
            return
        try:
            await self.on_engaged(subscriber, items)
        except Exception:
            log.warning(
                "inbox engagement not recorded on the messages",
                exc_info=True,
                extra={"subscriber": subscriber, "items": len(items)},
            )

    async def _push_counts(self, subscriber: str) -> None:
        if self.publish is None:
            return
        c = await self.store.counts(subscriber)
        await self._push(subscriber, {"type": "counts", "unread": c.unread, "unseen": c.unseen})

    async def push(self, results: Sequence[tuple[InboxItem, bool]]) -> None:
        """Live updates for stored items (`add_many`'s result): per subscriber its items,
        each once, then its counts. The counts are read (on SQLite in the reader's thread)
        while the items go out."""
        if self.publish is None or not results:
            return
        by_subscriber: dict[str, dict[str, InboxItem]] = {}
        for stored, _ in results:
            by_subscriber.setdefault(stored.subscriber, {}).setdefault(stored.id, stored)
        counts = asyncio.ensure_future(self.store.counts_many(list(by_subscriber)))
        at = _memo_iso()
        try:
            sent = 0
            for subscriber, items in by_subscriber.items():
                channel = self.channel(subscriber)
                for stored in items.values():
                    data = orjson.dumps({"type": "item", "item": item_json(stored, at)})
                    await self._send(channel, data, _item_key(stored.id), subscriber, "item")
                    sent += 1
                    if sent % _YIELD_EVERY == 0:
                        await self._gate.pause()  # let the counts read take its next step
            try:
                found = await counts
            except Exception:
                log.warning("inbox counts not read for the live update", exc_info=True)
                return
        finally:
            counts.cancel()  # a no-op once done; else we were cancelled
        for subscriber in by_subscriber:
            c = found[subscriber]
            data = b'{"type":"counts","unread":%d,"unseen":%d}' % (c.unread, c.unseen)
            await self._send(self.channel(subscriber), data, None, subscriber, "counts")

    async def _send(
        self, channel: str, data: bytes, key: str | None, subscriber: str, kind: str
    ) -> None:
        assert self.publish is not None
        try:
            await self.publish(channel, data, key)
        except Exception:
            log.warning(
                "inbox live update not published",
                exc_info=True,
                extra={"subscriber": subscriber, "type": kind},
            )

    async def _push(self, subscriber: str, message: dict[str, Any], key: str | None = None) -> None:
        if self.publish is None:
            return
        await self._send(
            self.channel(subscriber),
            orjson.dumps(message),
            None if key is None else _item_key(key),
            subscriber,
            message["type"],
        )


def _item_key(item_id: str) -> str:
    """The idempotency key of an item's live message: a retried delivery publishes it once."""
    return f"inbox-item:{item_id}"


def item_json(
    item: InboxItem, at: Callable[[float | None], str | None] | None = None
) -> dict[str, Any]:
    """An item as the API and the live channel show it (`at` formats its times)."""
    iso = _iso if at is None else at
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
        "created_at": iso(item.created_at),
        "seen_at": iso(item.seen_at),
        "read_at": iso(item.read_at),
        "archived_at": iso(item.archived_at),
    }


def _memo_iso() -> Callable[[float | None], str | None]:
    """`_iso` remembering its answers: the items of a batch mostly share their times."""
    memo: dict[float, str | None] = {}

    def at(t: float | None) -> str | None:
        if t is None:
            return None
        found = memo.get(t)
        if found is None:
            found = memo[t] = _iso(t)
        return found

    return at


def _fresh(item: InboxItem, step: str | None = None) -> InboxItem:
    """The item as a new one: no `seq`, unseen, unread, not archived (`step` if given)."""
    return InboxItem(
        id=item.id,
        subscriber=item.subscriber,
        title=item.title,
        body=item.body,
        created_at=item.created_at,
        event_id=item.event_id,
        workflow=item.workflow,
        step=item.step if step is None else step,
        action_url=item.action_url,
        data=item.data,
    )


def _iso(at: float | None) -> str | None:
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


def _seq(cursor: str, field: str) -> int:
    return int(decode_cursor(cursor, {"seq": int}, field)["seq"])
