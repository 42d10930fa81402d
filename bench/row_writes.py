"""What SQLite's writes of an in-app delivery cost, and what random keys cost them.

An in-app send to N subscribers (`bench/notify.py`'s in-app test, SQLite) leaves a real
delivery's five rows: the run, its step, the message, the trail entry and the inbox item.
They are read back and written again into fresh databases of the same schema, with the
engine's settings (WAL, synchronous NORMAL, its page cache), in plain `sqlite3`:

1. the messages and the inbox items alone, 100 rows a transaction, with their ids as they
   are (the key in recipient order: a prefix per event, channel and template version,
   then the recipient id) and as 0.1.0 made them (64 hex digits of SHA-256 over the
   event, recipient, channel and template version, so one send's ids fall all over the
   index);
2. a delivery's five rows together, 50 deliveries a transaction (`notify.bulk_commit_size`),
   with either kind of key: microseconds and WAL bytes per delivery.

    .venv/bin/python bench/row_writes.py --recipients 50000 --out bench/results/row_writes.md
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import notify as nb

from tidings.adapters.sql.engine import SQLITE_CACHE_KIB

TABLES = ("notify_runs", "notify_steps", "notify_messages", "notify_trail", "inbox_items")


def old_key(event_id: str, recipient: str, channel: str, version: str) -> str:
    """The effect key as 0.1.0 made it."""
    return hashlib.sha256(orjson.dumps([event_id, recipient, channel, version])).hexdigest()


def read_rows(path: Path) -> tuple[list[str], dict[str, list[tuple[Any, ...]]]]:
    """The schema's statements and the five tables' rows (in insertion order), plus the
    messages and inbox items again with 0.1.0's keys (`<table>@random`)."""
    src = sqlite3.connect(path)
    try:
        schema = [s for (s,) in src.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL")]
        rows = {t: src.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall() for t in TABLES}
        cols = {
            t: [r[1] for r in src.execute(f"PRAGMA table_info({t})")]
            for t in ("notify_messages", "inbox_items")
        }
    finally:
        src.close()
    m, i = cols["notify_messages"], cols["inbox_items"]
    at = {n: m.index(n) for n in ("id", "event_id", "recipient", "channel", "template_version")}
    renamed: dict[str, str] = {}
    messages = []
    for row in rows["notify_messages"]:
        key = old_key(
            *(row[at[n]] for n in ("event_id", "recipient", "channel")), row[at["template_version"]]
        )
        renamed[row[at["id"]]] = key
        messages.append(tuple(key if n == at["id"] else v for n, v in enumerate(row)))
    item_id = i.index("id")
    items = [
        tuple(renamed[v] if n == item_id else v for n, v in enumerate(row))
        for row in rows["inbox_items"]
    ]
    rows["notify_messages@random"], rows["inbox_items@random"] = messages, items
    return schema, rows


def fresh(path: Path, schema: list[str]) -> sqlite3.Connection:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
    conn.execute("PRAGMA wal_autocheckpoint=0")  # the WAL's growth is measured: no checkpoints
    for statement in schema:
        conn.execute(statement)
    return conn


def insert(conn: sqlite3.Connection, table: str, rows: list[tuple[Any, ...]]) -> None:
    if not rows:
        return
    group = "(" + ", ".join("?" * len(rows[0])) + ")"
    conn.execute(
        f"INSERT INTO {table} VALUES {', '.join([group] * len(rows))}",
        [v for row in rows for v in row],
    )


def one_table(
    path: Path, schema: list[str], table: str, rows: list[tuple[Any, ...]], per: int = 100
) -> float:
    """Microseconds per row, `per` rows a transaction."""
    conn = fresh(path, schema)
    try:
        start = time.perf_counter()
        for i in range(0, len(rows), per):
            conn.execute("BEGIN IMMEDIATE")
            insert(conn, table, rows[i : i + per])
            conn.execute("COMMIT")
        return 1e6 * (time.perf_counter() - start) / len(rows)
    finally:
        conn.close()


def deliveries(
    path: Path, schema: list[str], rows: dict[str, list[tuple[Any, ...]]], random: bool, per: int
) -> tuple[float, float]:
    """(microseconds, WAL KiB) per delivery, its five rows `per` deliveries a transaction."""
    n = len(rows["notify_runs"])
    conn = fresh(path, schema)
    try:
        start = time.perf_counter()
        for i in range(0, n, per):
            conn.execute("BEGIN IMMEDIATE")
            for table in TABLES:
                name = f"{table}@random" if random and f"{table}@random" in rows else table
                insert(conn, table, rows[name][i : i + per])
            conn.execute("COMMIT")
        seconds = time.perf_counter() - start
        wal = os.path.getsize(f"{path}-wal")  # before the close checkpoints and removes it
    finally:
        conn.close()
    return 1e6 * seconds / n, wal / 1024 / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--recipients", type=int, default=50_000)
    ap.add_argument("--commit", type=int, default=50, help="deliveries per transaction (2.)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url, workflows = nb.sqlite_send(tmp, "send", args.recipients)
        sent = asyncio.run(nb.inapp(url, args.recipients, workflows))
        schema, rows = read_rows(Path(tmp) / "send.db")
        assert all(len(rows[t]) == args.recipients for t in TABLES), "one row each a delivery"
        target = Path(tmp) / "rewrite.db"
        results: list[dict[str, Any]] = []
        for _ in range(args.rounds):
            r: dict[str, Any] = {"recipients": args.recipients, "date": time.strftime("%Y-%m-%d")}
            for table in ("notify_messages", "inbox_items"):
                r[f"{table} ordered us/row"] = one_table(target, schema, table, rows[table])
                r[f"{table} random us/row"] = one_table(
                    target, schema, table, rows[f"{table}@random"]
                )
            for random in (False, True):
                us, wal = deliveries(target, schema, rows, random, args.commit)
                kind = "random" if random else "ordered"
                r[f"delivery {kind} us"], r[f"delivery {kind} WAL KiB"] = us, wal
            print(json.dumps(r), file=sys.stderr)
            results.append(r)
    if args.out:
        with args.out.with_suffix(".jsonl").open("a") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")
        args.out.write_text(report(results, args, sent["deliveries_per_s"]))


def report(results: list[dict[str, Any]], args: argparse.Namespace, rate: float) -> str:
    lines = [
        "# SQLite's writes of an in-app delivery",
        "",
        f"`bench/row_writes.py --recipients {args.recipients} --commit {args.commit}`, measured "
        f"{time.strftime('%Y-%m-%d')} on this machine. The send that made the rows ran at "
        f"{rate:,.0f} in-app deliveries/s. Rows written again in plain `sqlite3` with the "
        "engine's settings; ordered: the ids as the code makes them, random: 0.1.0's "
        "SHA-256 keys for the messages and inbox items.",
        "",
        "| round | message us/row ordered / random | inbox item us/row ordered / random "
        f"| a delivery's five rows, {args.commit} a transaction, us ordered / random "
        "| WAL KiB per delivery ordered / random |",
        "|---|---|---|---|---|",
    ]
    for n, r in enumerate(results, 1):
        lines.append(
            f"| {n} | {r['notify_messages ordered us/row']:.1f} / "
            f"{r['notify_messages random us/row']:.1f} | {r['inbox_items ordered us/row']:.1f} / "
            f"{r['inbox_items random us/row']:.1f} | {r['delivery ordered us']:.1f} / "
            f"{r['delivery random us']:.1f} | {r['delivery ordered WAL KiB']:.1f} / "
            f"{r['delivery random WAL KiB']:.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
