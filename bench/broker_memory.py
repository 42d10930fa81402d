"""What a bulk send's inbox streams cost the memory broker: N channels (default 100k), each
with an inbox item (orjson output, as `InboxService.push` makes it, with its idempotency key)
and a counts update, published as the inbox does (history 50, TTL 10 min). Measures the
publish cost, the growth of RSS, of tracked objects and of the allocator's blocks, and the
time of one full collection afterwards. Each run is a fresh process.

The process collects as `tidings serve` does (`GcPolicy`): CPython's young collections as
they fall due, and every second what survived is frozen (moved out of the collector's reach,
tracked or not). Objects frozen while still tracked count in the full collection that the
policy runs when the heap has grown.

    .venv/bin/python bench/broker_memory.py --out bench/results/broker_memory.md
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))


async def measure(n: int) -> dict[str, Any]:
    import orjson

    from tidings.adapters.clock import SystemClock
    from tidings.adapters.memory.broker import MemoryBroker

    broker = MemoryBroker(SystemClock())
    gc.collect()
    gc.freeze()
    objects, blocks = gc.get_freeze_count(), sys.getallocatedblocks()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = froze = time.perf_counter()
    for i in range(n):
        if i % 256 == 0 and time.perf_counter() - froze >= 1.0:  # GcPolicy's freeze
            gc.freeze()
            froze = time.perf_counter()
        channel = f"inbox:#s{i:07d}"
        item = {"id": f"{i:040x}", "title": "Release 2.0", "body": f"Hello s{i:07d}, it is out"}
        await broker.publish(
            channel,
            orjson.dumps({"type": "item", "item": item}),
            history_size=50,
            history_ttl=600,
            idempotency_key=f"inbox-item:{i:040x}",
        )
        await broker.publish(
            channel, b'{"type":"counts","unread":1,"unseen":1}', history_size=50, history_ttl=600
        )
    elapsed = time.perf_counter() - start
    gc.freeze()
    tracked = gc.get_freeze_count() - objects
    started = time.perf_counter()  # the policy's full collection: unfreeze, collect, freeze
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    full_ms = (time.perf_counter() - started) * 1000
    return {
        "channels": n,
        "publish_us": elapsed / (2 * n) * 1e6,
        "rss_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024,
        "tracked": tracked,
        "blocks": sys.getallocatedblocks() - blocks,
        "full_gc_ms": full_ms,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--channels", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(asyncio.run(measure(args.channels))))
        return
    runs = [
        json.loads(
            subprocess.run(
                [sys.executable, __file__, "--one", "--channels", str(args.channels)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        for _ in range(args.runs)
    ]
    best = min(runs, key=lambda r: r["publish_us"])
    lines = [
        "# Memory broker: a bulk send's inbox streams (bench/broker_memory.py)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on this machine (2 cores): {args.channels:,} "
        "inbox channels, an item and a counts update each; the run with the fastest publish "
        f"of {args.runs}.",
        "",
        "| publish us | RSS growth MB | tracked objects | allocator blocks | full collection ms |",
        "|---|---|---|---|---|",
        f"| {best['publish_us']:.2f} | {best['rss_mb']:.0f} | {best['tracked']:,} | "
        f"{best['blocks']:,} | {best['full_gc_ms']:.1f} |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text)
        with args.out.with_suffix(".jsonl").open("a") as f:
            for r in runs:
                f.write(json.dumps({"date": time.strftime("%Y-%m-%d"), **r}) + "\n")


if __name__ == "__main__":
    main()
