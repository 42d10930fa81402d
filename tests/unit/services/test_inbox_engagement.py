"""The inbox service hands its engagement marks to `on_engaged`: once per mark, only items
of notifications (with an event) that changed, only seen/read/archived; `mark_reported`
marks without handing anything back; a failing hand-off never fails the mark."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from tidings.adapters.clock import ManualClock
from tidings.adapters.memory.inbox import MemoryInboxStore
from tidings.ports.inbox import Mark, Marked
from tidings.services.inbox import InboxService


class Sink:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, list[Marked]]] = []
        self.fail = fail

    async def __call__(self, subscriber: str, items: Sequence[Marked]) -> None:
        self.calls.append((subscriber, list(items)))
        if self.fail:
            raise ConnectionError("database gone")


class Live:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def __call__(self, channel: str, data: bytes, key: str | None) -> None:
        self.sent.append(orjson.loads(data))


async def setup(sink: Sink, live: Live | None = None) -> tuple[InboxService, list[str]]:
    inbox = InboxService(MemoryInboxStore(), ManualClock(100.0), live, on_engaged=sink)
    ids = []
    for n in range(3):
        event = {"event_id": f"e{n}"} if n < 2 else {}  # the third was added by hand
        item, _ = await inbox.add("ana", title=f"t{n}", **event)
        ids.append(item.id)
    return inbox, ids


async def test_each_mark_hands_its_changed_notification_items_once() -> None:
    sink = Sink()
    inbox, ids = await setup(sink)
    await inbox.mark_one("ana", ids[0], Mark.SEEN)
    assert sink.calls == [("ana", [Marked(ids[0], "e0", 100.0, None, None)])]
    await inbox.mark_one("ana", ids[0], Mark.SEEN)  # changes nothing: hands nothing
    await inbox.mark_one("ana", ids[2], Mark.READ)  # no event: no message to tell
    assert len(sink.calls) == 1
    assert await inbox.mark("ana", Mark.READ) == 2  # all the unread, in one hand-off
    assert [sorted(m.id for m in items) for _, items in sink.calls[1:]] == [sorted(ids[:2])]
    # undoing a state is no engagement
    assert await inbox.mark("ana", Mark.UNREAD, ids=ids) == 3
    assert len(sink.calls) == 2


async def test_a_reported_mark_is_not_handed_back_and_goes_out_live() -> None:
    sink, live = Sink(), Live()
    inbox, ids = await setup(sink, live)
    live.sent.clear()
    marked = await inbox.mark_reported("ana", ids[1], Mark.READ, 50.0)
    assert marked == Marked(ids[1], "e1", 50.0, 50.0, None)
    assert sink.calls == []
    assert [m["type"] for m in live.sent] == ["item", "counts"]
    assert live.sent[1] == {"type": "counts", "unread": 2, "unseen": 2}
    assert await inbox.mark_reported("ana", ids[1], Mark.READ, 60.0) is None  # no change
    assert await inbox.mark_reported("bob", ids[0], Mark.SEEN, 60.0) is None  # not his
    assert await inbox.mark_reported("ana", "nope", Mark.SEEN, 60.0) is None
    assert len(live.sent) == 2


async def test_a_failing_hand_off_never_fails_the_mark() -> None:
    inbox, ids = await setup(Sink(fail=True))
    assert (await inbox.mark_one("ana", ids[0], Mark.READ)).read_at == 100.0
    assert await inbox.mark("ana", Mark.ARCHIVED) == 3
    assert (await inbox.counts("ana")).unread == 0
