"""SMTP delivery benchmark: deliveries/s through the SMTP provider (pooled aiosmtplib
connections, behind its circuit breaker) to a local aiosmtpd sink.

The sink runs in its own process pinned to core 1; the sender (this process) to core 0. Each
delivery is one full SMTP transaction (MAIL, RCPT, DATA) of a multipart/alternative message
with its own Message-ID, on a connection reused from the pool.

    .venv/bin/python bench/smtp.py --out bench/results/smtp.md
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_sink(port: int) -> None:
    from aiosmtpd.controller import Controller

    class Count:
        n = 0

        async def handle_DATA(self, server, session, envelope):
            Count.n += 1
            return "250 2.0.0 OK"

    Controller(Count(), hostname="127.0.0.1", port=port).start()
    print("ready", flush=True)
    sys.stdin.read()  # until the parent closes our stdin


async def measure(port: int, pool: int, concurrency: int, seconds: float) -> tuple[float, int]:
    from tidings.adapters.clock import SystemClock
    from tidings.adapters.providers.smtp import SmtpConfig, SmtpProvider
    from tidings.core.delivery.messages import EmailMessage
    from tidings.services.providers import GuardedProvider

    clock = SystemClock()
    smtp = SmtpProvider(
        SmtpConfig(host="127.0.0.1", port=port, pool_size=pool, max_messages_per_connection=10**9),
        clock,
    )
    guard = GuardedProvider(smtp, clock)
    done = 0
    failed = 0
    stop = False

    async def sender(w: int) -> None:
        nonlocal done, failed
        i = 0
        while not stop:
            i += 1
            r = await guard.send(
                EmailMessage(
                    sender="Tidings <noreply@example.com>",
                    to=f"user{w}@example.org",
                    subject=f"Your order {i} has shipped",
                    text=f"Hello, order {i} is on its way.",
                    html=f"<p>Hello, order <b>{i}</b> is on its way.</p>",
                )
            )
            if r.delivered:
                done += 1
            else:
                failed += 1

    tasks = [asyncio.create_task(sender(w)) for w in range(concurrency)]
    await asyncio.sleep(1.0)  # warm up: connections open
    start_done, start = done, time.perf_counter()
    await asyncio.sleep(seconds)
    rate = (done - start_done) / (time.perf_counter() - start)
    stop = True
    await asyncio.gather(*tasks)
    await guard.aclose()
    return rate, failed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sink", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--pools", default="1,2,4,8")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.sink:
        run_sink(args.sink)
        return
    try:
        import uvloop

        uvloop.install()
        loop_name = "uvloop"
    except ImportError:
        loop_name = "asyncio"
    cores = os.cpu_count() or 1
    if cores >= 2:
        os.sched_setaffinity(0, {0})
    port = free_port()
    sink = subprocess.Popen(
        [sys.executable, __file__, "--sink", str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, {1})) if cores >= 2 else None,
    )
    assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
    rows = []
    try:
        for pool in [int(p) for p in args.pools.split(",")]:
            rate, failed = asyncio.run(measure(port, pool, pool * 4, args.seconds))
            rows.append((pool, pool * 4, rate, failed))
            print(f"pool={pool} senders={pool * 4}: {rate:,.0f} deliveries/s, {failed} failed")
    finally:
        assert sink.stdin is not None
        sink.stdin.close()
        sink.wait(timeout=10)
    if args.out:
        lines = [
            "# SMTP delivery benchmark",
            "",
            "Command: `.venv/bin/python bench/smtp.py --out bench/results/smtp.md`",
            "",
            f"Machine: {cores}-core VM, {platform.processor() or platform.machine()}, "
            f"Python {platform.python_version()}, {loop_name}; sender pinned to core 0, "
            "aiosmtpd sink (its own process) to core 1.",
            "",
            "Each delivery: one SMTP transaction (MAIL, RCPT, DATA) of a multipart/alternative "
            "message through `GuardedProvider(SmtpProvider)` on pooled connections; "
            f"{args.seconds:.0f} s measured after 1 s of warm-up.",
            "",
            "| pool connections | concurrent senders | deliveries/s | failed |",
            "|---:|---:|---:|---:|",
        ]
        lines += [f"| {p} | {c} | {r:,.0f} | {f} |" for p, c, r, f in rows]
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
