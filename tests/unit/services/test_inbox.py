"""The inbox service's batches: every item checked before anything is written, then on each
subscriber's personal channel its items and one counts message; publishing never fails a
batch."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import orjson
import pytest

from tidings.adapters.clock import ManualClock
from tidings.adapters.memory.inbox import MemoryInboxStore
from tidings.errors import InvalidInput
from tidings.ports.inbox import Counts, InboxItem, Mark
from tidings.services.inbox import MAX_BATCH, InboxService


class Recorder:
    """A publisher that keeps what it was given, decoded; `fail` names calls (1-based) that
    raise instead."""

    def __init__(self, fail: Sequence[int] = ()) -> None:
        self.calls = 0
        self.fail = set(fail)
        self.messages: list[tuple[str, dict[str, Any], str | None]] = []

    async def __call__(self, channel: str, data: bytes, key: str | None) -> None:
        self.calls += 1
        if self.calls in self.fail:
            raise ConnectionError("broker down")
        self.messages.append((channel, orjson.loads(data), key))


class FailingCounts(MemoryInboxStore):
    async def counts_many(self, subscribers: Sequence[str]) -> dict[str, Counts]:
        raise ConnectionError("database gone")


def entry(subscriber: str, n: int, **kw: Any) -> InboxItem:
    fields: dict[str, Any] = {"title": f"title {n}", "body": "b", "created_at": 1000.0 + n}
    fields.update(kw)
    return InboxItem(id=f"{subscriber}-{n}", subscriber=subscriber, **fields)


def service(publish: Recorder | None, store: MemoryInboxStore | None = None) -> InboxService:
    return InboxService(store or MemoryInboxStore(), ManualClock(), publish, max_data_bytes=64)


def summary(messages: list[tuple[str, dict[str, Any], str | None]]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for channel, msg, key in messages:
        if msg["type"] == "item":
            out.append((channel, "item", msg["item"]["id"], key))
        else:
            out.append((channel, "counts", msg["unread"], msg["unseen"], key))
    return out


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"title": ""}, "items.3.title"),
        ({"title": "x" * 501}, "items.3.title"),
        ({"subscriber": "no spaces"}, "items.3.subscriber"),
        ({"body": "x" * 10_001}, "items.3.body"),
        ({"action_url": "javascript:alert(1)"}, "items.3.action_url"),
        ({"data": {"big": "x" * 100}}, "items.3.data"),
        ({"id": ""}, "items.3.id"),
        ({"id": "x" * 65}, "items.3.id"),
    ],
)
async def test_an_invalid_item_fails_the_batch_before_anything_is_written(
    change: dict[str, Any], field: str
) -> None:
    published = Recorder()
    inbox = service(published)
    batch = [entry("alice", n) for n in range(5)]
    batch[3] = dataclasses.replace(batch[3], **change)
    with pytest.raises(InvalidInput) as err:
        await inbox.add_many(batch)
    assert err.value.field == field
    assert await inbox.store.feed("alice", limit=10) == []
    assert published.messages == []


async def test_a_batch_over_the_limit_is_refused() -> None:
    inbox = service(Recorder())
    with pytest.raises(InvalidInput) as err:
        await inbox.add_many([entry("alice", n) for n in range(MAX_BATCH + 1)])
    assert err.value.field == "items"


async def test_add_checks_the_same_fields_without_a_prefix() -> None:
    inbox = service(Recorder())
    with pytest.raises(InvalidInput) as err:
        await inbox.add("alice", title="ok", action_url="ftp://x")
    assert err.value.field == "action_url"
    with pytest.raises(InvalidInput) as err:
        await inbox.add("alice", title="")
    assert err.value.field == "title"


async def test_a_batch_publishes_each_subscribers_items_then_one_counts_message() -> None:
    published = Recorder()
    inbox = service(published)
    await inbox.add("bob", title="earlier")
    published.messages.clear()
    batch = [
        entry("alice", 1, event_id="ev"),
        entry("bob", 2, event_id="ev"),
        entry("alice", 3),
        entry("carol", 4, event_id="ev"),
    ]
    results = await inbox.add_many(batch)
    assert [(i.id, created) for i, created in results] == [(b.id, True) for b in batch]
    assert results[0][0].step == "in_app" and results[2][0].step is None
    # every item of the batch, then one counts message per subscriber: on each channel the
    # counts come after its items
    assert summary(published.messages) == [
        ("inbox:#alice", "item", "alice-1", "inbox-item:alice-1"),
        ("inbox:#alice", "item", "alice-3", "inbox-item:alice-3"),
        ("inbox:#bob", "item", "bob-2", "inbox-item:bob-2"),
        ("inbox:#carol", "item", "carol-4", "inbox-item:carol-4"),
        ("inbox:#alice", "counts", 2, 2, None),
        ("inbox:#bob", "counts", 2, 2, None),
        ("inbox:#carol", "counts", 1, 1, None),
    ]
    item_msg = published.messages[0][1]["item"]
    assert item_msg["title"] == "title 1" and item_msg["event_id"] == "ev"
    assert item_msg["created_at"] == "1970-01-01T00:16:41Z"


async def test_a_retried_batch_republishes_with_the_same_keys_and_duplicates_once() -> None:
    published = Recorder()
    inbox = service(published)
    batch = [entry("alice", 1, event_id="ev"), entry("alice", 2, event_id="ev2")]
    first = await inbox.add_many(batch)
    await inbox.store.mark_changed("alice", Mark.READ, 5.0, ids=[batch[0].id])
    published.messages.clear()
    again = await inbox.add_many(
        [
            *batch,
            dataclasses.replace(batch[0], id="other-id"),  # same delivery, new id: the first
        ]
    )
    assert [created for _, created in again] == [False, False, False]
    assert again[2][0].id == batch[0].id and again[1][0] == first[1][0]
    assert summary(published.messages) == [
        ("inbox:#alice", "item", "alice-1", "inbox-item:alice-1"),
        ("inbox:#alice", "item", "alice-2", "inbox-item:alice-2"),
        ("inbox:#alice", "counts", 1, 1, None),
    ]
    assert published.messages[0][1]["item"]["read_at"] is not None  # as stored


async def test_a_failed_publish_is_logged_and_never_fails_the_batch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    published = Recorder(fail=[1, 4])
    inbox = service(published)
    with caplog.at_level(logging.WARNING, logger="tidings.services.inbox"):
        results = await inbox.add_many([entry("alice", 1), entry("bob", 2)])
    assert all(created for _, created in results)
    assert summary(published.messages) == [  # alice's item and bob's counts failed
        ("inbox:#bob", "item", "bob-2", "inbox-item:bob-2"),
        ("inbox:#alice", "counts", 1, 1, None),
    ]
    assert len([r for r in caplog.records if "not published" in r.message]) == 2
    assert len(await inbox.store.feed("alice", limit=10)) == 1


async def test_unreadable_counts_still_publish_the_items(
    caplog: pytest.LogCaptureFixture,
) -> None:
    published = Recorder()
    inbox = service(published, FailingCounts())
    with caplog.at_level(logging.WARNING, logger="tidings.services.inbox"):
        results = await inbox.add_many([entry("alice", 1)])
    assert results[0][1]
    assert summary(published.messages) == [
        ("inbox:#alice", "item", "alice-1", "inbox-item:alice-1")
    ]
    assert any("counts not read" in r.message for r in caplog.records)


async def test_without_a_publisher_and_empty_batches() -> None:
    inbox = service(None)
    assert await inbox.add_many([]) == []
    results = await inbox.add_many([entry("alice", 1)])
    assert results[0][1] and results[0][0].seq > 0
