"""Campaign pacing benchmark, embedded (SQLite), real time.

N subscribers (default 100k) in topic `all`, seeded with bulk inserts; a one-step in-app
workflow; one campaign at a target rate (default 500 recipients/s). The runtime runs as
`tidings serve` would run it, minus HTTP: its worker pools claim the `campaign.tick` jobs when
they fall due on the real clock (one tick per second, each handing out `rate` members in
`notify.batch` jobs) and run the batches. Progress is sampled every second through the service
(`CampaignService.progress`: members handed out, runs done). Reported: the achieved rate
overall and per 10 s window, for hand-out and for delivery (runs done), its error against the
target, and the total time.

    .venv/bin/python bench/campaign.py --rate 500 --out bench/results/campaign.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

# The notification benchmark's schema, subscribers and workflows (`bulk.news`: one in-app step)
from notify import WORKFLOWS, migrate, seed


async def run(n: int, rate: float, workdir: Path) -> dict[str, Any]:
    from tidings.config import NotifySettings, Settings, WorkerSettings
    from tidings.wiring import build_runtime

    (workdir / "workflows.yaml").write_text(WORKFLOWS)
    url = f"sqlite+aiosqlite:///{workdir}/campaign.db"
    settings = Settings(
        database_url=url,
        log_level="warning",
        token_secret="b" * 64,
        notify=NotifySettings(workflows=[str(workdir / "workflows.yaml")]),
        worker=WorkerSettings(poll_interval=0.05),
    )
    migrate(url)
    await seed(url, n)
    runtime = build_runtime(settings)
    await runtime.start()
    service = runtime.services.campaigns
    assert service is not None
    samples: list[dict[str, Any]] = []
    try:
        start = time.perf_counter()
        c = await service.create(
            workflow="bulk.news",
            topic="all",
            payload={"headline": "Sale", "text": "50% off"},
            rate=rate,
        )
        while True:
            await asyncio.sleep(1.0 - (time.perf_counter() - start) % 1.0)
            p = await service.progress(c.id)
            t = time.perf_counter() - start
            samples.append({"t": t, "enqueued": p.campaign.enqueued, "delivered": p.delivered})
            if p.campaign.state.value == "completed" and p.delivered >= p.campaign.enqueued:
                break
            if t > 3 * n / rate + 120:
                raise RuntimeError(f"not done after {t:.0f} s: {samples[-1]}")
        p = await service.progress(c.id)
    finally:
        await runtime.stop()
    assert p.campaign.started_at is not None and p.campaign.finished_at is not None
    handout_seconds = p.campaign.finished_at - p.campaign.started_at
    total_seconds = samples[-1]["t"]
    windows = []
    for i in range(10, len(samples), 10):
        a, b = samples[i - 10], samples[i]
        span = b["t"] - a["t"]
        windows.append(
            {
                "from": a["t"],
                "to": b["t"],
                "handout_rate": (b["enqueued"] - a["enqueued"]) / span,
                "delivery_rate": (b["delivered"] - a["delivered"]) / span,
            }
        )
    full = [w for w in windows if w["to"] <= handout_seconds]  # windows while handing out
    handout_rate = p.campaign.enqueued / handout_seconds
    delivery_rate = p.delivered / total_seconds
    return {
        "recipients": n,
        "target_rate": rate,
        "enqueued": p.campaign.enqueued,
        "delivered": p.delivered,
        "handout_seconds": handout_seconds,
        "total_seconds": total_seconds,
        "handout_rate": handout_rate,
        "handout_error_percent": 100 * (handout_rate - rate) / rate,
        "delivery_rate": delivery_rate,
        "delivery_error_percent": 100 * (delivery_rate - rate) / rate,
        "window_handout_min": min((w["handout_rate"] for w in full), default=None),
        "window_handout_max": max((w["handout_rate"] for w in full), default=None),
        "window_delivery_min": min((w["delivery_rate"] for w in full), default=None),
        "window_delivery_max": max((w["delivery_rate"] for w in full), default=None),
        "final_lag": samples[-1]["enqueued"] - samples[-1]["delivered"],
        "max_lag": max(s["enqueued"] - s["delivered"] for s in samples),
        "windows": windows,
    }


def report(results: list[dict[str, Any]]) -> str:
    lines = [
        "# Campaign pacing",
        "",
        "`bench/campaign.py`: embedded SQLite, one process on this machine (2 cores), real",
        "clock. The runtime's worker pools run the `campaign.tick` jobs when they fall due",
        "(one per second, each handing `rate` members to `notify.batch` jobs of up to 500) and run",
        "the batches (a one-step in-app workflow). Progress sampled every second through",
        "`CampaignService.progress`. *Hand-out* = members handed to batches (the pacing itself);",
        "*delivery* = runs done (in-app items written).",
        "",
        "| recipients | target /s | hand-out /s | error | delivery /s | error | "
        "10 s windows, hand-out /s | 10 s windows, delivery /s | max lag | total s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def rng(lo: float | None, hi: float | None) -> str:
        return "-" if lo is None or hi is None else f"{lo:.0f} - {hi:.0f}"

    for r in results:
        lines.append(
            f"| {r['recipients']:,} | {r['target_rate']:.0f} | {r['handout_rate']:.1f} | "
            f"{r['handout_error_percent']:+.2f}% | {r['delivery_rate']:.1f} | "
            f"{r['delivery_error_percent']:+.2f}% | "
            f"{rng(r['window_handout_min'], r['window_handout_max'])} | "
            f"{rng(r['window_delivery_min'], r['window_delivery_max'])} | "
            f"{r['max_lag']:,} | {r['total_seconds']:.1f} |"
        )
    for r in results:
        lines += [
            "",
            f"## Per 10 s window at {r['target_rate']:.0f}/s",
            "",
            "| from s | to s | hand-out /s | delivery /s |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {w['from']:.0f} | {w['to']:.0f} | {w['handout_rate']:.0f} | "
            f"{w['delivery_rate']:.0f} |"
            for w in r["windows"]
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--rate", type=float, action="append", help="repeat for more runs")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/campaign.md")
    args = parser.parse_args()
    results = []
    for rate in args.rate or [500.0]:
        with tempfile.TemporaryDirectory() as tmp:
            result = asyncio.run(run(args.recipients, rate, Path(tmp)))
        summary = {k: v for k, v in result.items() if k != "windows"}
        print(json.dumps(summary), flush=True)
        results.append(result)
        with args.out.with_suffix(".jsonl").open("a") as fh:
            fh.write(json.dumps({"measured_at": time.time(), **result}) + "\n")
    args.out.write_text(report(results))
    print(report(results))


if __name__ == "__main__":
    main()
