"""Where a transactional email's time goes while a bulk send runs, in one process.

The runtime of `tidings serve` (workers on, SQLite, the garbage-collector policy of `serve`)
runs in this process with a real SMTP sink (aiosmtpd) in a child process. Transactional
emails are ingested at a fixed rate, first idle, then during a bulk in-app send to N
subscribers (`--bulk email`: a bulk email through the same SMTP provider and sink). Besides the latency from ingest to the sink (p50/p99), it measures, by
wrapping the runtime's own pieces:

- the event loop's lag (a 1 ms sleep's overshoot) and its stalls over 30 ms;
- every garbage collection by generation (gc.callbacks);
- SQLite writer lock waits and holds per lane (`LaneLock`; none with `--pg`, which runs the
  same on PostgreSQL);
- the wait for a connection of the engine's pool, per lane;
- the GC policy's steps and its counts of the tracked objects (`GcPolicy`);
- per job kind and lane: claim delay (start minus due) and run time (`WorkerPool.execute`);
- statements through SQLAlchemy per lane and table (on SQLite the one-call writes of
  `adapters/sql/script.py` pass beside it: their time is in the writer holds).

It is a diagnostic, not a goal: bench/notify.py measures the lanes goal against `tidings
serve` over HTTP. Runs with several settings back the choices in bench/results/notify.md:

    .venv/bin/python bench/lanes_breakdown.py --recipients 100000 --gc-freeze 60 \
        --gc-freeze 1 --commit-size 100 --commit-size 50 --out bench/results/lanes_breakdown.md
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import notify as nb
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import QueuePool

from tidings.adapters import lanes as adapter_lanes
from tidings.adapters.providers import smtp as smtp_module
from tidings.adapters.sql import engine as sql_engine
from tidings.adapters.sql import tables as sql_tables
from tidings.adapters.sql.engine import reader
from tidings.services import worker as worker_module
from tidings.services.gcpolicy import GcPolicy
from tidings.types import CURRENT_LANE, Priority

Samples = dict[tuple[str, str], list[float]]


def sink_main(port: int) -> None:
    """The SMTP sink (child process): prints `seq epoch-seconds` per email received."""
    from aiosmtpd.controller import Controller

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            for line in envelope.content.split(b"\r\n"):
                if line.startswith(b"Subject: code "):
                    print(int(line.split(b" ")[-1]), time.time(), flush=True)
                    break
            return "250 OK"

    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    print("ready", flush=True)
    sys.stdin.read()
    controller.stop()


class Probe:
    """Wraps the runtime's pieces and keeps their timings by phase (idle, bulk)."""

    def __init__(self) -> None:
        self.phase = "idle"
        self.samples: Samples = collections.defaultdict(list)
        self.stalls: list[tuple[str, float]] = []
        self._gc_start = 0.0
        self._held: dict[int, tuple[float, Priority]] = {}

    def add(self, name: str, seconds: float) -> None:
        self.samples[(self.phase, name)].append(seconds)

    def install(self) -> None:
        lock = sql_engine.LaneLock
        acquire, release = lock.acquire, lock.release
        probe = self

        async def timed_acquire(self: Any, lane: Priority) -> None:
            t = time.perf_counter()
            await acquire(self, lane)
            probe.add(f"writer wait {lane.value}", time.perf_counter() - t)
            probe._held[id(self)] = (time.perf_counter(), lane)

        def timed_release(self: Any, lane: Priority) -> None:
            since = probe._held.pop(id(self), None)
            if since is not None:
                probe.add(f"writer hold {since[1].value}", time.perf_counter() - since[0])
            release(self, lane)

        lock.acquire = timed_acquire  # type: ignore[method-assign]
        lock.release = timed_release  # type: ignore[method-assign]
        execute = worker_module.WorkerPool.execute

        async def timed_execute(self: Any, job: Any) -> None:
            name = f"{job.kind} {job.lane.value}"
            probe.add(f"claim delay {name}", time.time() - max(job.run_at, job.created_at))
            t = time.perf_counter()
            await execute(self, job)
            probe.add(f"run {name}", time.perf_counter() - t)

        worker_module.WorkerPool.execute = timed_execute  # type: ignore[method-assign]
        # the SMTP provider: a connection slot's wait, and a send (its four round trips)
        slot_acquire = adapter_lanes.LaneSlots.acquire

        async def timed_slot(self: Any, lane: Priority | None = None) -> None:
            t = time.perf_counter()
            await slot_acquire(self, lane)
            name = (lane or CURRENT_LANE.get()).value
            probe.add(f"smtp slot wait {name}", time.perf_counter() - t)

        adapter_lanes.LaneSlots.acquire = timed_slot  # type: ignore[method-assign]
        send = smtp_module.SmtpProvider.send

        async def timed_send(self: Any, message: Any) -> Any:
            t = time.perf_counter()
            try:
                return await send(self, message)
            finally:
                probe.add(f"smtp send {CURRENT_LANE.get().value}", time.perf_counter() - t)

        smtp_module.SmtpProvider.send = timed_send  # type: ignore[method-assign]
        gc.callbacks.append(self._on_gc)

        # The wait for a connection of the engine's pool, per lane (a checkout that finds
        # the pool empty waits for a connection to come back).
        do_get = QueuePool._do_get

        def timed_do_get(self: Any) -> Any:
            t = time.perf_counter()
            try:
                return do_get(self)
            finally:
                probe.add(f"pool wait {CURRENT_LANE.get().value}", time.perf_counter() - t)

        QueuePool._do_get = timed_do_get  # type: ignore[method-assign]

        # The GC policy's steps (freeze, and now and then a count of the tracked objects or
        # a full collection), each a stop of the loop, and its counts alone.
        step, growth = GcPolicy.step, GcPolicy._growth

        def timed_step(self: Any) -> None:
            t = time.perf_counter()
            step(self)
            probe.add("gc policy step", time.perf_counter() - t)

        def timed_growth(self: Any, blocks: int) -> float:
            t = time.perf_counter()
            try:
                return growth(self, blocks)
            finally:
                probe.add("gc policy count", time.perf_counter() - t)

        GcPolicy.step = timed_step  # type: ignore[method-assign]
        GcPolicy._growth = timed_growth  # type: ignore[method-assign]

        # Statements through SQLAlchemy, per lane of the job running them and per table
        # (start to result, the wait for the event loop included).
        names = {t.name for t in sql_tables.metadata.sorted_tables}

        def before(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
            conn.info.setdefault("bench_started", []).append(time.perf_counter())

        def after(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
            started = conn.info["bench_started"].pop()
            words = statement.split()
            verb = words[0].upper() if words else "?"
            table = next((w for w in words if w in names), "?")
            lane = CURRENT_LANE.get().value
            probe.add(f"sql {lane} {verb} {table}", time.perf_counter() - started)

        event.listen(Engine, "before_cursor_execute", before)
        event.listen(Engine, "after_cursor_execute", after)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.add(f"gc gen{info['generation']}", time.perf_counter() - self._gc_start)

    async def watch_loop(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            lag = time.perf_counter() - t - 0.001
            self.add("loop lag", lag)
            if lag > 0.03:
                self.stalls.append((self.phase, lag))


async def run(
    n: int,
    rate: float,
    idle_s: float,
    gc_freeze: float,
    commit: int,
    pg: str | None = None,
    bulk: str = "inapp",
) -> dict[str, Any]:
    from sqlalchemy import func, select

    from tidings.adapters.sql.tables import notify_messages, notify_runs
    from tidings.config import NotifySettings, Settings, SmtpSettings
    from tidings.services.ingest import EventInput
    from tidings.wiring import build_runtime

    probe = Probe()
    probe.install()
    tmp = tempfile.mkdtemp()
    url = (
        nb.pg_database(pg, "tidings_bench_breakdown")
        if pg
        else f"sqlite+aiosqlite:///{tmp}/breakdown.db"
    )
    workflows = Path(tmp) / "workflows.yaml"
    workflows.write_text(nb.WORKFLOWS)
    nb.migrate(url)
    await nb.seed(url, n)
    port = nb.free_port()
    sink = subprocess.Popen(
        [sys.executable, __file__, "--sink", str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert sink.stdout is not None and sink.stdin is not None
    assert sink.stdout.readline().strip() == "ready"
    arrived: dict[int, float] = {}

    def read_sink() -> None:
        assert sink.stdout is not None
        for line in sink.stdout:
            seq, at = line.split()
            arrived[int(seq)] = float(at)

    threading.Thread(target=read_sink, daemon=True).start()
    settings = Settings(
        database_url=url,
        log_level="warning",
        token_secret="b" * 64,
        notify=NotifySettings(workflows=[str(workflows)], bulk_commit_size=commit),
        smtp=SmtpSettings(host="127.0.0.1", port=port),
    )
    runtime = build_runtime(settings)
    await runtime.start()
    policy = GcPolicy(gc_freeze, quiet=lambda: not runtime.gate.busy())
    policy.start()  # as `tidings serve` does
    watcher = asyncio.create_task(probe.watch_loop())
    accepted: dict[int, float] = {}

    async def one(seq: int) -> None:
        await runtime.services.ingest.ingest(EventInput(**nb.tx_event(seq)))
        accepted[seq] = time.time()

    async def load(seconds: float, first: int) -> int:
        return await nb.at_rate(one, rate, seconds, first)

    engine = nb.create_engine(url)
    try:
        await load(3.0, 0)  # warm-up
        probe.samples.clear()
        idle_end = await load(idle_s, 1_000_000)
        await asyncio.sleep(1.5)
        probe.phase = "bulk"
        await runtime.services.ingest.ingest(
            EventInput(
                type="bulk.news" if bulk == "inapp" else "bulk.mail",
                topic="all",
                payload={"headline": "Release", "text": "out"},
                priority=Priority.BULK,
            )
        )
        # done: every run of the in-app send; every message of the bulk email sent
        finished = (
            select(func.count())
            .select_from(notify_runs)
            .where(notify_runs.c.workflow == "bulk.news", notify_runs.c.state == "done")
            if bulk == "inapp"
            else select(func.count())
            .select_from(notify_messages)
            .where(notify_messages.c.workflow == "bulk.mail", notify_messages.c.status == "sent")
        )
        bulk_start, seq = time.perf_counter(), 2_000_000
        while True:
            seq = await load(5.0, seq)
            # read-only: a plain connection begins IMMEDIATE on SQLite and would hold the
            # write lock while it counts
            async with reader(engine).connect() as conn:
                done = (await conn.execute(finished)).scalar_one()
            if done >= n:
                break
        bulk_seconds = time.perf_counter() - bulk_start
        await asyncio.sleep(1.5)
    finally:
        watcher.cancel()
        await policy.stop()
        await runtime.stop()
        await engine.dispose()
        sink.stdin.close()
        sink.wait(10)
        gc.callbacks.remove(probe._on_gc)
    for phase, seqs in (("idle", range(1_000_000, idle_end)), ("bulk", range(2_000_000, seq))):
        probe.samples[(phase, "ingest to SMTP sink")] = [
            arrived[s] - accepted[s] for s in seqs if s in arrived and s in accepted
        ]
    return {
        "recipients": n,
        "gc_freeze": gc_freeze,
        "commit_size": commit,
        "bulk": bulk,
        "bulk_per_s": n / bulk_seconds,
        "stalls_over_30ms": [round(s * 1000, 1) for p, s in probe.stalls if p == "bulk"],
        "metrics": {
            f"{phase}|{name}": summary(values) for (phase, name), values in probe.samples.items()
        },
    }


def summary(values: list[float]) -> dict[str, float]:
    v = sorted(values)
    if not v:
        return {"n": 0}

    def q(f: float) -> float:
        return v[min(len(v) - 1, int(f * len(v)))] * 1000

    return {"n": len(v), "p50": q(0.5), "p99": q(0.99), "max": v[-1] * 1000}


SHOWN = (
    "ingest to SMTP sink",
    "loop lag",
    "gc gen2",
    "gc policy step",
    "gc policy count",
    "writer wait transactional",
    "writer hold bulk",
    "pool wait transactional",
    "pool wait bulk",
    "run event.dispatch transactional",
    "run notify.deliver transactional",
    "run notify.deliver_batch bulk",
    "smtp slot wait transactional",
    "smtp send transactional",
    "smtp send bulk",
)


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"# Lanes breakdown (one process, {'PostgreSQL' if args.pg else 'SQLite'})",
        "",
        f"`bench/lanes_breakdown.py --recipients {args.recipients} --rate {args.rate:g}`, "
        f"measured {time.strftime('%Y-%m-%d')} on this machine; p50 / p99 / max in ms, "
        "idle -> during the bulk send.",
        "",
    ]
    for r in results:
        lines += [
            f"## bulk {r.get('bulk', 'inapp')}, gc_freeze_interval {r['gc_freeze']:g} s, "
            f"bulk_commit_size {r['commit_size']}",
            "",
            f"Bulk: {r['bulk_per_s']:,.0f} recipients/s; loop stalls over 30 ms during it: "
            f"{len(r['stalls_over_30ms'])} (longest {max(r['stalls_over_30ms'], default=0):.0f} "
            "ms).",
            "",
            "| measure | idle n | idle p50 / p99 / max | bulk n | bulk p50 / p99 / max |",
            "|---|---|---|---|---|",
        ]
        # and the transactional statements with the longest tail during the bulk send
        statements = sorted(
            (k.split("|", 1)[1] for k in r["metrics"] if k.startswith("bulk|sql transactional")),
            key=lambda name: -r["metrics"][f"bulk|{name}"]["p99"],
        )
        for name in (*SHOWN, *statements[:8]):
            i = r["metrics"].get(f"idle|{name}", {"n": 0})
            b = r["metrics"].get(f"bulk|{name}", {"n": 0})
            lines.append(f"| {name} | {i['n']} | {fmt(i)} | {b['n']} | {fmt(b)} |")
        lines.append("")
    return "\n".join(lines)


def fmt(s: dict[str, float]) -> str:
    return "-" if not s.get("n") else f"{s['p50']:.1f} / {s['p99']:.1f} / {s['max']:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sink", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--recipients", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=20.0, help="transactional emails/s")
    ap.add_argument("--idle-seconds", type=float, default=20.0)
    ap.add_argument("--gc-freeze", type=float, action="append", help="seconds (repeatable)")
    ap.add_argument("--commit-size", type=int, action="append", help="runs (repeatable)")
    ap.add_argument("--pg", help="a postgresql+asyncpg URL: run on PostgreSQL, not SQLite")
    ap.add_argument(
        "--bulk",
        choices=("inapp", "email"),
        default="inapp",
        help="the bulk send: in-app messages, or emails through the same SMTP provider",
    )
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.sink is not None:
        sink_main(args.sink)
        return
    if args.one:  # one setting, in a fresh process: its result as JSON on stdout
        freeze, commit = args.gc_freeze[0], args.commit_size[0]
        print(
            json.dumps(
                asyncio.run(
                    run(
                        args.recipients,
                        args.rate,
                        args.idle_seconds,
                        freeze,
                        commit,
                        args.pg,
                        args.bulk,
                    )
                )
            )
        )
        return
    results = []
    for freeze in args.gc_freeze or [1.0]:
        for commit in args.commit_size or [50]:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--one",
                    "--recipients",
                    str(args.recipients),
                    "--rate",
                    str(args.rate),
                    "--idle-seconds",
                    str(args.idle_seconds),
                    "--gc-freeze",
                    str(freeze),
                    "--commit-size",
                    str(commit),
                    *(["--pg", args.pg] if args.pg else []),
                    "--bulk",
                    args.bulk,
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(json.dumps({k: v for k, v in r.items() if k != "metrics"}), file=sys.stderr)
            results.append(r)
    if args.out:
        with args.out.with_suffix(".jsonl").open("a") as f:
            for r in results:
                f.write(json.dumps({"date": time.strftime("%Y-%m-%d"), **r}) + "\n")
        args.out.write_text(report(results, args))


if __name__ == "__main__":
    main()
