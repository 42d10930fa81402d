"""Contract of PreferenceStore and SuppressionStore, on memory, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.contract.conftest import STORE_BACKENDS, sql_url
from tidings.adapters import sql
from tidings.adapters.memory.preferences import MemoryPreferenceStore, MemorySuppressionStore
from tidings.adapters.sql.preferences import SqlPreferenceStore, SqlSuppressionStore
from tidings.core.notify.decisions import Preferences, WorkflowPreference
from tidings.core.notify.schedule import QuietHours
from tidings.core.notify.types import Channel
from tidings.ports.preferences import Suppression


@dataclass
class Kit:
    prefs: Any
    suppressions: Any
    engine: AsyncEngine | None = None

    @contextlib.contextmanager
    def statements(self) -> Iterator[list[str]]:
        """The SQL statements run inside the block (none on memory)."""
        seen: list[str] = []
        if self.engine is None:
            yield seen
            return

        def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            seen.append(statement)

        target = self.engine.sync_engine
        event.listen(target, "before_cursor_execute", record)
        try:
            yield seen
        finally:
            event.remove(target, "before_cursor_execute", record)

    @staticmethod
    def selects(statements: list[str]) -> int:
        return sum(1 for q in statements if q.lstrip().upper().startswith("SELECT"))


@pytest.fixture(params=STORE_BACKENDS)
async def kit(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Kit]:
    if request.param == "memory":
        yield Kit(MemoryPreferenceStore(), MemorySuppressionStore())
        return
    engine = sql.create_engine(await sql_url(request, request.param, tmp_path))
    try:
        yield Kit(SqlPreferenceStore(engine), SqlSuppressionStore(engine), engine)
    finally:
        await engine.dispose()


FULL = Preferences(
    enabled=False,
    channels={Channel.SMS: False, Channel.EMAIL: True},
    workflows={
        "comment.created": WorkflowPreference(None, {Channel.SMS: True, Channel.PUSH: False}),
        "digest:weekly": WorkflowPreference(False),
    },
    commercial_consent=True,
    quiet_hours=(
        QuietHours(22 * 60, 7 * 60, frozenset({0, 1, 2, 3, 4})),
        QuietHours(12 * 60, 1440, channels=frozenset({Channel.EMAIL})),
    ),
)


# --- preferences ---------------------------------------------------------------------------


async def test_nothing_stored_is_the_defaults(kit: Kit) -> None:
    assert await kit.prefs.get("nobody") == Preferences()
    assert await kit.prefs.get_many(["nobody", "else"]) == {}
    assert await kit.prefs.get_many([]) == {}
    assert await kit.prefs.delete("nobody") is False


async def test_put_stores_every_field_and_get_gives_it_back(kit: Kit) -> None:
    stored = await kit.prefs.put("ana", FULL, 10.0)
    assert stored == FULL
    assert await kit.prefs.get("ana") == FULL
    assert await kit.prefs.get_many(["ana"]) == {"ana": FULL}


async def test_put_replaces_the_whole_record(kit: Kit) -> None:
    await kit.prefs.put("ana", FULL, 10.0)
    only = Preferences(channels={Channel.PUSH: False})
    assert await kit.prefs.put("ana", only, 20.0) == only
    assert await kit.prefs.get("ana") == only
    await kit.prefs.put("ana", Preferences(), 30.0)
    assert await kit.prefs.get("ana") == Preferences()
    assert await kit.prefs.get_many(["ana"]) == {"ana": Preferences()}  # stored, if default


async def test_the_store_keeps_no_reference_to_the_callers_objects(kit: Kit) -> None:
    channels = {Channel.SMS: False}
    stored = await kit.prefs.put("ana", Preferences(channels=channels), 1.0)
    channels[Channel.SMS] = True
    stored.channels[Channel.EMAIL] = False  # type: ignore[index]
    assert await kit.prefs.get("ana") == Preferences(channels={Channel.SMS: False})


async def test_get_many_with_a_thousand_ids(kit: Kit) -> None:
    stored = {
        f"user-{i:04d}": Preferences(channels={Channel.SMS: i % 2 == 0}) for i in range(0, 1000, 3)
    }
    await asyncio.gather(*(kit.prefs.put(k, v, 1.0) for k, v in stored.items()))
    ids = [f"user-{i:04d}" for i in range(1000)]
    with kit.statements() as ran:
        assert await kit.prefs.get_many(ids) == stored
    assert kit.selects(ran) == (0 if kit.engine is None else 1)
    # repeats and unknown ids, more than one batch's worth
    asked = ids + ids[:500] + [f"ghost-{i}" for i in range(200)]
    assert await kit.prefs.get_many(asked) == stored


async def test_delete_forgets(kit: Kit) -> None:
    await kit.prefs.put("ana", FULL, 1.0)
    await kit.prefs.put("bob", FULL, 1.0)
    assert await kit.prefs.delete("ana") is True
    assert await kit.prefs.delete("ana") is False
    assert await kit.prefs.get("ana") == Preferences()
    assert await kit.prefs.get_many(["ana", "bob"]) == {"bob": FULL}


async def test_concurrent_puts_leave_one_whole_record(kit: Kit) -> None:
    versions = [
        Preferences(
            channels={Channel.SMS: i % 2 == 0},
            workflows={f"wf.{i}": WorkflowPreference(True)},
        )
        for i in range(10)
    ]
    await asyncio.gather(*(kit.prefs.put("ana", v, float(i)) for i, v in enumerate(versions)))
    assert await kit.prefs.get("ana") in versions


# --- suppressions --------------------------------------------------------------------------


async def test_add_is_idempotent_and_keeps_the_first_reason(kit: Kit) -> None:
    s = kit.suppressions
    assert await s.add("email", "ana@x.org", "hard_bounce", 10.0, "550 5.1.1 no such user")
    assert not await s.add("email", "ana@x.org", "unsubscribed", 20.0, "later")
    assert await s.page(channel=None, after=None, limit=10) == [
        Suppression("email", "ana@x.org", "hard_bounce", "550 5.1.1 no such user", 10.0)
    ]
    # the same address on another channel is another entry
    assert await s.add("push", "ana@x.org", "manual", 30.0)
    assert await s.check_many("email", ["ana@x.org"]) == {"ana@x.org": "hard_bounce"}


async def test_concurrent_adds_of_one_address_add_it_once(kit: Kit) -> None:
    results = await asyncio.gather(
        *(kit.suppressions.add("sms", "+14155550123", "complaint", float(i)) for i in range(10))
    )
    assert sorted(results) == [False] * 9 + [True]
    [only] = await kit.suppressions.page(channel="sms", after=None, limit=10)
    assert only.address == "+14155550123" and only.reason == "complaint"


async def test_check_many_answers_only_the_suppressed_of_that_channel(kit: Kit) -> None:
    s = kit.suppressions
    await s.add("email", "a@x.org", "hard_bounce", 1.0)
    await s.add("email", "b@x.org", "unsubscribed", 1.0)
    await s.add("sms", "c@x.org", "manual", 1.0)  # not email: not an answer below
    await s.add("push", "tok-123456", "invalid_token", 1.0)
    found = await s.check_many("email", ["a@x.org", "zz@x.org", "b@x.org", "c@x.org", "a@x.org"])
    assert found == {"a@x.org": "hard_bounce", "b@x.org": "unsubscribed"}
    assert await s.check_many("email", []) == {}
    assert await s.check_many("email", ["A@X.ORG"]) == {}  # exact: the service normalises
    assert await s.check_many("push", ["tok-123456"]) == {"tok-123456": "invalid_token"}
    assert await s.check_many("webpush", ["tok-123456"]) == {}


async def test_check_many_with_more_than_a_thousand_addresses(kit: Kit) -> None:
    s = kit.suppressions
    bounced = [f"u{i:04d}@example.org" for i in range(0, 1500, 7)]
    await asyncio.gather(*(s.add("email", a, "hard_bounce", 1.0) for a in bounced))
    asked = [f"u{i:04d}@example.org" for i in range(1500)]
    assert await s.check_many("email", asked) == dict.fromkeys(bounced, "hard_bounce")
    with kit.statements() as ran:
        found = await s.check_many("email", asked[:1000])
    assert found == {a: "hard_bounce" for a in bounced if a in asked[:1000]}
    assert kit.selects(ran) == (0 if kit.engine is None else 1)


async def test_remove(kit: Kit) -> None:
    s = kit.suppressions
    await s.add("email", "a@x.org", "hard_bounce", 1.0)
    await s.add("sms", "+14155550123", "hard_bounce", 1.0)
    assert await s.remove("email", "a@x.org") is True
    assert await s.remove("email", "a@x.org") is False
    assert await s.remove("push", "+14155550123") is False
    assert await s.check_many("email", ["a@x.org"]) == {}
    assert await s.check_many("sms", ["+14155550123"]) == {"+14155550123": "hard_bounce"}
    assert await s.add("email", "a@x.org", "manual", 5.0, "again") is True
    assert await s.check_many("email", ["a@x.org"]) == {"a@x.org": "manual"}


async def test_data_round_trip(kit: Kit) -> None:
    endpoint = "https://push.example.org/" + "x" * 999
    assert len(endpoint) == 1024
    detail = "Bounced: 550 5.1.1 <ana@x.org>: Recipient address rejected\n" * 10
    await kit.suppressions.add("webpush", endpoint, "invalid_token", 1234567890.125, detail)
    [found] = await kit.suppressions.page(channel="webpush", after=None, limit=5)
    assert found == Suppression("webpush", endpoint, "invalid_token", detail, 1234567890.125)
    assert isinstance(found.created_at, float)


async def walk(s: Any, channel: str | None, limit: int) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    after: str | None = None
    while True:
        page = await s.page(channel=channel, after=after, limit=limit)
        assert len(page) <= limit
        seen.extend((x.channel, x.address) for x in page)
        if len(page) < limit:
            return seen
        after = page[-1].position


async def test_pages_in_channel_then_address_order(kit: Kit) -> None:
    s = kit.suppressions
    entries = [
        (channel, f"a{i:02d}@example.org")
        for channel in ("webpush", "sms", "email", "push")
        for i in (5, 1, 3, 2, 4)
    ]
    for channel, address in entries:
        await s.add(channel, address, "manual", 1.0)
    everything = sorted(entries)
    assert await walk(s, None, 3) == everything
    assert await walk(s, None, 100) == everything
    assert await walk(s, "sms", 2) == [e for e in everything if e[0] == "sms"]
    assert await s.page(channel="email", after=None, limit=1) == [
        Suppression("email", "a01@example.org", "manual", "", 1.0)
    ]
    # after a position on another channel: the channel filter still applies
    page = await s.page(channel="push", after="email:a03@example.org", limit=2)
    assert [(x.channel, x.address) for x in page] == [
        ("push", "a01@example.org"),
        ("push", "a02@example.org"),
    ]
    assert await s.page(channel="email", after="push:a01@example.org", limit=5) == []
    assert await s.page(channel="nothing-here", after=None, limit=5) == []


async def test_a_walk_sees_every_item_that_stays_exactly_once(kit: Kit) -> None:
    s = kit.suppressions
    for i in range(0, 20, 2):
        await s.add("email", f"u{i:02d}@example.org", "manual", 1.0)
    seen: list[str] = []
    after: str | None = None
    while True:
        page = await s.page(channel="email", after=after, limit=3)
        if not page:
            break
        seen.extend(x.address for x in page)
        after = page[-1].position
        # meanwhile: one added behind the walk, one ahead of it, one removed ahead
        n = len(seen)
        await s.add("email", f"u{n:02d}x@example.org", "manual", 2.0)
        await s.remove("email", f"u{min(18, n * 2 + 4):02d}@example.org")
    assert len(seen) == len(set(seen))
    stayed = [x.address for x in await s.page(channel="email", after=None, limit=1000)]
    originals = {f"u{i:02d}@example.org" for i in range(0, 20, 2)}
    assert set(stayed) & originals <= set(seen)
