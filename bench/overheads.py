"""Per-object and per-call overheads the hot paths avoid, measured in isolation:

1. building a data class of twenty fields: `@dataclass(frozen=True, slots=True)` against
   `tidings.records.record` (frozen for the type checker, a plain slotted dataclass at run
   time);
2. taking a pooled SQLite connection and giving it back, on an idle uvloop: through a
   SQLAlchemy `AsyncConnection` (`engine.connect()`, `get_raw_connection()`, close) against
   the pool's connection directly, as `script.run_transaction` and `run_read` take it.

Best of five rounds each.

    .venv/bin/python bench/overheads.py --out bench/results/overheads.md
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
import timeit
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tidings.adapters.sql.engine import create_engine
from tidings.adapters.sql.script import _checkin, _checkout
from tidings.records import record

FIELDS = 20


def classes() -> tuple[type[Any], type[Any]]:
    annotations = {f"f{i}": int for i in range(FIELDS)}
    frozen = dataclass(frozen=True, slots=True)(
        type("Frozen", (), {"__annotations__": annotations})
    )
    plain = record(type("Record", (), {"__annotations__": dict(annotations)}))
    return frozen, plain


def construction() -> dict[str, float]:
    frozen, plain = classes()
    args = list(range(FIELDS))
    n = 100_000
    out = {}
    for name, cls in (("frozen dataclass", frozen), ("record", plain)):
        best = min(timeit.repeat(lambda c=cls: c(*args), number=n, repeat=5))
        out[name] = best / n * 1e6
    return out


async def checkouts() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite+aiosqlite:///{tmp}/o.db")
        try:
            async with engine.connect() as conn:
                await conn.get_raw_connection()
            n = 3000
            through, direct = [], []
            for _ in range(5):
                start = time.perf_counter()
                for _ in range(n):
                    async with engine.connect() as conn:
                        await conn.get_raw_connection()
                through.append((time.perf_counter() - start) / n * 1e6)
                start = time.perf_counter()
                for _ in range(n):
                    await _checkin(await _checkout(engine))
                direct.append((time.perf_counter() - start) / n * 1e6)
        finally:
            await engine.dispose()
    return {"AsyncConnection": min(through), "pool's connection": min(direct)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    built = construction()
    taken = uvloop.run(checkouts())
    lines = [
        "# Overheads the hot paths avoid (`bench/overheads.py`)",
        "",
        f"Measured {datetime.date.today()}, best of five rounds.",
        "",
        f"| building a data class of {FIELDS} int fields | us per object |",
        "|---|---|",
        *(f"| {k} | {v:.2f} |" for k, v in built.items()),
        "",
        "| a pooled SQLite connection taken and given back (idle uvloop) | us per call |",
        "|---|---|",
        *(f"| {k} | {v:.1f} |" for k, v in taken.items()),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
