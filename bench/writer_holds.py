"""Where SQLite's write lock goes during a bulk send, in one process (a diagnostic).

Runs `bench/notify.py`'s in-process in-app (or email) test on SQLite and measures, by
wrapping the runtime's own pieces:

- every hold of the process's writer lock (`LaneLock`), by the function that took it
  (claims, run commits, inbox inserts, settling...): count, sum, p50, p99, max, and the
  share of the send during which the lock was held;
- each one-call write transaction (`script.run_transaction`): where it ran (on the event
  loop's thread, or on the connection's while another process held SQLite's write lock)
  and how long its work took there;
- the same 50-row inbox insert in plain `sqlite3` on a table of the same schema, for
  comparison;
- each thread's CPU over the send (`/proc/self/task`): the event loop, the SQLite
  connections' threads, the rest.

    .venv/bin/python bench/writer_holds.py --recipients 30000 --out bench/results/writer_holds.md
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import notify as nb

from tidings.adapters.sql import engine as sql_engine
from tidings.adapters.sql import script as sql_script

HOLDS: dict[str, list[float]] = {}
PARTS: dict[str, list[float]] = {}  # the work of one-call write transactions, by where it ran


def _taker() -> str:
    """The runtime function that took the lock (the innermost outside the SQL helpers)."""
    skip = ("engine.py", "script.py", "contextlib", "writer_holds.py")
    for f in reversed(traceback.extract_stack(limit=16)[:-2]):
        if "/tidings/" in f.filename and not f.filename.endswith(skip):
            return f.name
    return "?"


def install() -> None:
    lock = sql_engine.LaneLock
    acquire, release = lock.acquire, lock.release
    since: dict[int, tuple[float, str]] = {}

    async def timed_acquire(self: Any, lane: Any = None) -> None:
        await acquire(self, lane)
        since[id(self)] = (time.perf_counter(), _taker())

    def timed_release(self: Any, lane: Any = None) -> None:
        found = since.pop(id(self), None)
        if found is not None:
            HOLDS.setdefault(found[1], []).append(time.perf_counter() - found[0])
        release(self, lane)

    lock.acquire = timed_acquire  # type: ignore[method-assign]
    lock.release = timed_release  # type: ignore[method-assign]

    # the real `run_transaction`, its work timed where it runs (`script` looks both up by
    # name at each call)
    for name, where in (("_transaction_now", "loop"), ("_transaction", "thread")):
        work = getattr(sql_script, name)

        def timed(
            conn: sqlite3.Connection,
            fn: Callable[[sqlite3.Connection], Any],
            work: Callable[..., Any] = work,
            where: str = where,
        ) -> Any:
            start = time.perf_counter()
            try:
                return work(conn, fn)
            finally:
                PARTS.setdefault(where, []).append(time.perf_counter() - start)

        setattr(sql_script, name, timed)


class ThreadCpu:
    """CPU seconds of this process's threads over a span, by role: the event loop (the main
    thread), the SQLite connections' threads (aiosqlite's workers), the rest. Sampled every
    0.1 s, so threads that end within the span (a disposed pool's) still count."""

    def __init__(self) -> None:
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._roles: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        names = {t.native_id: t.name for t in threading.enumerate()}
        main = threading.main_thread().native_id
        for task in Path("/proc/self/task").iterdir():
            with contextlib.suppress(OSError):
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                tid = int(task.name)
                seconds = (int(fields[11]) + int(fields[12])) / tick
                self._first.setdefault(tid, seconds if not self._thread.is_alive() else 0.0)
                self._last[tid] = seconds
                if tid == main:
                    self._roles[tid] = "loop"
                elif "_connection_worker_thread" in names.get(tid, ""):
                    self._roles[tid] = "sqlite"
                else:
                    self._roles.setdefault(tid, "other")

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self._sample()

    def __enter__(self) -> ThreadCpu:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def used(self) -> dict[str, float]:
        out = {"loop": 0.0, "sqlite": 0.0, "other": 0.0}
        for tid, last in self._last.items():
            out[self._roles.get(tid, "other")] += last - self._first.get(tid, 0.0)
        return out


def raw_inbox_insert(url: str, batches: int = 600, per: int = 50) -> float:
    """p50 ms of a `per`-row inbox insert (BEGIN IMMEDIATE ... COMMIT) in plain sqlite3."""
    from tidings.adapters.sql.inbox import _sqlite_insert

    path = url.split("///", 1)[1]
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    took = []
    for k in range(batches):
        rows = [
            (f"raw{k:06d}{i:04d}", f"raw{k * per + i:07d}", "ev", "w", "s", "T", "B", None)
            + ('{"a":1}', 1.7e9, None, None, None)
            for i in range(per)
        ]
        flat = [v for row in rows for v in row]
        start = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(_sqlite_insert(per), flat).fetchall()
        conn.execute("COMMIT")
        took.append(time.perf_counter() - start)
    conn.close()
    return statistics.median(took) * 1000


def q(values: list[float], at: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * at))] * 1000


async def send(test: str, url: str, n: int, workflows: Path) -> float:
    start = time.perf_counter()
    if test == "inapp":
        await nb.inapp(url, n, workflows)
    else:
        await nb.email(url, n, workflows, 8)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--recipients", type=int, default=30_000)
    ap.add_argument("--tests", default="inapp,email")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    import uvloop

    uvloop.install()
    lines = [
        "# SQLite's write lock during a bulk send",
        "",
        f"`bench/writer_holds.py --recipients {args.recipients} --tests {args.tests}`, "
        f"measured {time.strftime('%Y-%m-%d')} on this machine ({os.cpu_count()} cores).",
    ]
    install()
    for test in args.tests.split(","):
        HOLDS.clear()
        PARTS.clear()
        with tempfile.TemporaryDirectory() as tmp:
            url, workflows = nb.sqlite_send(tmp, test, args.recipients)
            HOLDS.clear()
            PARTS.clear()
            with ThreadCpu() as cpu:
                seconds = asyncio.run(send(test, url, args.recipients, workflows))
            used = cpu.used()
            raw = raw_inbox_insert(url)
        held = sum(sum(v) for v in HOLDS.values())
        lines += [
            "",
            f"## {test}, {args.recipients:,} recipients: {seconds:.1f} s, the lock held "
            f"{100 * held / seconds:.0f} % of it",
            "",
            "| taken by | holds | sum s | p50 ms | p99 ms | max ms |",
            "|---|---|---|---|---|---|",
        ]
        for name, values in sorted(HOLDS.items(), key=lambda kv: -sum(kv[1])):
            lines.append(
                f"| `{name}` | {len(values):,} | {sum(values):.2f} | {q(values, 0.5):.2f} "
                f"| {q(values, 0.99):.2f} | {max(values) * 1000:.1f} |"
            )
        lines += [
            "",
            "One-call write transactions (`run_transaction`), their work where it ran:",
            "",
            "| on | transactions | p50 ms | p90 ms | p99 ms |",
            "|---|---|---|---|---|",
        ]
        for where, label in (
            ("loop", "the event loop's thread"),
            ("thread", "the connection's thread (SQLite's lock held elsewhere)"),
        ):
            values = PARTS.get(where, [])
            if values:
                lines.append(
                    f"| {label} | {len(values):,} | {q(values, 0.5):.2f} | {q(values, 0.9):.2f} "
                    f"| {q(values, 0.99):.2f} |"
                )
            else:
                lines.append(f"| {label} | 0 | | | |")
        lines += [
            "",
            f"A 50-row inbox insert in plain `sqlite3` on the same file: {raw:.2f} ms at p50.",
            "",
            "CPU of the threads over the send (share of one core):",
            "",
        ]
        lines.append(
            f"event loop {100 * used['loop'] / seconds:.0f} %, SQLite connections' threads "
            f"{100 * used['sqlite'] / seconds:.0f} %, other threads "
            f"{100 * used['other'] / seconds:.0f} %"
        )
        print("\n".join(lines[-12:]), file=sys.stderr)
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
