#!/usr/bin/env python3
"""Fan-out benchmark: Tidings beside the team's peer servers, in one run.

Same method as ../shared/bench/fanout/bench.py (its servers are run from there, unchanged):
for each (server, N) start the server pinned to core 0 (`taskset -c 0`), wait for its port,
run the generator (bench/fanout/gen.js = the shared gen.js plus a Centrifuge protocol mode)
pinned to core 1, append the JSON result to --out, stop the server by its PID.

Tidings runs the full protocol: `tidings migrate` + `tidings serve` from a fresh temp dir
(its ./var/tidings.db, worker enabled), a connection JWT from `tidings token create`, a
durable namespace (offsets + history 100 / 5m), server pings every 25 s answered by the
generator, publishes as client `publish` commands from the generator's publisher connection.
Peers run with keepalive off, as in the shared summary_rep2 (`--keepalive off`).

Usage (shell with `ulimit -n` raised; the script also raises it to the hard limit):
  bench/fanout/.venv/bin/python bench/fanout/run.py --servers tidings,picows-raw,node-ws,py-websockets \
      --ns 1000,5000,10000 --m 200 --trials 3 --lock 50 --trial-timeout 300 --deadline 1200 \
      --keepalive off --out bench/results/fanout.jsonl
  # idle memory only (connect N, hold S seconds with pings flowing, no traffic):
  ... run.py --servers tidings --ns 10000 --idle-only 60 --out bench/results/fanout_idle.jsonl
  # profile Tidings during the burst trials (py-spy, pinned to the generator's core):
  ... run.py --servers tidings --ns 10000 --profile burst --profile-out bench/results/profile
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
SHARED = os.path.abspath(os.path.join(REPO, "..", "shared", "bench", "fanout"))
SV = os.path.join(SHARED, "servers")
PY = os.path.join(HERE, ".venv", "bin", "python")  # peers' venv (shared README recipe)
PYSPY = os.path.join(HERE, ".venv", "bin", "py-spy")
TIDINGS = os.path.join(REPO, ".venv", "bin", "tidings")
NODE_PATH = os.path.join(HERE, "node_modules")  # `ws` for srv_ws.js (shared dir has none)
GEN = os.path.join(HERE, "gen.js")
LOGS = os.path.join(HERE, "logs")
UVI = [
    PY,
    "-m",
    "uvicorn",
    "--app-dir",
    SV,
    "--host",
    "127.0.0.1",
    "--loop",
    "uvloop",
    "--http",
    "httptools",
    "--log-level",
    "warning",
    "--no-access-log",
    "--backlog",
    "4096",
]
SIO_PATH = "/socket.io/?EIO=4&transport=websocket"
TIDINGS_PORT = 9010

SERVERS = {
    # name: (argv, port, proto, path) -- identical to the shared bench.py
    "py-websockets": ([PY, f"{SV}/srv_websockets.py", "--port", "9001"], 9001, "ws", "/"),
    "py-socketio": (
        UVI + ["--port", "9002", "--ws", "auto", "srv_socketio_py:app"],
        9002,
        "sio",
        SIO_PATH,
    ),
    "fastapi-naive": (
        UVI + ["--port", "9003", "--ws", "auto", "srv_fastapi_naive:app"],
        9003,
        "ws",
        "/",
    ),
    "node-ws": (["node", f"{SV}/srv_ws.js", "9004"], 9004, "ws", "/"),
    "node-socketio": (["node", f"{SV}/srv_socketio.js", "9005"], 9005, "sio", SIO_PATH),
    "picows-raw": ([PY, f"{SV}/srv_picows.py", "--port", "9006", "--mode", "raw"], 9006, "ws", "/"),
    "picows-send": (
        [PY, f"{SV}/srv_picows.py", "--port", "9007", "--mode", "send"],
        9007,
        "ws",
        "/",
    ),
    "tidings": ([TIDINGS, "serve"], TIDINGS_PORT, "centrifuge", "/connection/websocket"),
}

TIDINGS_TOML = """\
token_secret = "{secret}"
log_level = "warning"

[worker]
enabled = true

[gateway]
allow_anonymous = true
ping_interval = {ping}
commands_per_second = {cps}
max_messages_in_frame = {frame}

[gateway.channels.default]
history_size = 100
history_ttl = "5m"
allow_publish_for_client = true
"""


def wait_port(port: int, proc: subprocess.Popen, limit: float = 30.0) -> bool:
    t0 = time.time()
    while time.time() - t0 < limit:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


def tidings_setup(a: argparse.Namespace) -> tuple[str, dict[str, str], str, str]:
    """Fresh temp dir with config, migrated database and a connection token."""
    d = tempfile.mkdtemp(prefix="tidings-fanout-")
    toml = TIDINGS_TOML.format(
        secret=secrets.token_hex(32), ping=a.tidings_ping, cps=a.tidings_cps, frame=a.tidings_frame
    )
    cfg = os.path.join(d, "tidings.toml")
    with open(cfg, "w") as fh:
        fh.write(toml)
    env = dict(
        os.environ, TIDINGS_PORT=str(TIDINGS_PORT), TIDINGS_LOG_LEVEL="warning", TIDINGS_CONFIG=cfg
    )
    subprocess.run([TIDINGS, "migrate"], cwd=d, env=env, check=True, capture_output=True)
    out = subprocess.run(
        [TIDINGS, "token", "create", "--user", "bench"],
        cwd=d,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    token = out.strip().splitlines()[-1].strip()
    return d, env, token, toml


def core_busy(interval: float = 2.0) -> list[float]:
    """Busy fraction of each core over `interval` seconds (/proc/stat)."""

    def read() -> list[list[int]]:
        with open("/proc/stat") as fh:
            return [
                list(map(int, ln.split()[1:9])) for ln in fh if ln[:3] == "cpu" and ln[3].isdigit()
            ]

    a = read()
    time.sleep(interval)
    b = read()
    out = []
    for x, y in zip(a, b):
        d = [j - i for i, j in zip(x, y)]
        tot = max(1, sum(d))
        out.append(round(1 - (d[3] + d[4]) / tot, 3))
    return out


def wait_quiet(max_wait: float, threshold: float) -> dict:
    """The machine may be shared: wait until every core is below `threshold` busy."""
    t0 = time.time()
    calm = 0  # consecutive quiet 2-second windows; ask for 3 in a row
    busy = core_busy()
    while time.time() - t0 < max_wait:
        busy = core_busy()
        calm = calm + 1 if max(busy) <= threshold else 0
        if calm >= 3:
            break
    return {
        "quiet_wait_s": round(time.time() - t0, 1),
        "pre_busy": busy,
        "quiet": max(busy) <= threshold,
    }


def foreign_max(rec: dict) -> float:
    g = rec.get("gen") or {}
    ts = list(g.get("trials", [])) + ([g["lockstep"]] if g.get("lockstep") else [])
    return max([((t.get("foreign") or {}).get("cpu") or 0) for t in ts] or [0])


def git_rev() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", REPO, "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        return rev + ("+dirty-src" if dirty else "")
    except OSError:
        return "?"


def run_gen(cmd: list[str], a: argparse.Namespace, spid: int, name: str, n: int, rec: dict) -> None:
    """Run the generator; in --profile mode attach py-spy to the server for one phase."""
    if not a.profile:
        g = subprocess.run(cmd, capture_output=True, text=True, timeout=a.deadline + 60, cwd=HERE)
        stdout, stderr, rc = g.stdout, g.stderr, g.returncode
    else:
        os.makedirs(os.path.dirname(os.path.abspath(a.profile_out)) or ".", exist_ok=True)
        g = subprocess.Popen(
            cmd + ["--phases", "1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=HERE,
        )
        start_at = {"burst": "phase:trials", "lockstep": "phase:lockstep"}[a.profile]
        stop_at = {"burst": "phase:lockstep", "lockstep": "phase:done"}[a.profile]
        spy: list[subprocess.Popen] = []
        err_lines: list[str] = []
        out_holder: list[str] = []
        t_out = threading.Thread(target=lambda: out_holder.append(g.stdout.read()), daemon=True)
        t_out.start()
        for line in g.stderr:
            err_lines.append(line)
            tag = line.strip()
            if tag == start_at and not spy and a.profile_tool == "perf":
                # whole core 0 (server + the loopback softirq work it triggers), all code
                spy.append(
                    subprocess.Popen(
                        [
                            "taskset",
                            "-c",
                            "1",
                            "perf",
                            "record",
                            "-C",
                            "0",
                            "-F",
                            str(a.profile_rate),
                            "-o",
                            f"{a.profile_out}.perf.data",
                        ]
                        + (["-g"] if a.profile_native else []),
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                        text=True,
                    )
                )
                rec["profile_started"] = time.time()
            elif tag == start_at and not spy:
                for fmt, ext, extra in (("raw", "txt", []), ("flamegraph", "svg", [])):
                    if fmt == "flamegraph" and not a.profile_svg:
                        continue
                    out = f"{a.profile_out}.{ext}"
                    spy.append(
                        subprocess.Popen(
                            [
                                "taskset",
                                "-c",
                                "1",
                                PYSPY,
                                "record",
                                "--pid",
                                str(spid),
                                "--rate",
                                str(a.profile_rate),
                                "--format",
                                fmt,
                                "-o",
                                out,
                            ]
                            + (["--native"] if a.profile_native else [])
                            + (["--idle"] if a.profile_idle else [])
                            + (["--nonblocking"] if a.profile_nonblocking else [])
                            + extra,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE,
                            text=True,
                        )
                    )
                rec["profile_started"] = time.time()
            elif tag == stop_at and spy:
                for p in spy:
                    p.send_signal(signal.SIGINT)
                for p in spy:
                    try:
                        _, perr = p.communicate(timeout=60)
                        rec.setdefault("profile_stderr", []).append(perr[-500:])
                    except subprocess.TimeoutExpired:
                        p.kill()
                rec["profile_stopped"] = time.time()
                spy = []
        rc = g.wait(timeout=a.deadline + 60)
        t_out.join(10)
        stdout, stderr = (out_holder[0] if out_holder else ""), "".join(err_lines)
    out = stdout.strip().splitlines()
    rec["gen"] = json.loads(out[-1]) if out else None
    rec["gen_rc"] = rc
    if stderr.strip():
        rec["gen_stderr"] = stderr.strip()[-2000:]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--servers", required=True)
    ap.add_argument("--ns", default="1000,5000,10000")
    ap.add_argument("--m", type=int, default=200)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--lock", type=int, default=50)
    ap.add_argument("--trial-timeout", type=int, default=300)
    ap.add_argument("--deadline", type=int, default=1200, help="per generator run, seconds")
    ap.add_argument(
        "--total-deadline",
        type=int,
        default=0,
        help="stop starting new (server, N) runs after this many seconds (0: none)",
    )
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "results", "fanout.jsonl"))
    ap.add_argument("--tag", default="")
    ap.add_argument(
        "--keepalive",
        choices=["default", "off"],
        default="off",
        help="peers' keepalive (Tidings always pings, see --tidings-ping)",
    )
    ap.add_argument("--tidings-ping", type=float, default=25.0)
    ap.add_argument(
        "--tidings-cps",
        type=float,
        default=0.0,
        help="gateway.commands_per_second (default 50/s burst 100 would refuse "
        "a 200-message burst from one publisher; 0 = no limit)",
    )
    ap.add_argument(
        "--tidings-frame",
        type=int,
        default=16,
        help="gateway.max_messages_in_frame (1: every publication in its own frame)",
    )
    ap.add_argument(
        "--gen-parse",
        choices=["json", "fast"],
        default=None,
        help="centrifuge generator: JSON.parse every push (default) or byte search",
    )
    ap.add_argument(
        "--gc-log",
        default=None,
        help="Tidings: log its GC collections to GC_LOG-N.log (instrument/sitecustomize.py)",
    )
    ap.add_argument(
        "--gc-sample", type=float, default=0, help="with --gc-log: log tracked objects every S s"
    )
    ap.add_argument(
        "--gc-freeze",
        type=float,
        default=0,
        help="with --gc-log: experiment, gc.freeze() every S s",
    )
    ap.add_argument(
        "--idle-only",
        type=int,
        default=0,
        help="connect N, hold this many seconds, report RSS; no traffic",
    )
    ap.add_argument(
        "--quiet-threshold",
        type=float,
        default=0.15,
        help="before each run wait until every core is below this busy fraction",
    )
    ap.add_argument("--quiet-wait", type=float, default=900, help="max seconds to wait for quiet")
    ap.add_argument(
        "--foreign-retry",
        type=float,
        default=0.15,
        help="re-run a (server, N) (up to --foreign-retries times) if another process used more than this many "
        "cores during any trial; the first record is kept, marked discarded",
    )
    ap.add_argument("--foreign-retries", type=int, default=6)
    ap.add_argument("--profile", choices=["burst", "lockstep"], default=None)
    ap.add_argument("--profile-out", default=os.path.join(REPO, "bench", "results", "profile"))
    ap.add_argument("--profile-rate", type=int, default=100)
    ap.add_argument("--profile-native", action="store_true")
    ap.add_argument("--profile-svg", action="store_true")
    ap.add_argument("--profile-tool", choices=["py-spy", "perf"], default="py-spy")
    ap.add_argument("--profile-idle", action="store_true", help="py-spy --idle (count epoll waits)")
    ap.add_argument("--profile-nonblocking", action="store_true")
    a = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    clk = os.sysconf("SC_CLK_TCK")
    os.makedirs(LOGS, exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    t_start = time.time()
    rev = git_rev()
    for name in a.servers.split(","):
        argv, port, proto, path = SERVERS[name]
        todo = [int(x) for x in a.ns.split(",")]
        retried: dict[int, int] = {}
        while todo:
            n = todo.pop(0)
            if a.total_deadline and time.time() - t_start > a.total_deadline:
                print(f"total deadline hit, skipping {name} N={n}", flush=True)
                continue
            log = open(os.path.join(LOGS, f"{name}-{n}{'-' + a.tag if a.tag else ''}.log"), "w")
            env = dict(os.environ, NODE_PATH=NODE_PATH)
            cwd = HERE
            tdir, token, toml = None, "", None
            run_argv = list(argv)
            quiet = wait_quiet(a.quiet_wait, a.quiet_threshold)
            if name == "tidings":
                tdir, env, token, toml = tidings_setup(a)
                cwd = tdir
                if a.gc_log:
                    env["PYTHONPATH"] = os.path.join(HERE, "instrument")
                    env["BENCH_GC_LOG"] = os.path.abspath(f"{a.gc_log}-{n}.log")
                    if a.gc_sample:
                        env["BENCH_GC_SAMPLE"] = str(a.gc_sample)
                        env["BENCH_GC_TYPES"] = "1"
                    if a.gc_freeze:
                        env["BENCH_GC_FREEZE"] = str(a.gc_freeze)
            elif a.keepalive == "off":
                env["BENCH_KEEPALIVE"] = "off"
                if "uvicorn" in run_argv:
                    run_argv = run_argv[:-1] + ["--ws-ping-interval", "600"] + run_argv[-1:]
            proc = subprocess.Popen(
                ["taskset", "-c", "0"] + run_argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
            )
            rec = {
                "server": name,
                "n": n,
                "tag": a.tag,
                "argv": run_argv,
                "server_pid": proc.pid,
                "keepalive": "on (tidings ping %gs)" % a.tidings_ping
                if name == "tidings"
                else a.keepalive,
                "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "tidings_rev": rev,
                **quiet,
            }
            if toml:
                rec["tidings_toml"] = toml.replace(
                    toml.splitlines()[0], 'token_secret = "<random>"'
                )
            try:
                if not wait_port(port, proc):
                    rec["error"] = "server did not start"
                    continue
                time.sleep(1.0)
                rec["server_affinity"] = subprocess.run(
                    ["taskset", "-cp", str(proc.pid)], capture_output=True, text=True
                ).stdout.strip()
                cmd = [
                    "taskset",
                    "-c",
                    "1",
                    "node",
                    GEN,
                    "--url",
                    f"ws://127.0.0.1:{port}{path}",
                    "--proto",
                    proto,
                    "--n",
                    str(n),
                    "--m",
                    str(a.m),
                    "--trials",
                    str(a.trials),
                    "--lock",
                    str(a.lock),
                    "--pid",
                    str(proc.pid),
                    "--clktck",
                    str(clk),
                    "--trial-timeout",
                    str(a.trial_timeout),
                    "--deadline",
                    str(a.deadline),
                ]
                if token:
                    cmd += ["--token", token]
                if a.gen_parse and proto == "centrifuge":
                    cmd += ["--parse", a.gen_parse]
                if a.idle_only:
                    cmd += ["--idle-only", str(a.idle_only)]
                rec["gen_cmd"] = [c if c != token else "<jwt>" for c in cmd]
                t0 = time.time()
                try:
                    run_gen(cmd, a, proc.pid, name, n, rec)
                except subprocess.TimeoutExpired:
                    rec["error"] = "generator timeout"
                rec["wall_s"] = round(time.time() - t0, 1)
            finally:
                rec["server_alive_at_end"] = proc.poll() is None
                stop(proc)
                log.close()
                if tdir:
                    shutil.rmtree(tdir, ignore_errors=True)
                fm = foreign_max(rec)
                rec["foreign_cpu_max"] = fm
                if fm > a.foreign_retry and retried.get(n, 0) < a.foreign_retries and not a.profile:
                    rec["discarded"] = f"other processes used {fm} cores during a trial; re-run"
                    retried[n] = retried.get(n, 0) + 1
                    todo.insert(0, n)
                with open(a.out, "a") as fh:
                    fh.write(json.dumps(rec) + "\n")
                g_ = rec.get("gen") or {}
                tr = g_.get("trials", [])
                dps = sorted(t["deliveries_per_s"] for t in tr)
                lk = g_.get("lockstep") or {}
                extra = ""
                if g_.get("centrifuge"):
                    c = g_["centrifuge"]
                    extra = (
                        f" pings={c['pings']} acks={c['pub_acks']} pub_err={c['pub_errors']} "
                        f"gaps={c['offset_gaps']} dups={c['offset_dups']} close={c['close_codes']}"
                    )
                extra += f" foreign={fm} quiet_wait={quiet['quiet_wait_s']}s" + (
                    " DISCARDED" if rec.get("discarded") else ""
                )
                print(
                    f"{name:16s} N={n:6d} conn={g_.get('connected')} dps={dps} "
                    f"lock_p50/p99={lk.get('p50_ms')}/{lk.get('p99_ms')} kb/conn={g_.get('kb_per_conn')} "
                    f"err={rec.get('error') or g_.get('errors')}{extra}",
                    flush=True,
                )
                time.sleep(2)


if __name__ == "__main__":
    sys.exit(main())
