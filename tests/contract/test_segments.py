"""Contract of SegmentStore and Audiences on memory, SQLite and PostgreSQL.

The audience walks are checked against the condition language itself: for every filter
below, a walk in small steps (and a count) must find exactly the subscribers for whom
`tidings.core.segments.matches` holds, each once, in id order, whether the adapter filters
in SQL or in Python."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from tests.contract.conftest import STORE_BACKENDS, sql_url
from tidings.adapters import sql
from tidings.adapters.memory.segments import MemoryAudiences, MemorySegmentStore
from tidings.adapters.memory.subscribers import MemorySubscriberStore, MemoryTopicStore
from tidings.adapters.sql.segments import SqlAudiences, SqlSegmentStore
from tidings.adapters.sql.subscribers import SqlSubscriberStore, SqlTopicStore
from tidings.core import segments as rules
from tidings.errors import NotFound
from tidings.ports.segments import Audience, Segment
from tidings.ports.subscribers import Subscriber, Topic


@dataclass
class Kit:
    backend: str
    subscribers: Any
    topics: Any
    segments: Any
    audiences: Any


@pytest.fixture(params=STORE_BACKENDS)
async def kit(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Kit]:
    if request.param == "memory":
        subs = MemorySubscriberStore()
        topics = MemoryTopicStore(subs)
        yield Kit("memory", subs, topics, MemorySegmentStore(), MemoryAudiences(subs, topics))
        return
    engine = sql.create_engine(await sql_url(request, request.param, tmp_path))
    try:
        yield Kit(
            request.param,
            SqlSubscriberStore(engine),
            SqlTopicStore(engine),
            SqlSegmentStore(engine),
            SqlAudiences(engine),
        )
    finally:
        await engine.dispose()


LOCALES = ["de", "de-AT", "en", None, "fr"]
ZONES = ["Europe/Berlin", "UTC", None]
PLANS: list[Any] = ["pro", "free", "team", "absent", 5, "5", True]
ORDERS: list[Any] = [0, 3, 4.5, 9, 12, "7", None, "absent", 2**53 + 1, -1]
NAMES = ["Zoë", "zoe", "Émile", "adam", "Zoe", "zz"]


def population() -> list[Subscriber]:
    out = []
    for i in range(40):
        data: dict[str, Any] = {}
        if PLANS[i % 7] != "absent":
            data["plan"] = PLANS[i % 7]
        if ORDERS[i % 10] != "absent":
            data["orders"] = ORDERS[i % 10]
        if i % 3 != 2:
            data["vip"] = i % 3 == 0
        if i % 5 == 0:
            data["address"] = {"country": "DE" if i % 10 == 0 else "FR"}
        if i % 4 == 1:
            data["tags"] = ["a", "b"] if i % 8 == 1 else ["b"]
        if i % 6 == 0:
            data["a-b"] = "x"
        data["name"] = NAMES[i % 6]
        out.append(
            Subscriber(
                id=f"s{i:02d}",
                email=None if i % 3 == 0 else f"s{i}@example.com",
                phone="+14155550123" if i % 4 == 0 else None,
                locale=LOCALES[i % 5],
                timezone=ZONES[i % 3],
                data=data,
                created_at=1.0,
                updated_at=1.0,
            )
        )
    return out


# (filter, whether SQL states it exactly)
FILTERS: list[tuple[dict[str, Any], bool]] = [
    ({"subscriber.locale": "de"}, True),
    ({"subscriber.locale": {"in": ["de", "de-AT", 5]}}, True),
    ({"subscriber.email": {"exists": True}}, True),
    ({"subscriber.phone": {"exists": False}}, True),
    ({"subscriber.locale": {"ne": "de"}}, True),
    ({"subscriber.locale": 5}, True),
    ({"subscriber.timezone": {"lt": "Europe/Zurich"}}, True),
    ({"subscriber.email": {"contains": "1@example"}}, True),
    ({"subscriber.id": {"gte": "s10", "lt": "s20"}}, True),
    ({"subscriber.data.plan": "pro"}, True),
    ({"subscriber.data.plan": {"in": ["pro", "team"]}}, True),
    ({"subscriber.data.plan": 5}, True),
    ({"subscriber.data.plan": "5"}, True),
    ({"subscriber.data.plan": True}, True),
    ({"subscriber.data.plan": {"ne": "pro"}}, True),
    ({"subscriber.data.plan": {"ne": None}}, True),
    ({"subscriber.data.orders": {"gte": 3, "lt": 10}}, True),
    ({"subscriber.data.orders": {"gt": 2.5}}, True),
    ({"subscriber.data.orders": {"gt": 2**53}}, True),
    ({"subscriber.data.orders": {"lte": "7"}}, True),
    ({"subscriber.data.orders": None}, True),
    ({"subscriber.data.orders": {"exists": True}}, True),
    ({"subscriber.data.orders": {"ne": 4.5}}, True),
    ({"subscriber.data.orders": {"in": [0, 9, "7", None]}}, True),
    ({"subscriber.data.vip": True}, True),
    ({"subscriber.data.vip": {"ne": True}}, True),
    ({"subscriber.data.address.country": "DE"}, True),
    ({"subscriber.data.address.country": {"exists": False}}, True),
    ({"subscriber.data.name": {"gt": "Zoe"}}, True),
    ({"subscriber.data.name": {"lt": "adam"}}, True),
    ({"subscriber.data.a-b": "x"}, True),
    ({"subscriber.data": {"exists": True}}, True),
    ({"not": {"subscriber.data.plan": "free"}}, True),
    ({"or": [{"subscriber.locale": "fr"}, {"subscriber.data.vip": True}]}, True),
    (
        {
            "and": [
                {"subscriber.email": {"exists": True}},
                {"not": {"subscriber.locale": {"in": ["de"]}}},
            ]
        },
        True,
    ),
    ({"subscriber.data.tags": {"contains": "a"}}, False),
    ({"subscriber.data.tags.0": "a"}, False),
    ({"subscriber.data.address": {"eq": {"country": "DE"}}}, False),
    ({"not": {"subscriber.data.tags": {"contains": "b"}}}, False),
    ({"subscriber.locale": "de", "subscriber.data.tags": {"contains": "b"}}, False),
]


async def seed(kit: Kit) -> list[Subscriber]:
    people = population()
    for s in people:
        await kit.subscribers.put(s)
    await kit.topics.create(Topic("t", "T", 1.0))
    await kit.topics.add_members("t", [s.id for s in people[::2]], 1.0)
    return people


def expected(people: list[Subscriber], spec: dict[str, Any], topic: bool) -> list[str]:
    where = rules.parse_filter(spec)
    return [s.id for s in (people[::2] if topic else people) if rules.matches(where, s)]


async def walk(kit: Kit, audience: Audience, limit: int, examine: int) -> list[str]:
    found: list[str] = []
    after = None
    for _ in range(200):
        step = await kit.audiences.scan(audience, after=after, limit=limit, examine=examine)
        assert len(step.ids) <= limit and step.examined <= examine
        assert step.ids == sorted(step.ids)
        assert all(after is None or i > after for i in step.ids)
        found += step.ids
        if step.done:
            return found
        assert step.last is not None
        after = step.last
    raise AssertionError("the walk does not end")


@pytest.mark.parametrize("topic", [False, True], ids=["everyone", "topic"])
async def test_walks_and_counts_find_exactly_the_matching_subscribers(
    kit: Kit, topic: bool
) -> None:
    people = await seed(kit)
    for spec, _ in FILTERS:
        audience = Audience("t" if topic else None, rules.parse_filter(spec))
        want = expected(people, spec, topic)
        assert await walk(kit, audience, limit=3, examine=4) == want, spec
        assert await walk(kit, audience, limit=1000, examine=1000) == want, spec
        assert await kit.audiences.count(audience) == len(want), spec
    # no filter: every candidate
    everyone = Audience("t" if topic else None)
    ids = [s.id for s in (people[::2] if topic else people)]
    assert await walk(kit, everyone, limit=7, examine=7) == ids
    assert await kit.audiences.count(everyone) == len(ids)


@pytest.mark.parametrize("kit", ["sqlite", "postgres"], indirect=True)  # memory: all in Python
async def test_sql_filters_inside_the_store_when_it_can_state_the_filter(kit: Kit) -> None:
    people = await seed(kit)
    # An exact filter: the rows that do not match are never read, however sparse.
    spec = {"subscriber.data.orders": {"gte": 9}}
    step = await kit.audiences.scan(
        Audience(None, rules.parse_filter(spec)), after=None, limit=100, examine=5
    )
    assert step.ids == expected(people, spec, False) and step.done
    assert step.examined == len(step.ids)


async def test_a_step_stops_at_the_limit_and_the_next_goes_on_after_it(kit: Kit) -> None:
    people = await seed(kit)
    spec = {"subscriber.data.tags": {"contains": "b"}}  # evaluated in Python everywhere
    want = expected(people, spec, False)
    audience = Audience(None, rules.parse_filter(spec))
    first = await kit.audiences.scan(audience, after=None, limit=2, examine=100)
    assert first.ids == want[:2] and first.last == want[1] and not first.done
    nothing = await kit.audiences.scan(audience, after=want[-1], limit=2, examine=100)
    assert (nothing.ids, nothing.done) == ([], True)
    short = await kit.audiences.scan(audience, after=None, limit=50, examine=3)
    assert short.examined == 3 and short.last == "s02" and not short.done
    assert short.ids == [i for i in want if i <= "s02"]


async def test_unknown_topic_raises_not_found(kit: Kit) -> None:
    await seed(kit)
    for audience in (
        Audience("nope"),
        Audience("nope", rules.parse_filter({"subscriber.locale": "de"})),
    ):
        with pytest.raises(NotFound):
            await kit.audiences.scan(audience, after=None, limit=5, examine=5)
        with pytest.raises(NotFound):
            await kit.audiences.count(audience)


async def test_segment_put_get_page_delete(kit: Kit) -> None:
    seg = Segment(
        key="de-pro",
        name="German pros",
        topic="t",
        filter={"subscriber.locale": "de", "subscriber.data.plan": {"in": ["pro", 5]}},
        created_at=10.0,
        updated_at=10.0,
    )
    stored, created = await kit.segments.put(seg)
    assert created and stored == seg
    assert await kit.segments.get("de-pro") == seg
    again = replace(seg, name="Pros", topic=None, created_at=20.0, updated_at=20.0)
    stored, created = await kit.segments.put(again)
    assert not created and stored == replace(again, created_at=10.0)
    await kit.segments.put(replace(seg, key="all-de", filter={"subscriber.locale": "de"}))
    assert [s.key for s in await kit.segments.page(after=None, limit=10)] == ["all-de", "de-pro"]
    assert [s.key for s in await kit.segments.page(after="all-de", limit=10)] == ["de-pro"]
    await kit.segments.delete("all-de")
    with pytest.raises(NotFound):
        await kit.segments.get("all-de")
    with pytest.raises(NotFound):
        await kit.segments.delete("all-de")
