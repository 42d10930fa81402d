"""PreferenceService on the memory stores: the subscriber must exist, PUT replaces, PATCH
merges, and suppressed addresses are normalised so lookups agree."""

from __future__ import annotations

import pytest

from tidings.adapters.clock import ManualClock
from tidings.adapters.memory.preferences import MemoryPreferenceStore, MemorySuppressionStore
from tidings.adapters.memory.subscribers import MemorySubscriberStore
from tidings.core.notify.decisions import Preferences, WorkflowPreference
from tidings.core.notify.schedule import QuietHours
from tidings.core.notify.types import Channel
from tidings.errors import InvalidInput, NotFound
from tidings.ports.preferences import Suppression
from tidings.ports.subscribers import Subscriber
from tidings.services.preferences import PreferenceService, normalize_address


class Kit:
    def __init__(self) -> None:
        self.clock = ManualClock(1000.0)
        self.prefs = MemoryPreferenceStore()
        self.suppressions = MemorySuppressionStore()
        self.subscribers = MemorySubscriberStore()
        self.svc = PreferenceService(self.prefs, self.suppressions, self.subscribers, self.clock)


@pytest.fixture
async def kit() -> Kit:
    k = Kit()
    await k.subscribers.put(Subscriber(id="ana"))
    return k


async def test_unknown_subscribers_are_not_found(kit: Kit) -> None:
    for call in (
        kit.svc.get("bob"),
        kit.svc.put("bob", {"enabled": False}),
        kit.svc.patch("bob", {"enabled": False}),
    ):
        with pytest.raises(NotFound):
            await call
    assert await kit.prefs.get_many(["bob"]) == {}


async def test_get_put_patch(kit: Kit) -> None:
    assert await kit.svc.get("ana") == Preferences()
    stored = await kit.svc.put(
        "ana",
        {
            "channels": {"sms": False},
            "workflows": {"comment.created": {"channels": {"email": False}}},
            "quiet_hours": [{"start": "22:00", "end": "07:00"}],
        },
    )
    assert await kit.svc.get("ana") == stored
    patched = await kit.svc.patch(
        "ana", {"workflows": {"comment.created": {"channels": {"push": False}}}}
    )
    assert patched == Preferences(
        channels={Channel.SMS: False},
        workflows={
            "comment.created": WorkflowPreference(None, {Channel.EMAIL: False, Channel.PUSH: False})
        },
        quiet_hours=(QuietHours(22 * 60, 7 * 60),),
    )
    assert await kit.svc.get("ana") == patched
    # PUT replaces: what is left out goes back to its default
    assert await kit.svc.put("ana", {"commercial_consent": True}) == Preferences(
        commercial_consent=True
    )


async def test_patch_of_nothing_stored_starts_from_the_defaults(kit: Kit) -> None:
    assert await kit.svc.patch("ana", {"enabled": False}) == Preferences(enabled=False)


async def test_invalid_documents_change_nothing(kit: Kit) -> None:
    await kit.svc.put("ana", {"channels": {"sms": False}})
    with pytest.raises(InvalidInput) as caught:
        await kit.svc.put("ana", {"workflows": {"comment.created": {"channels": {"sms": 1}}}})
    assert caught.value.field == "workflows.comment.created.channels.sms"
    with pytest.raises(InvalidInput) as caught:
        await kit.svc.patch("ana", {"quiet_hours": [{"start": "22:00", "end": "7am"}]})
    assert caught.value.field == "quiet_hours.0.end"
    assert await kit.svc.get("ana") == Preferences(channels={Channel.SMS: False})


async def test_invalid_document_for_an_unknown_subscriber_is_invalid_first(kit: Kit) -> None:
    with pytest.raises(InvalidInput):
        await kit.svc.put("bob", {"nope": True})


# --- suppressions --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channel", "address", "stored"),
    [
        ("email", "  Ana.Lima@Example.ORG ", "ana.lima@example.org"),
        ("sms", "+351 912 345 678", "+351912345678"),
        ("push", "AbCdEf0123456789", "AbCdEf0123456789"),
        ("webpush", "https://push.example/Sub/ABC", "https://push.example/Sub/ABC"),
    ],
)
def test_addresses_are_normalised(channel: str, address: str, stored: str) -> None:
    assert normalize_address(channel, address) == (channel, stored)


@pytest.mark.parametrize(
    ("channel", "address", "field"),
    [
        ("in_app", "ana", "channel"),
        ("webhook", "https://x.org", "channel"),
        ("fax", "123", "channel"),
        ("email", "", "address"),
        ("email", "   ", "address"),
        ("email", "not-an-email", "address"),
        ("email", "a b@x.org", "address"),
        ("sms", "912345678", "address"),
        ("push", "short", "address"),
        ("webpush", "http://push.example/x", "address"),
        ("webpush", "https://x.org/" + "y" * 1024, "address"),
    ],
)
def test_bad_addresses_name_the_field(channel: str, address: str, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        normalize_address(channel, address)
    assert caught.value.field == field


async def test_suppress_normalises_is_idempotent_and_unsuppress(kit: Kit) -> None:
    svc = kit.svc
    assert await svc.suppress("email", "Ana@X.org", "hard_bounce", "550 5.1.1") == (
        "ana@x.org",
        True,
    )
    kit.clock.advance(5)
    assert await svc.suppress("email", "ANA@x.ORG", "complaint") == ("ana@x.org", False)
    # the orchestrator looks up lowercased addresses; the first reason is kept
    assert await kit.suppressions.check_many("email", ["ana@x.org"]) == {"ana@x.org": "hard_bounce"}
    page = await svc.list_suppressions()
    assert page.items == [Suppression("email", "ana@x.org", "hard_bounce", "550 5.1.1", 1000.0)]
    assert page.next_after is None
    assert await svc.unsuppress("email", "Ana@x.org") == "ana@x.org"
    with pytest.raises(NotFound):
        await svc.unsuppress("email", "ana@x.org")


async def test_suppress_refuses_bad_reasons_and_details(kit: Kit) -> None:
    with pytest.raises(InvalidInput) as caught:
        await kit.svc.suppress("email", "a@x.org", "bounced")
    assert caught.value.field == "reason"
    with pytest.raises(InvalidInput) as caught:
        await kit.svc.suppress("email", "a@x.org", "manual", "x" * 1001)
    assert caught.value.field == "detail"
    assert (await kit.svc.list_suppressions()).items == []


async def test_list_pages_with_next_after(kit: Kit) -> None:
    for i in range(5):
        await kit.svc.suppress("email", f"u{i}@x.org", "manual")
        await kit.svc.suppress("sms", f"+1415555012{i}", "unsubscribed")
    seen: list[tuple[str, str]] = []
    after: str | None = None
    while True:
        page = await kit.svc.list_suppressions(after=after, limit=3)
        seen.extend((s.channel, s.address) for s in page.items)
        if page.next_after is None:
            break
        after = page.next_after
    assert len(seen) == 10 and seen == sorted(seen)
    only_sms = await kit.svc.list_suppressions(channel="sms", limit=5)
    assert [s.channel for s in only_sms.items] == ["sms"] * 5
    assert only_sms.next_after is None  # exactly a full page, and nothing after it


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"after": "no-colon"}, "after"),
        ({"channel": "in_app"}, "channel"),
    ],
)
async def test_list_refusals(kit: Kit, kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        await kit.svc.list_suppressions(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field
