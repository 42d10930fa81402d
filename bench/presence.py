"""Presence benchmark: the cost of user presence at 10k users, and of a join/leave in a large
channel.

Scenario (as the issue states it): 10k connected users, one device each, in 1k channels
(10 users per channel), heartbeats every 20 s. The real `OnlineService` runs against a
simulated clock: each simulated second, 1/20 of the users report a heartbeat (500 reports/s),
and the sweep runs every 2 s, as in `tidings serve`. What is measured is real CPU time
(`time.process_time`) of that work, so

    CPU share of one core = CPU seconds spent / simulated seconds.

Churn: besides the heartbeats, `--churn` users a second (20 by default) each flip their tab to
the background and back five times within that second (ten status changes each), so the
coalescing of status pushes is measured too: the pushes sent against the changes reported.

Store writes (device reports) and last-seen writes (database) are counted. Two setups: the
embedded one (memory device store, SQLite records) and the scale-out one (Redis device store,
PostgreSQL records; Redis and PostgreSQL on this machine).

Join/leave: a hub with 2,000 local subscribers in a `join_leave` namespace; the time for one
join push to reach all of them (encoded once, written to each subscriber's transport).

    .venv/bin/python bench/presence.py --out bench/results/presence.md
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tidings.adapters import sql
from tidings.adapters.clock import ManualClock
from tidings.adapters.memory import MemoryBroker, MemoryPresenceStore
from tidings.adapters.memory.online import MemoryDeviceStore
from tidings.adapters.redis.online import RedisDeviceStore
from tidings.adapters.sql.online import SqlPresenceRecords
from tidings.core.channels import ChannelResolver
from tidings.core.online import Device, PresenceConfig
from tidings.services.gateway import (
    ClientConnection,
    EncodedBatch,
    EncodedPush,
    GatewayOptions,
    Hub,
)
from tidings.services.online import OnlineService
from tidings.types import ClientInfo

USERS = 10_000
CHANNELS = 1_000
HEARTBEAT = 20.0
SWEEP = 2.0


class CountingRecords:
    """Counts the last-seen writes that reach the database adapter."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.writes = 0

    async def save_last_seen(self, user: str, at: float) -> None:
        self.writes += 1
        await self.inner.save_last_seen(user, at)

    async def save_last_seen_many(self, seen: dict[str, float]) -> None:
        self.writes += len(seen)
        await self.inner.save_last_seen_many(seen)

    async def last_seen(self, user: str) -> float | None:
        return await self.inner.last_seen(user)

    async def privacy(self, user: str) -> Any:
        return await self.inner.privacy(user)

    async def hidden_users(self) -> set[str]:
        return set(await self.inner.hidden_users())

    async def set_privacy(self, user: str, privacy: Any) -> None:
        await self.inner.set_privacy(user, privacy)

    async def contacts(self, user: str) -> list[str]:
        return list(await self.inner.contacts(user))

    async def set_contacts(self, user: str, contacts: list[str]) -> None:
        await self.inner.set_contacts(user, contacts)


@dataclass
class Result:
    setup: str
    connect_cpu_s: float
    simulated_s: float
    steady_cpu_s: float
    reports: int
    store_writes_per_s: float
    last_seen_writes: int
    last_seen_per_s: float
    last_seen_bound_per_s: float
    publications: int
    changes: int

    @property
    def share(self) -> float:
        return self.steady_cpu_s / self.simulated_s


async def run_presence(setup: str, seconds: int, churn: int, redis_url: str, pg_url: str) -> Result:
    clock = ManualClock()
    published = 0

    async def publish(_channel: str, _data: bytes, _tags: dict[str, str]) -> None:
        nonlocal published
        published += 1

    tmp = tempfile.mkdtemp(prefix="tidings-presence-bench-")
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    if setup == "embedded":
        url = f"sqlite+aiosqlite:///{tmp}/bench.db"
        devices: Any = MemoryDeviceStore(clock)
    else:
        url = pg_url
        devices = RedisDeviceStore(redis_url, clock, prefix=prefix)
    await asyncio.to_thread(sql.upgrade, url)
    engine = sql.create_engine(url)
    records = CountingRecords(SqlPresenceRecords(engine))
    cfg = PresenceConfig()
    svc = OnlineService(devices, records, clock, cfg, publish=publish)
    users = [f"user-{i}" for i in range(USERS)]
    channel_of = {u: (f"chat:{i % CHANNELS}",) for i, u in enumerate(users)}

    def device(user: str, foreground: bool = True) -> Device:
        now = clock.now()
        return Device(
            "d-" + user, now, now, foreground=foreground, kind="web", channels=channel_of[user]
        )

    t0 = time.process_time()
    for user in users:  # everybody connects
        await svc.report(user, device(user))
    connect_cpu = time.process_time() - t0

    # steady state: a 20 s heartbeat per user, spread over the seconds; sweep every 2 s
    clock.advance(1)
    pushes_at_connect = published
    before = svc.counters()
    writes_before = records.writes
    per_second = USERS / HEARTBEAT
    changes = 0
    t0 = time.process_time()
    for second in range(seconds):
        start = int((second % HEARTBEAT) * per_second)
        for user in users[start : start + int(per_second)]:
            await svc.report(user, device(user))
        for k in range(churn):
            user = users[(second * churn + k * 97) % USERS]
            for _ in range(5):  # background, foreground, ... within the second
                await svc.report(user, device(user, foreground=False))
                await svc.report(user, device(user))
                changes += 2
        if second % SWEEP == 0:
            await svc.sweep()
        clock.advance(1)
    steady_cpu = time.process_time() - t0
    after = svc.counters()
    last_seen = records.writes - writes_before
    await engine.dispose()
    await devices.close()
    if setup != "embedded":
        from redis.asyncio import Redis

        r = Redis.from_url(redis_url)
        keys = [k async for k in r.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await r.delete(*keys)
        await r.aclose()
        # leave the shared PostgreSQL database as the tests expect it
        engine = sql.create_engine(pg_url)
        async with engine.begin() as conn:
            from sqlalchemy import text

            await conn.execute(text("DELETE FROM user_presence WHERE user_id LIKE 'user-%'"))
        await engine.dispose()
    return Result(
        setup=setup,
        connect_cpu_s=connect_cpu,
        simulated_s=seconds,
        steady_cpu_s=steady_cpu,
        reports=after.reports - before.reports,
        store_writes_per_s=(after.store_writes - before.store_writes) / seconds,
        last_seen_writes=last_seen,
        last_seen_per_s=last_seen / seconds,
        last_seen_bound_per_s=USERS / cfg.last_seen_interval,
        publications=published - pushes_at_connect,
        changes=changes,
    )


class NullTransport:
    paused = False

    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data: bytes) -> None:
        self.bytes += len(data)

    def write_push(self, push: EncodedPush) -> None:
        self.bytes += len(push.ws_frame)

    def write_batch(self, batch: EncodedBatch) -> None:
        self.bytes += len(batch.ws_frame)

    def close(self, close: Any) -> None:
        pass


async def run_join_leave(members: int, rounds: int) -> tuple[float, float, int]:
    clock = ManualClock()
    channels = {"namespaces": {"room": {"join_leave": True, "force_push_join_leave": True}}}
    hub = Hub(
        MemoryBroker(clock),
        MemoryPresenceStore(clock),
        ChannelResolver.from_config(channels),
        clock,
        GatewayOptions(allow_anonymous=True),
    )
    await hub.start()
    transports = []
    for _ in range(members):
        t = NullTransport()
        client = ClientConnection(hub, t)
        client.receive(b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"room:big"}}')
        transports.append(t)
    for _ in range(200):
        await asyncio.sleep(0)
    assert hub.local_subscribers("room:big") == members, hub.local_subscribers("room:big")
    info = ClientInfo(user="newcomer", client="c-new")
    timings = []
    for i in range(rounds):
        before = sum(t.bytes for t in transports)
        t0 = time.perf_counter()
        hub.on_join_leave("room:big", info, i % 2 == 0)
        timings.append(time.perf_counter() - t0)
        assert sum(t.bytes for t in transports) > before
    await hub.stop()
    return statistics.median(timings) * 1e3, max(timings) * 1e3, members


def render(results: list[Result], jl: tuple[float, float, int], seconds: int, churn: int) -> str:
    lines = [
        "# Presence benchmark",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on this project's "
        f"{os.cpu_count()}-core VM ({platform.processor() or platform.machine()}), "
        "one process, one core used.",
        "",
        "Command: `.venv/bin/python bench/presence.py --out bench/results/presence.md`",
        "",
        f"Scenario: {USERS:,} users with one device each in {CHANNELS:,} channels, heartbeats "
        f"every {HEARTBEAT:.0f} s ({USERS / HEARTBEAT:.0f} reports/s), the sweep every "
        f"{SWEEP:.0f} s, {seconds} simulated seconds of steady state after everyone connected; "
        f"meanwhile {churn} users a second each flip their tab to the background and back five "
        "times within that second (status pushes are coalesced to one per user per "
        f"{PresenceConfig().update_interval:.0f} s, the newest state winning). "
        "The real `OnlineService` runs on a simulated clock; the CPU time is real "
        "(`time.process_time`), so the CPU share is CPU seconds per simulated second. The "
        "gateway's own ping/pong is not counted: it runs with or without user presence; nor is "
        "the CPU of the Redis and PostgreSQL servers (other processes), only this process's "
        "work including the Redis client.",
        "",
        "| setup | connect of 10k users, CPU s | steady CPU share of one core | device-store "
        "writes/s | last-seen writes/s (bound: users / interval) | status changes reported "
        "| presence pushes sent |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.setup} | {r.connect_cpu_s:.2f} | **{r.share * 100:.1f} %** "
            f"({r.steady_cpu_s:.2f} s / {r.simulated_s:.0f} s) | {r.store_writes_per_s:.0f} | "
            f"{r.last_seen_per_s:.1f} ({r.last_seen_bound_per_s:.1f}) | {r.changes:,} | "
            f"{r.publications:,} |"
        )
    median_ms, max_ms, members = jl
    lines += [
        "",
        f"Join/leave in a {members:,}-member channel (one hub, {members:,} local subscribers, "
        "`force_push_join_leave`): the push is encoded once and its frame written to every "
        f"subscriber's transport. Median **{median_ms:.2f} ms** per join or leave "
        f"({median_ms * 1e3 / members:.2f} µs per member), slowest {max_ms:.2f} ms.",
        "",
        "Goals: last-seen writes <= users / interval; presence work < 10 % of a core at 10k users.",
        "",
    ]
    for r in results:
        ok_share = r.share < 0.10
        ok_seen = r.last_seen_per_s <= r.last_seen_bound_per_s
        lines.append(
            f"- {r.setup}: CPU share {r.share * 100:.1f} % ({'met' if ok_share else 'not met'}); "
            f"last-seen writes {r.last_seen_per_s:.1f}/s against a bound of "
            f"{r.last_seen_bound_per_s:.1f}/s ({'met' if ok_seen else 'not met'})."
        )
    return "\n".join(lines) + "\n"


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=120)
    ap.add_argument("--churn", type=int, default=20, help="users a second changing state")
    ap.add_argument("--out", default=None)
    ap.add_argument("--setups", default="embedded,scale-out")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--pg-url", default="postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    a = ap.parse_args()
    results = []
    for setup in a.setups.split(","):
        r = await run_presence(setup, a.seconds, a.churn, a.redis_url, a.pg_url)
        print(r, f"share={r.share:.3%}", flush=True)
        results.append(r)
    jl = await run_join_leave(2000, 200)
    print("join/leave", jl, flush=True)
    text = render(results, jl, a.seconds, a.churn)
    if a.out:
        Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    asyncio.run(main())
