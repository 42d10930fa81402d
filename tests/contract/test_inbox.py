"""Contract of InboxStore, on memory, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.contract.conftest import STORE_BACKENDS, sql_url
from tidings.adapters import sql
from tidings.adapters.memory.inbox import MemoryInboxStore
from tidings.adapters.sql.inbox import SqlInboxStore
from tidings.errors import NotFound
from tidings.ports.inbox import Archived, Counts, InboxItem, Mark, Status


@pytest.fixture(params=STORE_BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield MemoryInboxStore()
        return
    engine = sql.create_engine(await sql_url(request, request.param, tmp_path))
    try:
        yield SqlInboxStore(engine)
    finally:
        await engine.dispose()


_n = 0


def item(subscriber: str = "alice", **kw: Any) -> InboxItem:
    global _n
    _n += 1
    fields: dict[str, Any] = {"title": f"t{_n}", "body": "b", "created_at": float(_n)}
    fields.update(kw)
    return InboxItem(id=f"i{_n}", subscriber=subscriber, **fields)


async def test_add_assigns_increasing_seq_and_round_trips(store: Any) -> None:
    a, created = await store.add(item(data={"k": [1, "x"]}, action_url="/x", workflow="w"))
    b, _ = await store.add(item())
    assert created and 0 < a.seq < b.seq
    assert await store.get("alice", a.id) == a
    assert a.data == {"k": [1, "x"]} and a.action_url == "/x" and a.workflow == "w"


async def test_add_is_idempotent_per_event_subscriber_and_step(store: Any) -> None:
    first, created = await store.add(item(event_id="e1", step="in_app", title="one"))
    again, created2 = await store.add(item(event_id="e1", step="in_app", title="two"))
    assert created and not created2 and again == first
    other_step, c3 = await store.add(item(event_id="e1", step="digest"))
    other_sub, c4 = await store.add(item("bob", event_id="e1", step="in_app"))
    assert c3 and c4 and len({first.id, other_step.id, other_sub.id}) == 3
    feed = await store.feed("alice", limit=10)
    assert [i.id for i in feed] == [other_step.id, first.id]


async def test_concurrent_duplicate_adds_store_one(store: Any) -> None:
    results = await asyncio.gather(
        *(store.add(item(event_id="race", step="in_app")) for _ in range(8))
    )
    assert sum(created for _, created in results) == 1
    assert len({i.id for i, _ in results}) == 1
    assert len(await store.feed("alice", limit=50)) == 1


async def test_items_are_private_to_their_subscriber(store: Any) -> None:
    mine, _ = await store.add(item("alice"))
    theirs, _ = await store.add(item("bob"))
    with pytest.raises(NotFound):
        await store.get("alice", theirs.id)
    assert await store.mark("alice", Mark.READ, 5.0, ids=[theirs.id, mine.id]) == 1
    assert (await store.get("bob", theirs.id)).read_at is None
    assert [i.id for i in await store.feed("alice", limit=10)] == [mine.id]


async def test_feed_pages_newest_first_without_gaps_while_items_arrive(store: Any) -> None:
    first = [(await store.add(item()))[0].id for _ in range(25)]
    seen: list[str] = []
    before = None
    while True:
        page = await store.feed("alice", before=before, limit=4)
        if not page:
            break
        seen += [i.id for i in page]
        before = page[-1].seq
        await store.add(item())  # newer: never on a later page
    assert seen == list(reversed(first))


async def test_filters_marks_and_counts(store: Any) -> None:
    items = [(await store.add(item()))[0] for _ in range(5)]
    ids = [i.id for i in items]
    assert await store.counts("alice") == Counts(unread=5, unseen=5)
    assert await store.mark("alice", Mark.SEEN, 10.0, ids=ids[:2]) == 2
    assert await store.mark("alice", Mark.SEEN, 11.0, ids=ids[:2]) == 0  # already seen
    assert await store.mark("alice", Mark.READ, 12.0, ids=[ids[1], ids[2]]) == 2
    got = await store.get("alice", ids[1])
    assert got.seen_at == 10.0 and got.read_at == 12.0  # seen time kept
    got = await store.get("alice", ids[2])
    assert got.seen_at == 12.0 and got.read_at == 12.0  # read implies seen
    assert await store.counts("alice") == Counts(unread=3, unseen=2)

    def ids_of(found: list[InboxItem]) -> list[str]:
        return [i.id for i in found]

    assert ids_of(await store.feed("alice", status=Status.UNREAD, limit=9)) == [
        ids[4],
        ids[3],
        ids[0],
    ]
    assert ids_of(await store.feed("alice", status=Status.READ, limit=9)) == [ids[2], ids[1]]
    assert ids_of(await store.feed("alice", status=Status.UNSEEN, limit=9)) == [ids[4], ids[3]]
    assert ids_of(await store.feed("alice", status=Status.SEEN, limit=9)) == ids[2::-1]

    assert await store.mark("alice", Mark.ARCHIVED, 13.0, ids=[ids[4]]) == 1
    assert await store.counts("alice") == Counts(unread=2, unseen=1)
    assert ids_of(await store.feed("alice", limit=9)) == ids[3::-1]
    assert ids_of(await store.feed("alice", archived=Archived.ONLY, limit=9)) == [ids[4]]
    assert len(await store.feed("alice", archived=Archived.INCLUDE, limit=9)) == 5
    assert await store.mark("alice", Mark.UNARCHIVED, 14.0, ids=[ids[4]]) == 1
    assert await store.mark("alice", Mark.UNREAD, 15.0, ids=[ids[1], ids[0]]) == 1
    assert (await store.get("alice", ids[1])).read_at is None

    # all up to a position, then all
    assert await store.mark("alice", Mark.READ, 16.0, until=items[2].seq) == 2  # ids 0, 1
    assert await store.counts("alice") == Counts(unread=2, unseen=0 + 2)
    assert await store.mark("alice", Mark.READ, 17.0) == 2
    assert await store.counts("alice") == Counts(unread=0, unseen=0)
    assert await store.counts("nobody") == Counts(unread=0, unseen=0)


async def test_purge(store: Any) -> None:
    await store.add(item("alice", event_id="e", step="s"))
    await store.add(item("alice"))
    keep, _ = await store.add(item("bob"))
    assert await store.purge("alice") == 2
    assert await store.feed("alice", limit=10) == []
    assert await store.get("bob", keep.id) == keep
    # after a purge the same delivery can be stored again
    assert (await store.add(item("alice", event_id="e", step="s")))[1]
