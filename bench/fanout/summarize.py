#!/usr/bin/env python3
"""Summarize results.jsonl -> markdown table (median of burst trials per server/N).
Copy of ../shared/bench/fanout/summarize.py (same columns), plus: records marked `discarded`
(another process loaded the machine during a trial; run.py re-ran them) are left out, a
`--idle FILE` table of idle memory runs, and a table of per-run checks (protocol counters,
core usage, CPU of other processes)."""

import json
import statistics
import sys
from collections import defaultdict

path = sys.argv[1] if len(sys.argv) > 1 else "results.jsonl"
rows = defaultdict(list)
discarded = []
for line in open(path):
    r = json.loads(line)
    if r.get("discarded"):
        discarded.append(r)
        continue
    rows[(r["server"], r["n"])].append(r)
# a record measured while other processes loaded the machine is superseded by a clean one
FOREIGN_OK = 0.12
for key, recs in list(rows.items()):
    clean = [r for r in recs if (r.get("foreign_cpu_max") or 0) <= FOREIGN_OK]
    if clean and len(clean) < len(recs):
        discarded += [
            dict(r, discarded="superseded by a clean re-run") for r in recs if r not in clean
        ]
        rows[key] = clean

print(
    "| server | N | deliv/s median (min-max, k trials) | lockstep p50/p99 ms | burst p50/p99 ms | RSS idle MB (base) | KB/conn | srv cpu / sys% | gen cpu | connect s | errors |"
)
print("|---|---|---|---|---|---|---|---|---|---|---|")
for (srv, n), recs in rows.items():
    trials, locks, gens = [], [], []
    errs = []
    for r in recs:
        g = r.get("gen") or {}
        if r.get("error"):
            errs.append(r["error"])
        errs += g.get("errors", [])
        if g.get("disconnects"):
            errs.append(f"{g['disconnects']} disconnects")
        for t in g.get("trials", []):
            if not t["complete"] or t["min_per_client"] != t["m"]:
                errs.append(f"incomplete trial {t['received']}/{t['expected']}")
            if t["received"]:
                trials.append(t)
        if g.get("lockstep"):
            if g["lockstep"]["complete"]:
                locks.append(g["lockstep"])
            elif g["lockstep"].get("m"):
                errs.append("lockstep incomplete")
        gens.append(g)
    if not trials:
        print(f"| {srv} | {n} | - | - | - | - | - | - | - | - | {errs} |")
        continue
    d = [t["deliveries_per_s"] for t in trials]
    med = statistics.median(d)
    bp50 = statistics.median(t["p50_ms"] for t in trials)
    bp99 = statistics.median(t["p99_ms"] for t in trials)
    lp50 = statistics.median(l["p50_ms"] for l in locks) if locks else float("nan")
    lp99 = statistics.median(l["p99_ms"] for l in locks) if locks else float("nan")
    rss = statistics.median(g["rss_kb_idle"] for g in gens) / 1024
    base = statistics.median(g["rss_kb_before"] for g in gens) / 1024
    kbc = statistics.median(g["kb_per_conn"] for g in gens)
    su = statistics.median(t["server_cpu_util"] for t in trials)
    ss = statistics.median(t.get("server_sys_frac", 0) or 0 for t in trials)
    gu = statistics.median(t["gen_cpu_util"] for t in trials)
    cs = statistics.median(g["connect_s"] for g in gens)
    print(
        f"| {srv} | {n} | {med / 1000:.0f}k ({min(d) / 1000:.0f}-{max(d) / 1000:.0f}k, {len(d)}) | {lp50:.1f}/{lp99:.1f} | "
        f"{bp50:.0f}/{bp99:.0f} | {rss:.0f} ({base:.0f}) | {kbc:.1f} | {su:.2f} / {ss * 100:.0f}% | {gu:.2f} | {cs:.1f} | {'; '.join(errs) if errs else ''} |"
    )

# marginal memory per connection: slope of idle RSS between the two largest N
print()
print("| server | marginal KB/conn (RSS slope 5k->10k) | RSS after bursts at max N (MB) |")
print("|---|---|---|")
by = defaultdict(dict)
for (srv, n), recs in rows.items():
    g = recs[-1].get("gen") or {}
    if g.get("rss_kb_idle"):
        by[srv][n] = g
for srv, d in by.items():
    ns = sorted(d)
    if len(ns) >= 2:
        a, b = ns[-2], ns[-1]
        slope = (d[b]["rss_kb_idle"] - d[a]["rss_kb_idle"]) / (b - a)
        after = (
            max([(t.get("server_rss_kb_after") or 0) for t in d[b].get("trials", [])] or [0]) / 1024
        )
        print(f"| {srv} | {slope:.1f} | {after:.0f} |")


# ---- additions (not in the shared summary) ----
def _med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


print()
print(
    "| server | N | core0 user/sys/softirq (burst, median) | core1 busy | other procs cpu max | Centrifuge: pings answered, publish acks/errors, offset gaps/dups, close codes | push frame bytes |"
)
print("|---|---|---|---|---|---|---|")
for (srv, n), recs in rows.items():
    for r in recs:
        g = r.get("gen") or {}
        tr = g.get("trials", [])
        c0 = [t.get("cores", {}).get("cpu0", {}) for t in tr if t.get("cores")]
        c1 = [t.get("cores", {}).get("cpu1", {}) for t in tr if t.get("cores")]
        core0 = (
            "/".join(f"{_med([c.get(k) for c in c0]):.2f}" for k in ("user", "sys", "softirq"))
            if c0
            else "-"
        )
        core1 = f"{1 - _med([c.get('idle') for c in c1]):.2f}" if c1 else "-"
        cf = g.get("centrifuge")
        proto = (
            (
                f"{cf['pings']}, {cf['pub_acks']}/{cf['pub_errors']}, {cf['offset_gaps']}/{cf['offset_dups']}, "
                f"{cf['close_codes'] or '-'}"
            )
            if cf
            else "-"
        )
        print(
            f"| {srv} | {n} | {core0} | {core1} | {r.get('foreign_cpu_max', '-')} | {proto} | {(cf or {}).get('push_frame_bytes', '-')} |"
        )
if discarded:
    print()
    print(
        "Discarded and re-run because other processes used CPU during a trial: "
        + ", ".join(
            f"{r['server']} N={r['n']} ({r.get('foreign_cpu_max')} cores)" for r in discarded
        )
    )

if len(sys.argv) > 3 and sys.argv[2] == "--idle":
    print()
    print(
        "| server | N | RSS before MB | idle RSS 2 s after connect MB | KB/conn at 2 s | at end of hold MB | KB/conn at end | max during hold KB/conn | hold s | pings answered | disconnects |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for line in open(sys.argv[3]):
        r = json.loads(line)
        g = r.get("gen") or {}
        if not g.get("rss_kb_idle_end"):
            continue
        print(
            f"| {r['server']} | {r['n']} | {g['rss_kb_before'] / 1024:.0f} | {g['rss_kb_idle'] / 1024:.0f} | {g['kb_per_conn']:.2f} | "
            f"{g['rss_kb_idle_end'] / 1024:.0f} | {g['kb_per_conn_end']:.2f} | {g['kb_per_conn_max']:.2f} | {len(g['idle_rss_samples_kb'])} | "
            f"{(g.get('centrifuge') or {}).get('pings', '-')} | {g.get('disconnects')} |"
        )
