"""Notification orchestrator benchmarks, embedded (SQLite) and on PostgreSQL.

1. `inapp`: one bulk event to a topic of N subscribers (default 100k) with a one-step in-app
   workflow, through the whole pipeline (dispatch -> fanout in batch jobs -> decisions -> inbox
   items + live pushes on the gateway -> trail). Measures in-app deliveries/s from the moment
   the event is accepted until the last run is done, CPU and peak RSS of the process, and
   the growth in objects the garbage collector tracks (what a full collection walks).
2. `email`: the same with a one-step email workflow: one delivery job per `--send-batch`
   messages (`notify.send_batch`, 50; "1,50" measures a job per message too, in the same
   run), over `--smtp-pool` pooled connections (4, the default of `smtp.pool_size`) to an
   aiosmtpd sink (its `Sink` handler, on uvloop) in its own process. Measures SMTP
   deliveries/s from the accept until every message is sent (bench/smtp.py measures the
   provider alone).
3. `lanes`: the priority-lane test. `tidings serve` (one process, both cores) with a real SMTP
   sink (aiosmtpd) in this process. Transactional events (one email each) are sent at a fixed
   rate; the latency is from the API's 202 to the message arriving at the SMTP sink. First
   idle, then while a bulk send to N recipients runs (in-app, or with `--lanes-bulk email`
   emails through the same SMTP provider). Goal: p99 during bulk <= 2x idle p99.

    .venv/bin/python bench/notify.py --out bench/results/notify.md
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from aiosmtpd.controller import Controller
from sqlalchemy import func, insert, select, text

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
sys.path.insert(0, str(ROOT / "src"))

from tidings.adapters.sql import create_engine
from tidings.adapters.sql.engine import reader
from tidings.adapters.sql.tables import (
    events,
    inbox_items,
    notify_messages,
    notify_runs,
    subscribers,
    topic_members,
    topics,
)
from tidings.types import Priority

WORKFLOWS = """
workflows:
  - key: bulk.news
    steps:
      - id: inapp
        type: in_app
        content:
          title: "{{ payload.headline }}"
          body: "Hello {{ subscriber.id }}, {{ payload.text }}"
  - key: bulk.mail
    steps:
      - id: email
        type: email
        content:
          subject: "{{ payload.headline }}"
          text: "Hello {{ subscriber.id }}, {{ payload.text }}"
  - key: tx.code
    steps:
      - id: email
        type: email
        content:
          subject: "code {{ payload.seq }}"
          text: "Your code is {{ payload.code }}"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pg_database(base: str, name: str) -> str:
    admin = base.replace("+asyncpg", "")
    subprocess.run(["psql", admin, "-qc", f"DROP DATABASE IF EXISTS {name}"], check=True)
    subprocess.run(["psql", admin, "-qc", f"CREATE DATABASE {name}"], check=True)
    return base.rsplit("/", 1)[0] + "/" + name


def migrate(url: str) -> None:
    env = {**os.environ, "TIDINGS_DATABASE_URL": url}
    subprocess.run([BIN / "tidings", "migrate"], env=env, check=True, capture_output=True)


def sqlite_send(tmp: str, name: str, n: int) -> tuple[str, Path]:
    """A migrated SQLite database `name` under `tmp` with `n` subscribers in topic `all`,
    and the workflows file: (its URL, the file), for a send of this module's workflows."""
    workflows = Path(tmp) / "workflows.yaml"
    workflows.write_text(WORKFLOWS)
    url = f"sqlite+aiosqlite:///{tmp}/{name}.db"
    migrate(url)
    asyncio.run(seed(url, n))
    return url, workflows


async def seed(url: str, n: int) -> None:
    """N subscribers with an email address, all in topic `all`, written in bulk."""
    engine = create_engine(url)
    now = time.time()
    async with engine.begin() as conn:
        await conn.execute(insert(topics), [{"key": "all", "name": "All", "created_at": now}])
        for start in range(0, n, 5000):
            ids = [f"s{i:07d}" for i in range(start, min(n, start + 5000))]
            await conn.execute(
                insert(subscribers),
                [
                    {
                        "id": i,
                        "email": f"{i}@example.com",
                        "phone": None,
                        "locale": "en",
                        "timezone": "UTC",
                        "data": {},
                        "created_at": now,
                        "updated_at": now,
                    }
                    for i in ids
                ],
            )
            await conn.execute(
                insert(topic_members),
                [{"topic_key": "all", "subscriber_id": i, "created_at": now} for i in ids],
            )
    await engine.dispose()


async def count(url: str, what: Any) -> int:
    """Rows of `what`. The test's reads take read-only connections (`reader`): an engine's
    plain connection begins IMMEDIATE on SQLite, and a count holding the write lock stalled
    the runtime's writers."""
    engine = create_engine(url)
    try:
        async with reader(engine).connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(what))).scalar_one())
    finally:
        await engine.dispose()


async def start_runtime(settings: Any) -> tuple[Any, Any]:
    """The runtime of `settings`, started, with the garbage-collector policy `tidings serve`
    applies to its process."""
    from tidings.services.gcpolicy import GcPolicy
    from tidings.wiring import build_runtime

    runtime = build_runtime(settings)
    await runtime.start()
    gc_policy = GcPolicy(settings.gc_freeze_interval, quiet=lambda: not runtime.gate.busy())
    gc_policy.start()
    return runtime, gc_policy


def bulk_event(type_: str) -> Any:
    """One bulk event to every subscriber (topic `all`)."""
    from tidings.services.ingest import EventInput

    return EventInput(
        type=type_,
        topic="all",
        payload={"headline": "Release 2.0", "text": "it is out"},
        priority=Priority.BULK,
    )


# -- 1. in-app throughput, in process ------------------------------------------------------


async def inapp(
    url: str, n: int, workflows: Path, bulk_concurrency: int | None = None
) -> dict[str, Any]:
    from tidings.config import NotifySettings, Settings, WorkerSettings

    settings = Settings(
        database_url=url,
        log_level="warning",
        token_secret="b" * 64,
        notify=NotifySettings(workflows=[str(workflows)], bulk_concurrency=bulk_concurrency),
        worker=WorkerSettings(poll_interval=0.05),
    )
    runtime, gc_policy = await start_runtime(settings)
    tracked0 = tracked_objects()
    engine = create_engine(url)
    try:
        cpu0 = time.process_time()
        start = time.perf_counter()
        await runtime.services.ingest.ingest(bulk_event("bulk.news"))
        done = 0
        while done < n:
            # counting done runs scans the runs table: poll rarely until the end is near
            await asyncio.sleep(poll_interval(done, n, time.perf_counter() - start))
            async with reader(engine).connect() as conn:
                done = int(
                    (
                        await conn.execute(
                            select(func.count())
                            .select_from(notify_runs)
                            .where(notify_runs.c.state == "done")
                        )
                    ).scalar_one()
                )
            if time.perf_counter() - start > 900:
                raise RuntimeError(f"only {done} of {n} runs done after 15 minutes")
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu0
        tracked = tracked_objects() - tracked0
        async with reader(engine).connect() as conn:
            items = int(
                (await conn.execute(select(func.count()).select_from(inbox_items))).scalar_one()
            )
    finally:
        await engine.dispose()
        await gc_policy.stop()
        await runtime.stop()
    return {
        "recipients": n,
        "bulk_concurrency": bulk_concurrency,
        "inbox_items": items,
        "seconds": elapsed,
        "deliveries_per_s": n / elapsed,
        "cpu_percent": 100 * cpu / elapsed,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "tracked_growth": tracked,
    }


# -- 2. email throughput, in process, to an SMTP sink in its own process -------------------


class WriterHolds:
    """Time SQLite's in-process write lock (`LaneLock`) is held, summed over the run."""

    def __init__(self) -> None:
        from tidings.adapters.sql import engine as sql_engine

        self.seconds = 0.0
        self._since: dict[int, float] = {}
        lock = sql_engine.LaneLock
        acquire, release = lock.acquire, lock.release
        holds = self

        async def timed_acquire(self: Any, lane: Priority) -> None:
            await acquire(self, lane)
            holds._since[id(self)] = time.perf_counter()

        def timed_release(self: Any, lane: Priority) -> None:
            since = holds._since.pop(id(self), None)
            if since is not None:
                holds.seconds += time.perf_counter() - since
            release(self, lane)

        lock.acquire = timed_acquire  # type: ignore[method-assign]
        lock.release = timed_release  # type: ignore[method-assign]


async def email(
    url: str, n: int, workflows: Path, pool: int, concurrency: int = 8, send_batch: int = 50
) -> dict[str, Any]:
    """One bulk event to N subscribers with a one-step email workflow: decisions, runs and
    messages, then one delivery job per `send_batch` messages over `pool` pooled SMTP
    connections to an aiosmtpd sink that discards what it receives. The rate is from the event's accept
    until every message is sent."""
    from tidings.config import NotifySettings, Settings, SmtpSettings, WorkerSettings

    port = free_port()
    sink = subprocess.Popen([sys.executable, __file__, "--sink", str(port)])
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                break
        except OSError:
            time.sleep(0.05)
    settings = Settings(
        database_url=url,
        log_level="warning",
        token_secret="b" * 64,
        notify=NotifySettings(workflows=[str(workflows)], send_batch=send_batch),
        smtp=SmtpSettings(host="127.0.0.1", port=port, pool_size=pool),
        worker=WorkerSettings(poll_interval=0.05, concurrency=concurrency),
    )
    holds = WriterHolds()
    runtime, gc_policy = await start_runtime(settings)
    engine = create_engine(url)
    m = notify_messages.c
    try:
        cpu0 = time.process_time()
        start = time.perf_counter()
        await runtime.services.ingest.ingest(bulk_event("bulk.mail"))
        settled, statuses = 0, {}
        while settled < n:
            await asyncio.sleep(poll_interval(settled, n, time.perf_counter() - start))
            async with reader(engine).connect() as conn:
                rows = await conn.execute(
                    select(m.status, func.count()).where(m.status != "queued").group_by(m.status)
                )
                statuses = {str(status): int(k) for status, k in rows}
            settled = sum(statuses.values())
            if time.perf_counter() - start > 900:
                raise RuntimeError(f"only {settled} of {n} messages settled after 15 minutes")
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu0
    finally:
        await engine.dispose()
        await gc_policy.stop()
        await runtime.stop()
        sink.terminate()
        sink.wait(10)
    return {
        "recipients": n,
        "hot_update_percent": await hot_updates(url),
        "smtp_pool": pool,
        "worker_concurrency": concurrency,
        "send_batch": send_batch,
        "statuses": statuses,
        "seconds": elapsed,
        "deliveries_per_s": statuses.get("sent", 0) / elapsed,
        "cpu_percent": 100 * cpu / elapsed,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        # SQLite's write lock held per message sent (0 on PostgreSQL, which has no such lock)
        "writer_hold_ms_per_delivery": 1000 * holds.seconds / max(1, statuses.get("sent", 0)),
        "cpu_ms_per_delivery": 1000 * cpu / max(1, statuses.get("sent", 0)),
    }


async def hot_updates(url: str) -> float | None:
    """On PostgreSQL, the share of the message rows' updates that were heap-only (HOT: no
    index entry for the new row version), read from the server's statistics once the
    runtime's connections have closed and reported theirs; None on SQLite."""
    if not url.startswith("postgresql"):
        return None
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                        "WHERE relname = 'notify_messages'"
                    )
                )
            ).one()
    finally:
        await engine.dispose()
    updated, hot = int(row[0]), int(row[1])
    return 100 * hot / updated if updated else None


def poll_interval(done: int, n: int, elapsed: float) -> float:
    """How long to wait before counting again: counting scans a table, so rarely while the
    end is far, and every 50 ms once it is less than two seconds away at the rate so far. A
    fixed second between counts made a run of a few seconds end on a whole second (20k
    in-app deliveries at 4k/s measured 3,96x/s in every run)."""
    if done <= 0 or elapsed <= 0:
        return 0.25
    left = (n - done) * elapsed / done  # seconds to go at the rate so far
    return 0.05 if left < 2.0 else min(1.0, left / 4)


def tracked_objects() -> int:
    """Objects the collector tracks, frozen or not: what the policy's next full collection
    walks. Frozen as the policy would at its next step (young ones still in reach count)."""
    gc.freeze()
    return gc.get_freeze_count()


# -- 3. priority lanes, against `tidings serve` ---------------------------------------------


class Sink:
    def __init__(self) -> None:
        self.arrived: dict[int, float] = {}

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        for line in envelope.content.split(b"\r\n"):
            if line.startswith(b"Subject: code "):
                self.arrived[int(line.split(b" ")[-1])] = time.perf_counter()
                break
        return "250 OK"


def serve(
    url: str, port: int, smtp_port: int, workflows: Path, tmp: str
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "TIDINGS_DATABASE_URL": url,
        "TIDINGS_PORT": str(port),
        "TIDINGS_LOG_LEVEL": "warning",
        "TIDINGS_TOKEN_SECRET": "b" * 64,
        "TIDINGS_SMTP__HOST": "127.0.0.1",
        "TIDINGS_SMTP__PORT": str(smtp_port),
        "TIDINGS_NOTIFY__WORKFLOWS": json.dumps([str(workflows)]),
    }
    proc = subprocess.Popen(
        [str(BIN / "tidings"), "serve"],
        env=env,
        cwd=tmp,
        stdout=subprocess.DEVNULL,
        stderr=open(Path(tmp) / "server.log", "wb"),
    )
    for _ in range(400):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("server did not start: " + (Path(tmp) / "server.log").read_text())


def api_key(url: str) -> str:
    env = {**os.environ, "TIDINGS_DATABASE_URL": url}
    out = subprocess.run(
        [BIN / "tidings", "apikey", "create", "--scope", "publish", "--name", "bench"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.strip().splitlines()[-1]


async def at_rate(
    one: Callable[[int], Awaitable[None]], rate: float, seconds: float, first: int
) -> int:
    """Start `one(seq)` for seq = first, first + 1, ... at `rate`/s for `seconds` (each on
    its own task, so a slow one delays none of the next), wait for all; returns the next
    sequence number."""
    seq, start, tasks = first, time.perf_counter(), []
    while time.perf_counter() - start < seconds:
        tasks.append(asyncio.create_task(one(seq)))
        seq += 1
        await asyncio.sleep(max(0.0, start + (seq - first) / rate - time.perf_counter()))
    await asyncio.gather(*tasks)
    return seq


def tx_event(n: int) -> dict[str, Any]:
    """The transactional event number `n`: one email (`tx.code`, its subject carries `n`) to
    one of the first 1000 subscribers. Its fields are the keyword arguments of `EventInput`
    and, encoded as JSON (a tuple as a list, a `Priority` as its value), the body of
    POST /v1/events."""
    return {
        "type": "tx.code",
        "recipients": (f"s{n % 1000:07d}",),
        "payload": {"seq": n, "code": f"{n:06d}"},
        "priority": Priority.TRANSACTIONAL,
    }


async def tx_load(
    client: httpx.AsyncClient, rate: float, seconds: float, first: int, accepted: dict[int, float]
) -> int:
    """Send transactional events at `rate`/s for `seconds`; returns the next sequence number."""

    async def one(n: int) -> None:
        r = await client.post("/v1/events", json=tx_event(n))
        if r.status_code != 202:
            raise RuntimeError(f"{r.status_code} {r.text}")
        accepted[n] = time.perf_counter()

    return await at_rate(one, rate, seconds, first)


def latencies(sink: Sink, accepted: dict[int, float], seqs: range) -> dict[str, float]:
    values = sorted(sink.arrived[s] - accepted[s] for s in seqs if s in sink.arrived)
    missing = sum(1 for s in seqs if s not in sink.arrived)
    q = statistics.quantiles(values, n=100)
    return {
        "count": len(values),
        "missing": missing,
        "p50_ms": q[49] * 1000,
        "p99_ms": q[98] * 1000,
    }


async def handed_off(url: str) -> tuple[dict[int, float], dict[int, float]]:
    """Per transactional event (its `seq`), seconds from its accept to the provider's
    answer, on the server's clock: its message's `sent` instant less the event's
    `created_at`. The sink's own delay in recording an arrival is left out. Second, the
    part of it before the fanout made the message (its `created_at`): the event's write
    and its dispatch."""
    engine = create_engine(url)
    m, e = notify_messages.c, events.c
    try:
        async with reader(engine).connect() as conn:
            rows = (
                await conn.execute(
                    select(e.payload, e.created_at, m.created_at, m.statuses)
                    .select_from(notify_messages.join(events, m.event_id == e.id))
                    .where(m.workflow == "tx.code")
                )
            ).all()
            sent = [
                (int(payload["seq"]), float(accepted), float(made), float(statuses["sent"]))
                for payload, accepted, made, statuses in rows
                if statuses and "sent" in statuses
            ]
            return (
                {seq: at - accepted for seq, accepted, _, at in sent},
                {seq: made - accepted for seq, accepted, made, _ in sent},
            )
    finally:
        await engine.dispose()


def quantiles(values: dict[int, float], seqs: range) -> dict[str, float]:
    found = sorted(values[s] for s in seqs if s in values)
    q = statistics.quantiles(found, n=100)
    return {"count": len(found), "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000}


async def lanes(
    url: str, n: int, workflows: Path, tmp: str, rate: float, idle_s: float, bulk: str = "inapp"
) -> dict[str, Any]:
    """`bulk`: what the bulk send is, `inapp` (bulk.news) or `email` (bulk.mail, whose
    messages go to the same SMTP sink and provider as the transactional ones); it has run
    once every run is done (in-app) or every message is sent (email)."""
    workflow = "bulk.news" if bulk == "inapp" else "bulk.mail"
    sink = Sink()
    smtp_port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    port = free_port()
    key = api_key(url)
    proc = serve(url, port, smtp_port, workflows, tmp)
    accepted: dict[int, float] = {}
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        ) as client:
            await tx_load(client, rate, 3.0, 0, {})  # warm-up
            first = 1_000_000
            end = await tx_load(client, rate, idle_s, first, accepted)
            await asyncio.sleep(2.0)
            idle = latencies(sink, accepted, range(first, end))
            r = await client.post(
                "/v1/events",
                json={
                    "type": workflow,
                    "topic": "all",
                    "payload": {"headline": "Release", "text": "out"},
                    "priority": "bulk",
                },
            )
            assert r.status_code == 202, r.text
            bulk_start = time.perf_counter()
            bulk_first = 2_000_000
            seq = bulk_first
            done = 0
            while done < n:
                seq = await tx_load(client, rate, 5.0, seq, accepted)
                done = await count_done(url, workflow)
                print(f"  bulk: {done} of {n} done", file=sys.stderr)
                if time.perf_counter() - bulk_start > 1800:
                    raise RuntimeError("bulk send did not finish in 30 minutes")
            bulk_seconds = time.perf_counter() - bulk_start
            await asyncio.sleep(2.0)
            busy = latencies(sink, accepted, range(bulk_first, seq))
    except BaseException:
        log = Path(tmp) / "server.log"  # gone with the run's directory: show its errors
        errors = [line for line in log.read_text().splitlines() if '"error"' in line]
        print("\n".join(["server errors:", *errors[-20:]]), file=sys.stderr)
        raise
    finally:
        proc.terminate()
        proc.wait(30)
        controller.stop()
    server, to_fanout = await handed_off(url)
    return {
        "recipients": n,
        "bulk_kind": bulk,
        # the same latencies on the server's clock, to the provider's answer
        "idle_server": quantiles(server, range(first, end)),
        "bulk_server": quantiles(server, range(bulk_first, seq)),
        # of which from the accept to the fanout's message (the event's write, dispatch)
        "idle_to_fanout": quantiles(to_fanout, range(first, end)),
        "bulk_to_fanout": quantiles(to_fanout, range(bulk_first, seq)),
        "rate": rate,
        "idle": idle,
        "bulk": busy,
        "bulk_seconds": bulk_seconds,
        "bulk_per_s": n / bulk_seconds,
        "ratio_p99": busy["p99_ms"] / idle["p99_ms"],
    }


async def count_done(url: str, workflow: str) -> int:
    """Runs of `workflow` done (in-app: delivered with the run), or its messages sent."""
    if workflow == "bulk.news":
        t, done = notify_runs.c, notify_runs.c.state == "done"
    else:
        t, done = notify_messages.c, notify_messages.c.status == "sent"
    engine = create_engine(url)
    try:
        async with reader(engine).connect() as conn:
            query = select(func.count()).where(t.workflow == workflow, done)
            return int((await conn.execute(query)).scalar_one())
    finally:
        await engine.dispose()


def run_sink(port: int) -> None:
    """The email test's SMTP server: aiosmtpd's Sink handler (it keeps nothing) on uvloop, in
    a process of its own, until terminated."""
    import signal

    import uvloop
    from aiosmtpd.handlers import Sink as Discard

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # for sigwait, in every thread
    controller = Controller(
        Discard(), hostname="127.0.0.1", port=port, loop=uvloop.new_event_loop()
    )
    controller.start()
    signal.sigwait({signal.SIGTERM})
    controller.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sink", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--recipients", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=20.0, help="transactional events/s")
    ap.add_argument("--idle-seconds", type=float, default=30.0)
    ap.add_argument("--pg", default="postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    ap.add_argument("--stores", default="sqlite,postgres")
    ap.add_argument("--tests", default="inapp,email,lanes")
    ap.add_argument("--smtp-pool", type=int, default=4, help="SMTP connections (email test)")
    ap.add_argument(
        "--worker-concurrency", type=int, default=8, help="worker.concurrency (email test)"
    )
    ap.add_argument(
        "--send-batch", default="50", help="notify.send_batch values, comma-separated (email)"
    )
    ap.add_argument(
        "--bulk-concurrency",
        type=int,
        help="notify.bulk_concurrency (inapp; default: the store's, 1 SQLite, 4 PostgreSQL)",
    )
    ap.add_argument(
        "--lanes-bulk",
        choices=("inapp", "email"),
        default="inapp",
        help="the bulk send of the lanes test: in-app messages or emails",
    )
    ap.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="event loop of the in-process tests (inapp, email); `tidings serve` runs uvloop",
    )
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.sink:
        run_sink(args.sink)
        return
    if args.loop == "uvloop":
        import uvloop

        uvloop.install()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        workflows = Path(tmp) / "workflows.yaml"
        workflows.write_text(WORKFLOWS)
        for store in args.stores.split(","):
            for test, variant in [
                (t, v)
                for t in args.tests.split(",")
                for v in (args.send_batch.split(",") if t == "email" else [""])
            ]:
                url = (
                    f"sqlite+aiosqlite:///{tmp}/{test}{variant}.db"
                    if store == "sqlite"
                    else pg_database(args.pg, f"tidings_bench_{test}{variant}")
                )
                migrate(url)
                asyncio.run(seed(url, args.recipients))
                print(f"{store} {test}: seeded {args.recipients}", file=sys.stderr)
                if test == "inapp":
                    r = asyncio.run(inapp(url, args.recipients, workflows, args.bulk_concurrency))
                elif test == "email":
                    r = asyncio.run(
                        email(
                            url,
                            args.recipients,
                            workflows,
                            args.smtp_pool,
                            args.worker_concurrency,
                            int(variant),
                        )
                    )
                else:
                    r = asyncio.run(
                        lanes(
                            url,
                            args.recipients,
                            workflows,
                            tmp,
                            args.rate,
                            args.idle_seconds,
                            args.lanes_bulk,
                        )
                    )
                r = {"store": store, "test": test, "date": time.strftime("%Y-%m-%d"), **r}
                print(json.dumps(r), file=sys.stderr)
                results.append(r)
    if args.out:
        with args.out.with_suffix(".jsonl").open("a") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")
        args.out.write_text(report(results, args))


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        "# Notification orchestrator",
        "",
        f"`bench/notify.py --recipients {args.recipients} --rate {args.rate:g}`, measured "
        f"{time.strftime('%Y-%m-%d')} on this machine ({os.cpu_count()} cores).",
        "",
        "## In-app deliveries (one bulk event to a topic, whole pipeline, one process)",
        "",
        "| store | recipients | seconds | in-app deliveries/s | CPU % (of one core) | peak RSS MB "
        "| tracked objects grown |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r["test"] == "inapp":
            lines.append(
                f"| {r['store']} | {r['recipients']:,} | {r['seconds']:.1f} | "
                f"{r['deliveries_per_s']:,.0f} | {r['cpu_percent']:.0f} | {r['max_rss_mb']:.0f} "
                f"| {r.get('tracked_growth', 0):,} |"
            )
    lines += [
        "",
        "## SMTP deliveries (one bulk event to a topic, whole pipeline, one process)",
        "",
        "| store | recipients | messages per delivery job | SMTP connections | worker slots "
        "| seconds | sent | SMTP deliveries/s | CPU ms per delivery "
        "| SQLite write lock ms per delivery | message updates HOT % (PostgreSQL) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r["test"] == "email":
            hot = r.get("hot_update_percent")
            lines.append(
                f"| {r['store']} | {r['recipients']:,} | {r.get('send_batch', 1)} | "
                f"{r['smtp_pool']} | {r['worker_concurrency']} | {r['seconds']:.1f} | "
                f"{r['statuses'].get('sent', 0):,} | {r['deliveries_per_s']:,.0f} | "
                f"{r['cpu_ms_per_delivery']:.1f} | {r['writer_hold_ms_per_delivery']:.1f} | "
                f"{'-' if hot is None else f'{hot:.0f}'} |"
            )
    lines += [
        "",
        "## Priority lanes (transactional email p99 while a bulk send runs)",
        "",
        "| store | bulk send | tx rate/s | idle p50 ms | idle p99 ms | during bulk p50 ms "
        "| during bulk p99 ms | p99 ratio (goal <= 2) | server side p99 idle / bulk ms "
        "| bulk recipients/s | missing |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r["test"] == "lanes":
            i, b = r["idle"], r["bulk"]
            server = "-"
            if "idle_server" in r:
                server = f"{r['idle_server']['p99_ms']:.1f} / {r['bulk_server']['p99_ms']:.1f}"
            lines.append(
                f"| {r['store']} | {r.get('bulk_kind', 'inapp')} | {r['rate']:g} | "
                f"{i['p50_ms']:.1f} | {i['p99_ms']:.1f} | "
                f"{b['p50_ms']:.1f} | {b['p99_ms']:.1f} | {r['ratio_p99']:.2f} | {server} | "
                f"{r['bulk_per_s']:,.0f} | {i['missing'] + b['missing']} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
