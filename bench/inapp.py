"""In-app inbox write benchmark: items/s written through `InboxService.add_many`, in batches
of 500 and one at a time, on SQLite (embedded, WAL) and PostgreSQL.

The workload is what the notification orchestrator hands the inbox: one event's in-app item
to each of 500 recipients per batch, 100k items over 10k subscribers (10 items each), every
item with a delivery key (event, subscriber, step) and a small JSON payload. Each batch is
one `add_many`: the items checked, written in one transaction, then per subscriber its item
and one counts message (read with one grouped `counts_many`) published to a real in-process
gateway hub (memory broker, the production channel options: `inbox:#<id>` keeps a history
of 50 and idempotency keys). No client is connected, so the hub's fan-out to sockets is not
measured (bench/fanout covers it); the broker's history and idempotency work is.

SQLite: a temp file, migrated with the project's `upgrade`, the project's engine (WAL,
synchronous=NORMAL, BEGIN IMMEDIATE under the in-process writer lock). PostgreSQL: database
`test` on 127.0.0.1:5432, in a fresh schema (`inapp_bench`, dropped at the end), the
project's engine (asyncpg). Batches run one after another (one in flight).

    .venv/bin/python bench/inapp.py
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from sqlalchemy import event, text
from sqlalchemy.engine import Engine

from tidings.adapters import sql
from tidings.adapters.clock import SystemClock
from tidings.adapters.memory import MemoryBroker, MemoryPresenceStore
from tidings.adapters.sql.inbox import SqlInboxStore
from tidings.config import Settings
from tidings.ports.inbox import InboxItem
from tidings.services.gateway import GatewayOptions, Hub
from tidings.services.gcpolicy import GcPolicy
from tidings.services.inbox import InboxService
from tidings.wiring import channel_resolver

PG_SCHEMA = "inapp_bench"
PER_EVENT = 500  # recipients of one event
RESULTS = ROOT / "bench" / "results"


def items(total: int, subscribers: int, per_event: int) -> Iterator[InboxItem]:
    """Item n is event n // per_event's message to subscriber n % subscribers."""
    now = time.time()
    for n in range(total):
        ev = n // per_event
        yield InboxItem(
            id=uuid.uuid4().hex,
            subscriber=f"user-{n % subscribers:05d}",
            title=f"Order {ev} has shipped",
            body="Your parcel is on its way and should arrive within two working days.",
            created_at=now,
            event_id=f"evt-{ev:08d}",
            workflow="order.shipped",
            step="in_app",
            action_url=f"/orders/{ev}",
            data={"order": ev, "carrier": "DHL", "items": 3},
        )


class HubPublisher:
    """The gateway hub's server publish, as wiring gives it to the inbox; counts calls."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.calls = 0

    async def __call__(self, channel: str, data: bytes, key: str | None) -> None:
        self.calls += 1
        await self.hub.publish(channel, data, idempotency_key=key)


class CountingPublisher:
    """Only counts calls: what the inbox itself costs, without the hub."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, channel: str, data: bytes, key: str | None) -> None:
        self.calls += 1


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all cores, from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


@dataclass
class Run:
    store: str
    batch: int
    publisher: str
    in_flight: int
    items: int
    seconds: float
    latencies: list[float]
    cpu_process: float
    cpu_machine: float
    busy_before: float
    publishes: int

    def row(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [lat[0]] * 99
        return {
            "store": self.store,
            "batch": self.batch,
            "publisher": self.publisher,
            "in_flight": self.in_flight,
            "items": self.items,
            "seconds": round(self.seconds, 3),
            "items_per_s": round(self.items / self.seconds),
            "p50_ms": round(q[49] * 1000, 3),
            "p99_ms": round(q[98] * 1000, 3),
            "cpu_process_pct": round(self.cpu_process * 100, 1),
            "cpu_machine_pct": round(self.cpu_machine * 100, 1),
            "machine_busy_before_pct": round(self.busy_before * 100, 1),
            "publishes": self.publishes,
        }


def busy_over(seconds: float) -> float:
    """How busy all cores were over the next `seconds` (0..1): other load on the machine."""
    busy0, all0 = machine_busy()
    time.sleep(seconds)
    busy1, all1 = machine_busy()
    return (busy1 - busy0) / (all1 - all0) if all1 > all0 else 0.0


async def measure(
    url: str,
    store: str,
    batch: int,
    publisher: str,
    in_flight: int,
    total: int,
    subscribers: int,
) -> Run:
    clock = SystemClock()
    engine = sql.create_engine(url)
    hub = Hub(
        MemoryBroker(clock),
        MemoryPresenceStore(clock),
        channel_resolver(Settings()),
        clock,
        GatewayOptions(),
    )
    await hub.start()
    publish = HubPublisher(hub) if publisher == "hub" else CountingPublisher()
    inbox = InboxService(SqlInboxStore(engine), clock, publish)
    gc_policy = GcPolicy(Settings().gc_freeze_interval)  # as `tidings serve` runs
    try:
        # warm-up: connections open, statements prepared
        for n in range(3):
            warm = list(items(batch, batch, 1))
            await inbox.add_many([dataclasses.replace(i, subscriber=f"warm{n}") for i in warm])
        async with engine.begin() as conn:
            await conn.execute(text("DELETE FROM inbox_items"))
        publish.calls = 0
        pending = list(items(total, subscribers, PER_EVENT))
        batches = [pending[start : start + batch] for start in range(0, total, batch)]
        busy_before = await asyncio.to_thread(busy_over, 1.0)
        gc_policy.start()
        latencies: list[float] = []
        busy0, all0 = machine_busy()
        cpu0 = time.process_time()
        start = time.perf_counter()
        queue = iter(batches)

        async def caller() -> None:
            for b in queue:
                t = time.perf_counter()
                await inbox.add_many(b)
                latencies.append(time.perf_counter() - t)

        await asyncio.gather(*(caller() for _ in range(in_flight)))
        seconds = time.perf_counter() - start
        cpu = time.process_time() - cpu0
        busy1, all1 = machine_busy()
        async with engine.connect() as conn:
            stored = (await conn.execute(text("SELECT count(*) FROM inbox_items"))).scalar_one()
        if stored != total:
            raise RuntimeError(f"{stored} items stored, expected {total}")
        return Run(
            store,
            batch,
            publisher,
            in_flight,
            total,
            seconds,
            latencies,
            cpu_process=cpu / seconds,
            cpu_machine=(busy1 - busy0) / (all1 - all0) if all1 > all0 else 0.0,
            busy_before=busy_before,
            publishes=publish.calls,
        )
    finally:
        await gc_policy.stop()
        await hub.stop()
        await engine.dispose()


@contextmanager
def pg_schema(url: str) -> Iterator[None]:
    """Every PostgreSQL connection this process opens (migrations included) works in a fresh
    schema of its own, dropped at the end."""

    def use_schema(dialect: Any, _record: Any, _args: Any, params: dict[str, Any]) -> None:
        if dialect.name == "postgresql":
            params["server_settings"] = {**params.get("server_settings", {}), **setting}

    async def admin(statement: str) -> None:
        engine = sql.create_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.execute(text(statement))
        finally:
            await engine.dispose()

    setting = {"search_path": PG_SCHEMA}
    asyncio.run(admin(f"DROP SCHEMA IF EXISTS {PG_SCHEMA} CASCADE"))
    asyncio.run(admin(f"CREATE SCHEMA {PG_SCHEMA}"))
    event.listen(Engine, "do_connect", use_schema)
    try:
        sql.upgrade(url)
        yield
    finally:
        event.remove(Engine, "do_connect", use_schema)
        asyncio.run(admin(f"DROP SCHEMA IF EXISTS {PG_SCHEMA} CASCADE"))


def run_store(
    store: str,
    url: str,
    plan: list[tuple[int, str, int, int]],
    subscribers: int,
    out: Callable[[Run], None],
) -> None:
    for batch, publisher, in_flight, total in plan:
        args = (store, batch, publisher, in_flight, total, subscribers)
        if store == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                db = f"sqlite+aiosqlite:///{tmp}/inapp.db"
                sql.upgrade(db)
                out(asyncio.run(measure(db, *args)))
        else:
            out(asyncio.run(measure(url, *args)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--subscribers", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--single-items", type=int, default=5_000, help="items written one at a time")
    ap.add_argument("--stores", default="sqlite,postgres")
    ap.add_argument("--pg", default="postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    ap.add_argument("--cores", default="0,1", help="CPU affinity of this process")
    ap.add_argument("--out", type=Path, default=RESULTS / "inapp.md")
    ap.add_argument("--jsonl", type=Path, default=RESULTS / "inapp.jsonl")
    ap.add_argument("--tag", default="")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each configuration")
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
        loop_name = "uvloop"
    except ImportError:
        loop_name = "asyncio"
    cores = {int(c) for c in args.cores.split(",")} & set(range(os.cpu_count() or 1))
    if hasattr(os, "sched_setaffinity") and cores:
        os.sched_setaffinity(0, cores)
    rev = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    plan = [
        (args.batch, "hub", 1, args.items),
        (args.batch, "hub", 2, args.items),
        (args.batch, "count", 1, args.items),
        (1, "hub", 1, args.single_items),
    ] * args.repeat
    runs: list[Run] = []
    meta = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "rev": rev,
        "tag": args.tag,
        "python": platform.python_version(),
        "loop": loop_name,
        "affinity": sorted(os.sched_getaffinity(0)),
        "subscribers": args.subscribers,
        "publishers": {
            "hub": "in-process gateway Hub (MemoryBroker), no clients connected",
            "count": "counts calls only",
        },
    }
    args.jsonl.parent.mkdir(parents=True, exist_ok=True)

    def record(run: Run) -> None:
        runs.append(run)
        row = {**meta, **run.row()}
        print(json.dumps(row), file=sys.stderr)
        with args.jsonl.open("a") as f:
            f.write(json.dumps(row) + "\n")

    for store in args.stores.split(","):
        if store == "postgres":
            with pg_schema(args.pg):
                run_store(store, args.pg, plan, args.subscribers, record)
        else:
            run_store(store, args.pg, plan, args.subscribers, record)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = [
        "| store | batch size | in flight | publisher | items | items/s | p50 batch ms "
        "| p99 batch ms | CPU% process | CPU% machine | machine busy before | publishes |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        r = run.row()
        lines.append(
            f"| {r['store']} | {r['batch']} | {r['in_flight']} | {r['publisher']} | "
            f"{r['items']:,} | {r['items_per_s']:,} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['cpu_process_pct']:.0f} | {r['cpu_machine_pct']:.0f} | "
            f"{r['machine_busy_before_pct']:.0f} | {r['publishes']:,} |"
        )
    table = "\n".join(lines)
    print(table)
    args.out.write_text(
        "# In-app inbox writes\n\n"
        "Command: `.venv/bin/python bench/inapp.py`\n\n"
        f"Machine: {os.cpu_count()}-core VM, {platform.machine()}, Python "
        f"{platform.python_version()}, {loop_name}; this process pinned to cores "
        f"{','.join(map(str, meta['affinity']))} (the PostgreSQL server shares them); "
        f"revision {rev} plus the working tree; measured {meta['date']}; peak RSS "
        f"{rss_mb:.0f} MB.\n\n"
        f"Workload: {args.items:,} items in batches of {args.batch} and {args.single_items:,} "
        f"items one at a time, over {args.subscribers:,} subscribers (one event's item to "
        f"each of {PER_EVENT} recipients per batch), through `InboxService.add_many`, with "
        "one call in flight (or two: as concurrent orchestrator batch jobs do): checks, one "
        "transaction, one grouped counts read, then per subscriber its item and one counts "
        "message. Publisher `hub`: an in-process gateway "
        "`Hub` (MemoryBroker, the production options of `inbox:#...`: history 50, "
        "idempotency keys; no client connected, so no socket writes). Publisher `count`: "
        "counts the calls only (the inbox's own cost). The garbage-collector policy of "
        "`tidings serve` (`GcPolicy`, freeze after start-up) is on. Latency: one `add_many` "
        "call. CPU% process: this process's CPU time over wall time (100 = one core); CPU% "
        "machine: all cores busy during the run (100 = both), PostgreSQL included; machine "
        "busy before: the same over the second before the run (other load on the machine)."
        "\n\n"
        f"{table}\n"
    )


if __name__ == "__main__":
    main()
