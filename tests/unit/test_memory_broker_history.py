"""The memory broker keeps its streams as plain tuples, which the garbage collector stops
tracking: after a bulk send, hundreds of thousands of inbox channels must not lengthen every
full collection. Their memory is bounded: right-sized data, and expired streams dropped."""

from __future__ import annotations

import gc
import tracemalloc

import orjson

from tidings.adapters.clock import ManualClock
from tidings.adapters.memory import MemoryBroker
from tidings.adapters.memory.broker import SWEEP_BATCH
from tidings.ports.broker import META_TTL


async def test_kept_streams_drop_out_of_the_collectors_tracking() -> None:
    """One collection of the young objects, the kind that runs every few hundred allocations,
    stops tracking a stream: the process freezes what survives a second (`GcPolicy`), and a
    stream still tracked then would be walked by every full collection for good."""
    broker = MemoryBroker(ManualClock(1000.0))
    gc.collect()
    for n in range(50):
        for data in (b'{"type":"item"}', b'{"type":"counts"}'):
            await broker.publish(
                f"inbox:#s{n}",
                data,
                history_size=50,
                history_ttl=600,
                idempotency_key=f"item:{n}" if data.endswith(b'"item"}') else None,
            )
    gc.collect(0)
    kept = [
        *broker._streams.values(),
        *broker._seen.values(),
        *broker._expiry,
        *broker._seen_expiry,
    ]
    assert len(kept) == 50 + 50 + 50 + 50
    assert [obj for obj in kept if gc.is_tracked(obj)] == []


async def test_a_stream_with_tags_drops_out_at_the_next_older_collection() -> None:
    broker = MemoryBroker(ManualClock(1000.0))
    gc.collect()
    for n in range(20):
        await broker.publish(f"feed:{n}", b"{}", history_size=5, tags={"kind": "item", "n": str(n)})
    gc.collect(0)
    gc.collect(1)  # the tags' tuple went at the first, the stream holding it at this one
    assert [s for s in broker._streams.values() if gc.is_tracked(s)] == []
    history = await broker.history("feed:7", limit=-1)
    assert [p.tags for p in history.publications] == [{"kind": "item", "n": "7"}]


async def test_history_keeps_a_right_sized_copy_of_the_data() -> None:
    """orjson returns its output in a 4 KiB buffer: kept as it is, each small publication
    would cost 4 KiB of memory for as long as the history keeps it."""
    broker = MemoryBroker(ManualClock(1000.0))
    payloads = [orjson.dumps({"type": "item", "n": n, "body": "x" * 200}) for n in range(300)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n, data in enumerate(payloads):
            await broker.publish(f"inbox:#s{n}", data, history_size=10, history_ttl=600)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown / len(payloads) < 1024  # about 230 bytes of data and the tuples around it
    history = await broker.history("inbox:#s7", limit=-1)
    assert [p.data for p in history.publications] == [payloads[7]]


async def test_expired_streams_and_keys_go_without_being_asked_for() -> None:
    clock = ManualClock(1000.0)
    broker = MemoryBroker(clock)
    for n in range(3 * SWEEP_BATCH):
        await broker.publish(
            f"inbox:#s{n}", b"{}", history_size=5, history_ttl=600, idempotency_key=f"k{n}"
        )
    await broker.publish("chat:kept", b"{}", history_size=5)  # no TTL: kept for good
    clock.advance(300)
    await broker.publish("inbox:#s0", b"{}", history_size=5, history_ttl=600)  # restarts
    clock.advance(301)
    for _ in range(3):  # each call sweeps a batch: a mass expiry never stops the loop
        await broker.publish("chat:other", b"{}", history_size=5)
    assert set(broker._streams) == {"inbox:#s0", "chat:kept", "chat:other"}
    assert broker._seen == {}  # remembered max(600, 60) s
    clock.advance(300)
    await broker.history("chat:kept")
    assert set(broker._streams) == {"chat:kept", "chat:other"}


async def test_an_idempotency_key_is_remembered_for_its_stream_only() -> None:
    clock = ManualClock(1000.0)
    broker = MemoryBroker(clock)
    first = await broker.publish(
        "chat:1", b"1", history_size=1, history_ttl=10, idempotency_key="op"
    )
    await broker.publish("chat:1", b"2", history_size=1, history_ttl=10)  # pushes it out
    again = await broker.publish(
        "chat:1", b"3", history_size=1, history_ttl=10, idempotency_key="op"
    )
    assert again == first  # remembered beyond the history (60 s)
    clock.advance(11)  # the stream expires: a new epoch forgets the key
    fresh = await broker.publish(
        "chat:1", b"4", history_size=1, history_ttl=10, idempotency_key="op"
    )
    assert (fresh.offset, fresh.data) == (1, b"4") and fresh.epoch != first.epoch
    await broker.remove_history("chat:1")
    after = await broker.publish(
        "chat:1", b"5", history_size=1, history_ttl=10, idempotency_key="op"
    )
    assert (after.offset, after.data) == (1, b"5") and after.epoch != fresh.epoch


async def test_a_position_started_by_a_read_is_kept_for_the_meta_ttl_only() -> None:
    """Reading the history of a channel nobody published to starts its stream (the reader
    may recover from that position later); a stream only ever read must not stay for good."""
    clock = ManualClock(1000.0)
    broker = MemoryBroker(clock)
    read = await broker.history("chat:quiet")
    assert read.position.offset == 0 and read.position.epoch
    clock.advance(META_TTL - 1)
    pub = await broker.publish("chat:quiet", b"1", history_size=5, history_ttl=60)
    assert (pub.epoch, pub.offset) == (read.position.epoch, 1)  # the reader's epoch goes on

    for n in range(10):
        await broker.history(f"chat:read-only-{n}")
    clock.advance(META_TTL + 1)
    await broker.publish("chat:other", b"x", history_size=5)  # sweeps what expired
    assert set(broker._streams) == {"chat:other"}
