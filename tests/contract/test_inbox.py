"""Contract of InboxStore, on memory, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.contract.conftest import STORE_BACKENDS, sql_url
from tidings.adapters import sql
from tidings.adapters.memory.inbox import MemoryInboxStore
from tidings.adapters.sql.inbox import SqlInboxStore
from tidings.errors import Conflict, NotFound
from tidings.ports.inbox import Archived, Counts, InboxItem, Mark, Marked, Status


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
    assert len(await store.mark_changed("alice", Mark.READ, 5.0, ids=[theirs.id, mine.id])) == 1
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
    assert len(await store.mark_changed("alice", Mark.SEEN, 10.0, ids=ids[:2])) == 2
    assert len(await store.mark_changed("alice", Mark.SEEN, 11.0, ids=ids[:2])) == 0  # already seen
    assert len(await store.mark_changed("alice", Mark.READ, 12.0, ids=[ids[1], ids[2]])) == 2
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

    assert len(await store.mark_changed("alice", Mark.ARCHIVED, 13.0, ids=[ids[4]])) == 1
    assert await store.counts("alice") == Counts(unread=2, unseen=1)
    assert ids_of(await store.feed("alice", limit=9)) == ids[3::-1]
    assert ids_of(await store.feed("alice", archived=Archived.ONLY, limit=9)) == [ids[4]]
    assert len(await store.feed("alice", archived=Archived.INCLUDE, limit=9)) == 5
    assert len(await store.mark_changed("alice", Mark.UNARCHIVED, 14.0, ids=[ids[4]])) == 1
    assert len(await store.mark_changed("alice", Mark.UNREAD, 15.0, ids=[ids[1], ids[0]])) == 1
    assert (await store.get("alice", ids[1])).read_at is None

    # all up to a position, then all
    assert (
        len(await store.mark_changed("alice", Mark.READ, 16.0, until=items[2].seq)) == 2
    )  # ids 0, 1
    assert await store.counts("alice") == Counts(unread=2, unseen=0 + 2)
    assert len(await store.mark_changed("alice", Mark.READ, 17.0)) == 2
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


# -- batches ---------------------------------------------------------------------------------


async def test_add_many_keeps_input_order_and_assigns_increasing_seq(store: Any) -> None:
    before, _ = await store.add(item("carol"))
    batch = [item(s, data={"n": n}) for n, s in enumerate(["bob", "alice", "bob", "carol"])]
    results = await store.add_many(batch)
    assert [(i.id, created) for i, created in results] == [(b.id, True) for b in batch]
    seqs = [i.seq for i, _ in results]
    assert before.seq < seqs[0] and seqs == sorted(seqs) and len(set(seqs)) == 4
    for stored, _ in results:
        assert await store.get(stored.subscriber, stored.id) == stored
    assert [i.id for i in await store.feed("bob", limit=10)] == [batch[2].id, batch[0].id]
    assert await store.add_many([]) == []


async def test_add_many_is_idempotent_across_batches(store: Any) -> None:
    first = await store.add_many(
        [item("alice", event_id="e1", step="in_app"), item("bob", event_id="e1", step="in_app")]
    )
    again = await store.add_many(
        [
            item("bob", event_id="e1", step="in_app", title="other content"),
            item("alice", event_id="e2", step="in_app"),
            item("alice", event_id="e1", step="in_app"),
        ]
    )
    assert again[0] == (first[1][0], False)
    assert again[2] == (first[0][0], False)
    assert again[1][1] and again[1][0].seq > max(i.seq for i, _ in first)
    single, created = await store.add(item("alice", event_id="e2", step="in_app"))
    assert not created and single == again[1][0]
    assert len(await store.feed("alice", limit=10)) == 2


async def test_add_many_retried_with_the_same_items_stores_nothing_new(store: Any) -> None:
    batch = [item(f"s{n}", event_id="ev", step="in_app") for n in range(5)]
    first = await store.add_many(batch)
    retried = await store.add_many(batch)
    assert [created for _, created in first] == [True] * 5
    assert retried == [(i, False) for i, _ in first]


async def test_add_many_duplicates_in_a_batch_come_back_as_the_first(store: Any) -> None:
    existing, _ = await store.add(item("alice", event_id="old", step="in_app"))
    results = await store.add_many(
        [
            item("alice", event_id="e", step="in_app", title="first"),
            item("alice", event_id="old", step="in_app"),
            item("alice", event_id="e", step="in_app", title="second"),
            item("alice"),  # no delivery key: always new
            item("alice", event_id="e", step="digest"),
            item("alice", event_id="old", step="in_app"),
            item("alice", event_id="e", step="in_app", title="third"),
        ]
    )
    winner = results[0][0]
    assert results[0][1] and winner.title == "first"
    assert results[2] == (winner, False) and results[6] == (winner, False)
    assert results[1] == (existing, False) and results[5] == (existing, False)
    assert results[3][1] and results[4][1]
    assert winner.seq < results[3][0].seq < results[4][0].seq
    assert [i.id for i in await store.feed("alice", limit=10)] == [
        results[4][0].id,
        results[3][0].id,
        winner.id,
        existing.id,
    ]


async def test_an_event_without_a_step_is_not_a_delivery_key(store: Any) -> None:
    a, b = await store.add_many([item(event_id="e"), item(event_id="e")])
    c = await store.add(item(event_id="e"))
    assert a[1] and b[1] and c[1] and len({a[0].id, b[0].id, c[0].id}) == 3


async def test_add_many_is_all_or_nothing_on_an_id_conflict(store: Any) -> None:
    taken, _ = await store.add(item("alice"))
    fresh = item("alice", event_id="e", step="in_app")
    clash = dataclasses.replace(item("alice", event_id="e2", step="in_app"), id=taken.id)
    with pytest.raises(Conflict):
        await store.add_many([fresh, clash])
    twice = item("bob")
    with pytest.raises(Conflict):
        await store.add_many([fresh, twice, twice])
    assert [i.id for i in await store.feed("alice", limit=10)] == [taken.id]
    assert await store.feed("bob", limit=10) == []
    assert (await store.add_many([fresh]))[0][1]  # nothing of the failed batches was kept


async def test_add_many_of_500_items(store: Any) -> None:
    batch = [item(f"user{n % 50}", event_id=f"e{n // 50}", step="in_app") for n in range(500)]
    results = await store.add_many(batch)
    assert [i.id for i, _ in results] == [b.id for b in batch]
    assert all(created for _, created in results)
    seqs = [i.seq for i, _ in results]
    assert all(a < b for a, b in itertools.pairwise(seqs))
    again = await store.add_many([*batch[250:], item("user0", event_id="new", step="in_app")])
    assert again[:250] == [(i, False) for i, _ in results[250:]]
    assert again[250][1] and again[250][0].seq > seqs[-1]
    counts = await store.counts_many([f"user{n}" for n in range(50)])
    assert counts["user0"] == Counts(unread=11, unseen=11)
    assert counts["user49"] == Counts(unread=10, unseen=10)


async def test_concurrent_overlapping_batches_store_each_delivery_once(store: Any) -> None:
    def batch() -> list[InboxItem]:
        return [item(f"u{n}", event_id="race", step="in_app") for n in range(20)]

    results = await asyncio.gather(*(store.add_many(batch()) for _ in range(4)))
    for n in range(20):
        got = [r[n] for r in results]
        assert sum(created for _, created in got) == 1
        assert len({i.id for i, _ in got}) == 1
        assert len(await store.feed(f"u{n}", limit=10)) == 1


async def test_counts_many(store: Any) -> None:
    items = [i for i, _ in await store.add_many([item("alice") for _ in range(4)])]
    await store.add(item("bob"))
    await store.mark_changed("alice", Mark.READ, 5.0, ids=[items[0].id])
    await store.mark_changed("alice", Mark.SEEN, 5.0, ids=[items[1].id])
    await store.mark_changed("alice", Mark.ARCHIVED, 5.0, ids=[items[2].id])
    counts = await store.counts_many(["alice", "nobody", "bob", "alice"])
    assert counts == {
        "alice": Counts(unread=2, unseen=1),
        "nobody": Counts(unread=0, unseen=0),
        "bob": Counts(unread=1, unseen=1),
    }
    assert counts["alice"] == await store.counts("alice")
    assert await store.counts_many([]) == {}
    many = [f"ghost{n}" for n in range(1200)]
    assert await store.counts_many(many) == dict.fromkeys(many, Counts(unread=0, unseen=0))


async def test_add_many_larger_than_one_statement(store: Any) -> None:
    batch = [item(f"big{n % 7}") for n in range(1_200)]  # SQLite: two INSERTs
    results = await store.add_many(batch)
    seqs = [i.seq for i, _ in results]
    assert all(created for _, created in results)
    assert all(a < b for a, b in itertools.pairwise(seqs))
    assert (await store.counts_many(["big0"]))["big0"] == Counts(unread=172, unseen=172)


# -- mark_changed: the items a mark changed, with their states after it ---------------------


async def fill(store: Any, subscriber: str, n: int) -> list[InboxItem]:
    items = [
        InboxItem(
            id=f"{subscriber}-{i}",
            subscriber=subscriber,
            title=f"t{i}",
            body="",
            created_at=float(i),
            event_id=f"e{i}" if i % 2 == 0 else None,
        )
        for i in range(n)
    ]
    return [stored for stored, _ in await store.add_many(items)]


def by_id(marked: list[Marked]) -> dict[str, Marked]:
    return {m.id: m for m in marked}


async def test_mark_changed_returns_the_changed_items_as_they_stand(store: Any) -> None:
    items = await fill(store, "alice", 4)
    theirs = await fill(store, "bob", 1)
    ids = [i.id for i in items]
    seen = await store.mark_changed("alice", Mark.SEEN, 10.0, ids=[ids[0], theirs[0].id])
    assert seen == [Marked(ids[0], "e0", 10.0, None, None)]
    # read sets seen where unset; the seen item keeps its first instant
    read = by_id(await store.mark_changed("alice", Mark.READ, 11.0, ids=ids[:2]))
    assert read == {
        ids[0]: Marked(ids[0], "e0", 10.0, 11.0, None),
        ids[1]: Marked(ids[1], None, 11.0, 11.0, None),
    }
    assert await store.mark_changed("alice", Mark.READ, 12.0, ids=ids[:2]) == []
    # up to a watermark, then all: only what is not archived yet
    upto = await store.mark_changed("alice", Mark.ARCHIVED, 13.0, until=items[1].seq)
    assert sorted(m.id for m in upto) == ids[:2]
    rest = await store.mark_changed("alice", Mark.ARCHIVED, 14.0)
    assert by_id(rest) == {
        ids[2]: Marked(ids[2], "e2", None, None, 14.0),
        ids[3]: Marked(ids[3], None, None, None, 14.0),
    }
    undone = await store.mark_changed("alice", Mark.UNREAD, 15.0)
    assert sorted(m.id for m in undone) == ids[:2]
    assert {m.read_at for m in undone} == {None}
    assert (await store.get("bob", theirs[0].id)).seen_at is None
    # `mark` counts the same changes
    assert len(await store.mark_changed("alice", Mark.UNARCHIVED, 16.0, ids=ids)) == 4
    assert len(await store.mark_changed("alice", Mark.UNARCHIVED, 16.0, ids=ids)) == 0
