"""SQLAlchemy's stock aiosqlite adapter against the one-hop cursor (adapters/sql/
sqlite_driver.py): the time of a small write transaction (BEGIN, an INSERT, a SELECT,
COMMIT), one at a time.

    .venv/bin/python bench/sqlite_driver.py --out bench/results/sqlite_driver.md
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from tidings.adapters.sql import create_engine


async def measure(engine: AsyncEngine, n: int) -> list[float]:
    async with engine.begin() as conn:
        await conn.execute(text("create table if not exists t (id integer primary key, v text)"))
    times = []
    for _ in range(n):
        t = time.perf_counter()
        async with engine.begin() as conn:
            await conn.execute(text("insert into t (v) values (:v)"), {"v": "x"})
            await conn.execute(text("select count(*) from t where id < 10"))
        times.append(time.perf_counter() - t)
    return times


async def run(n: int) -> list[dict[str, object]]:
    rows = []
    for name in ("stock aiosqlite adapter", "one-hop cursor"):
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite+aiosqlite:///{tmp}/b.db"
            engine = create_async_engine(url) if name.startswith("stock") else create_engine(url)
            times = await measure(engine, n)
            await engine.dispose()
        q = statistics.quantiles(times, n=100)
        rows.append({"driver": name, "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000})
        print(rows[-1], file=sys.stderr)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--transactions", type=int, default=4000)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rows = asyncio.run(run(args.transactions))
    lines = [
        "# SQLite driver: one thread hop per statement",
        "",
        f"`bench/sqlite_driver.py --transactions {args.transactions}`, measured "
        f"{time.strftime('%Y-%m-%d')} on this machine. One write transaction = BEGIN, an "
        "INSERT, a SELECT, COMMIT, one at a time, on an otherwise idle event loop. Under load "
        "each saved hop also saves a wait for the loop to come round: see the priority-lane "
        "figures in notify.md.",
        "",
        "| driver | p50 ms | p99 ms |",
        "|---|---|---|",
    ]
    lines += [f"| {r['driver']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |" for r in rows]
    text_out = "\n".join(lines) + "\n"
    print(text_out)
    if args.out:
        args.out.write_text(text_out)


if __name__ == "__main__":
    main()
