"""Event ingest benchmark: events/s accepted and latency (p50/p99) on SQLite and PostgreSQL.

The server (`tidings serve`, one process, workers on) is pinned to core 0; this load generator
to core 1. The generator speaks HTTP/1.1 keep-alive over raw asyncio streams, so it costs far
less than the server it measures. Each request is a new event with its own Idempotency-Key.

    .venv/bin/python bench/ingest.py --out bench/results/ingest.md
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def one_connection(
    port: int, key: str, body: bytes, deadline: float, latencies: list[float], conn_id: int
) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    errors = 0
    try:
        while time.perf_counter() < deadline:
            sent += 1
            head = (
                f"POST /v1/events HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {key}\r\n"
                f"Idempotency-Key: b{conn_id}-{sent}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            start = time.perf_counter()
            writer.write(head + body)
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            if b" 202 " not in status_line:
                errors += 1
                if errors == 1:
                    print("unexpected answer:", status_line.decode().strip(), file=sys.stderr)
    finally:
        writer.close()
    return errors


async def load(port: int, key: str, connections: int, seconds: float) -> dict[str, float]:
    body = (
        b'{"type":"order.shipped","actor":"shop","recipients":["u1"],'
        b'"channels":["orders.u1"],"payload":{"order":42,"items":["a","b"]}}'
    )
    # warm-up
    await one_connection(port, key, body, time.perf_counter() + 1.0, [], -1)
    latencies: list[float] = []
    start = time.perf_counter()
    deadline = start + seconds
    errors = await asyncio.gather(
        *(one_connection(port, key, body, deadline, latencies, i) for i in range(connections))
    )
    elapsed = time.perf_counter() - start
    latencies.sort()
    q = statistics.quantiles(latencies, n=100)
    return {
        "requests": len(latencies),
        "errors": sum(errors),
        "rate": len(latencies) / elapsed,
        "p50_ms": q[49] * 1000,
        "p99_ms": q[98] * 1000,
    }


def run_server(db_url: str, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "TIDINGS_DATABASE_URL": db_url,
        "TIDINGS_PORT": str(port),
        "TIDINGS_LOG_LEVEL": "warning",
    }
    subprocess.run([BIN / "tidings", "migrate"], env=env, check=True, capture_output=True)
    cmd = [str(BIN / "tidings"), "serve"]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", "0", *cmd]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("server did not start")


def api_key(db_url: str) -> str:
    env = {**os.environ, "TIDINGS_DATABASE_URL": db_url}
    out = subprocess.run(
        [BIN / "tidings", "apikey", "create", "--scope", "publish", "--name", "bench"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.strip().splitlines()[-1]


def pg_database(base: str, name: str) -> str:
    admin = base.replace("+asyncpg", "")
    subprocess.run(["psql", admin, "-qc", f"DROP DATABASE IF EXISTS {name}"], check=True)
    subprocess.run(["psql", admin, "-qc", f"CREATE DATABASE {name}"], check=True)
    return base.rsplit("/", 1)[0] + "/" + name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--pg", default="postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    ap.add_argument("--stores", default="sqlite,postgres")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() > 1:  # type: ignore[operator]
        os.sched_setaffinity(0, {1})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for store in args.stores.split(","):
            url = (
                f"sqlite+aiosqlite:///{tmp}/bench.db"
                if store == "sqlite"
                else pg_database(args.pg, "tidings_bench")
            )
            port = free_port()
            proc = run_server(url, port)
            try:
                key = api_key(url)
                result = asyncio.run(load(port, key, args.connections, args.seconds))
            finally:
                proc.terminate()
                proc.wait(10)
            rows.append((store, result))
            print(store, result, file=sys.stderr)
    lines = [
        "| store | connections | events/s accepted | p50 ms | p99 ms | requests | non-202 |",
        "|---|---|---|---|---|---|---|",
    ]
    for store, r in rows:
        lines.append(
            f"| {store} | {args.connections} | {r['rate']:,.0f} | {r['p50_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {r['requests']:,.0f} | {r['errors']:.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(
            "# Event ingest\n\n"
            f"`bench/ingest.py --seconds {args.seconds:g} --connections {args.connections}`: "
            "server (`tidings serve`, one process, dispatch workers on) pinned to core 0, "
            "generator to core 1, HTTP/1.1 keep-alive, each request a new event with its own "
            "Idempotency-Key, API-key auth on every request. Measured "
            f"{time.strftime('%Y-%m-%d')}.\n\n{table}\n"
        )


if __name__ == "__main__":
    main()
