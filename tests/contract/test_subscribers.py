"""Contract of SubscriberStore and TopicStore, on memory, SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from tests.contract.conftest import STORE_BACKENDS, sql_url
from tidings.adapters import sql
from tidings.adapters.memory.subscribers import MemorySubscriberStore, MemoryTopicStore
from tidings.adapters.sql.subscribers import SqlSubscriberStore, SqlTopicStore
from tidings.core.subscribers import Device, Platform, WebPushSubscription
from tidings.errors import Conflict, InvalidInput, NotFound
from tidings.ports.subscribers import Subscriber, Topic

APNS = "a" * 64
WP = WebPushSubscription("https://push.example/abc", "BP" + "x" * 85, "y" * 22)


@dataclass
class Kit:
    subscribers: Any
    topics: Any


@pytest.fixture(params=STORE_BACKENDS)
async def kit(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Kit]:
    if request.param == "memory":
        subs = MemorySubscriberStore()
        yield Kit(subs, MemoryTopicStore(subs))
        return
    engine = sql.create_engine(await sql_url(request, request.param, tmp_path))
    try:
        yield Kit(SqlSubscriberStore(engine), SqlTopicStore(engine))
    finally:
        await engine.dispose()


def sub(sid: str, **kw: Any) -> Subscriber:
    return Subscriber(id=sid, created_at=10.0, updated_at=10.0, **kw)


async def test_put_creates_then_replaces_keeping_created_at(kit: Kit) -> None:
    s = sub(
        "alice",
        email="a@x.org",
        phone="+14155550123",
        locale="pt-BR",
        timezone="Europe/Lisbon",
        data={"plan": "pro", "n": [1, 2]},
        devices=(Device(Platform.APNS, APNS), Device(Platform.FCM, "fcm-token-1")),
        webpush=(WP,),
    )
    stored, created = await kit.subscribers.put(s)
    assert created and stored == s
    assert await kit.subscribers.get("alice") == s
    again = replace(s, email=None, devices=(), created_at=99.0, updated_at=20.0)
    stored, created = await kit.subscribers.put(again)
    assert not created
    assert stored == replace(again, created_at=10.0)
    assert await kit.subscribers.get("alice") == stored


async def test_a_device_token_moves_to_its_new_owner(kit: Kit) -> None:
    d = Device(Platform.FCM, "shared-token")
    await kit.subscribers.put(sub("a", devices=(d,), webpush=(WP,)))
    await kit.subscribers.put(sub("b", devices=(d,), webpush=(WP,)))
    a, b = await kit.subscribers.get_many(["a", "b"])
    assert a.devices == () and a.webpush == ()
    assert b.devices == (d,) and b.webpush == (WP,)


async def test_get_many_without_devices_leaves_devices_and_web_push_empty(kit: Kit) -> None:
    d = Device(Platform.FCM, "fcm-token-9")
    full = sub("a", email="a@example.com", devices=(d,), webpush=(WP,))
    await kit.subscribers.put(full)
    [lean] = await kit.subscribers.get_many(["a"], devices=False)
    assert lean == replace(await kit.subscribers.get("a"), devices=(), webpush=())
    assert lean.email == "a@example.com"
    [whole] = await kit.subscribers.get_many(["a"])
    assert (whole.devices, whole.webpush) == ((d,), (WP,))


async def test_get_many_keeps_order_and_skips_unknown(kit: Kit) -> None:
    for sid in ("x", "y", "z"):
        await kit.subscribers.put(sub(sid))
    found = await kit.subscribers.get_many(["z", "nope", "x", "z"])
    assert [s.id for s in found] == ["z", "x", "z"]
    lean = await kit.subscribers.get_many(["z", "nope", "x", "z"], devices=False)
    assert lean == found
    assert all(type(s.created_at) is float and type(s.updated_at) is float for s in lean)


async def test_unknown_and_delete(kit: Kit) -> None:
    with pytest.raises(NotFound):
        await kit.subscribers.get("ghost")
    with pytest.raises(NotFound):
        await kit.subscribers.delete("ghost")
    await kit.subscribers.put(sub("gone", devices=(Device(Platform.FCM, "tok-12345"),)))
    await kit.topics.create(Topic("news", "News", 1.0))
    await kit.topics.add_members("news", ["gone"], 1.0)
    await kit.subscribers.delete("gone")
    with pytest.raises(NotFound):
        await kit.subscribers.get("gone")
    assert await kit.topics.count("news") == 0
    # the token is free again
    await kit.subscribers.put(sub("next", devices=(Device(Platform.FCM, "tok-12345"),)))


async def test_pages_see_every_subscriber_once_while_others_arrive(kit: Kit) -> None:
    ids = [f"s{i:03d}" for i in range(0, 60, 2)]
    for sid in ids:
        await kit.subscribers.put(sub(sid))
    seen: list[str] = []
    after = None
    n = 1
    while True:
        page = await kit.subscribers.page(after=after, limit=7)
        if not page:
            break
        seen += [s.id for s in page]
        after = page[-1].id
        await kit.subscribers.put(sub(f"s{n:03d}"))  # lands before and after the cursor
        n += 2
    assert len(seen) == len(set(seen))
    assert set(ids) <= set(seen)
    assert seen == sorted(seen)


async def test_topics(kit: Kit) -> None:
    t = Topic("news", "News", 5.0)
    assert await kit.topics.create(t) == t
    with pytest.raises(Conflict):
        await kit.topics.create(t)
    assert await kit.topics.get("news") == t
    for sid in ("a", "b", "c"):
        await kit.subscribers.put(sub(sid))
    assert await kit.topics.add_members("news", ["a", "b", "a"], 6.0) == 2
    assert await kit.topics.add_members("news", ["b", "c"], 7.0) == 1
    with pytest.raises(InvalidInput) as err:
        await kit.topics.add_members("news", ["c", "ghost"], 8.0)
    assert err.value.field == "subscribers" and "ghost" in err.value.message
    assert await kit.topics.count("news") == 3
    assert await kit.topics.members("news", after=None, limit=2) == ["a", "b"]
    assert await kit.topics.members("news", after="b", limit=2) == ["c"]
    assert await kit.topics.remove_members("news", ["a", "zzz", "a"]) == 1
    assert await kit.topics.remove_members("news", ["a"]) == 0
    assert await kit.topics.members("news", after=None, limit=10) == ["b", "c"]
    for missing in (
        kit.topics.get("nope"),
        kit.topics.add_members("nope", ["a"], 1.0),
        kit.topics.remove_members("nope", ["a"]),
        kit.topics.members("nope", after=None, limit=1),
        kit.topics.delete("nope"),
    ):
        with pytest.raises(NotFound):
            await missing
    await kit.topics.create(Topic("alerts", "Alerts", 5.0))
    assert [x.key for x in await kit.topics.page(after=None, limit=10)] == ["alerts", "news"]
    assert [x.key for x in await kit.topics.page(after="alerts", limit=10)] == ["news"]
    await kit.topics.delete("news")
    with pytest.raises(NotFound):
        await kit.topics.get("news")
    assert len(await kit.subscribers.get_many(["a", "b", "c"])) == 3  # members stay


async def test_iter_members_walks_a_large_topic_in_bounded_batches(kit: Kit) -> None:
    await kit.topics.create(Topic("big", "Big", 1.0))
    ids = [f"u{i:05d}" for i in range(3000)]
    if isinstance(kit.subscribers, SqlSubscriberStore):
        await _bulk_subscribers(kit.subscribers, ids)
    else:
        for sid in ids:
            await kit.subscribers.put(sub(sid))
    for start in range(0, len(ids), 1000):
        assert await kit.topics.add_members("big", ids[start : start + 1000], 2.0) == 1000
    batches = [b async for b in kit.topics.iter_members("big", batch=128)]
    assert all(1 <= len(b) <= 128 for b in batches)
    flat = [m for b in batches for m in b]
    assert flat == ids
    with pytest.raises(NotFound):
        [b async for b in kit.topics.iter_members("nope", batch=10)]


async def _bulk_subscribers(store: SqlSubscriberStore, ids: list[str]) -> None:
    from sqlalchemy import insert

    from tidings.adapters.sql.engine import writer
    from tidings.adapters.sql.tables import subscribers

    rows = [{"id": i, "data": {}, "created_at": 1.0, "updated_at": 1.0} for i in ids]
    async with writer(store._engine) as conn:
        await conn.execute(insert(subscribers), rows)
