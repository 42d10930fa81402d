"""The memory broker keeps history as plain tuples, which the garbage collector stops
tracking: after a bulk send, hundreds of thousands of kept publications must not lengthen
every full collection."""

from __future__ import annotations

import gc

from tidings.adapters.clock import ManualClock
from tidings.adapters.memory import MemoryBroker
from tidings.types import ClientInfo


async def test_history_entries_drop_out_of_the_collectors_tracking() -> None:
    broker = MemoryBroker(ManualClock(1000.0))
    for n in range(50):
        await broker.publish(
            f"inbox:#s{n}",
            b'{"type":"item"}',
            history_size=50,
            history_ttl=600,
            tags={"kind": "item"},
            idempotency_key=f"item:{n}",
        )
    for _ in range(3):  # a tuple inside a tuple drops out one collection before its holder
        gc.collect()
    tracked = [
        obj
        for stream in broker._streams.values()
        for entry in stream.items
        for obj in (entry, entry[4])
        if gc.is_tracked(obj)
    ]
    assert tracked == []
    assert all(not gc.is_tracked(s.seen_keys) for s in broker._streams.values())


async def test_history_and_replays_give_back_whole_publications() -> None:
    broker = MemoryBroker(ManualClock(1000.0))
    info = ClientInfo(user="u1", client="c1")
    first = await broker.publish(
        "chat:1",
        b"{}",
        history_size=10,
        history_ttl=60,
        info=info,
        tags={"a": "b"},
        key="k",
        idempotency_key="once",
    )
    again = await broker.publish(
        "chat:1", b"{}", history_size=10, history_ttl=60, info=info, idempotency_key="once"
    )
    assert again == first and first.offset == 1 and first.info == info
    history = await broker.history("chat:1", limit=-1)
    assert history.publications == (first,)
    assert (first.channel, first.tags, first.key, first.time) == ("chat:1", {"a": "b"}, "k", 1000.0)
