"""The official JavaScript SDK (centrifuge-js, JSON protocol, on Node) against a real
`tidings serve` process. tests/e2e/js/scenario.mjs: subscribe, publish, presence, history,
join/leave, pings, and recovery after an abnormal disconnect; tests/e2e/js/api.mjs: history
queries, connection token refresh, a private channel. These tests start the server, run the
scripts and check the JSON summary each prints last.

Needs `node` and `npm` (centrifuge-js and ws are installed from tests/e2e/js/package-lock.json
into tests/e2e/js/node_modules when missing): skipped without them, except under CI=true,
where that fails. The server and helpers here are shared with test_browser.py.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

pytestmark = pytest.mark.e2e

JS_DIR = Path(__file__).parent / "js"
SCENARIO = JS_DIR / "scenario.mjs"
API = JS_DIR / "api.mjs"
TIDINGS = Path(sys.executable).parent / "tidings"

CHANNEL_OPTIONS = """\
history_size = 100
history_ttl = "5m"
presence = true
join_leave = true
allow_publish_for_client = true
allow_history_for_client = true
allow_presence_for_client = true
"""


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_tool(name: str, why: str) -> str:
    """The path of `name`; skips the test when it is missing (fails under CI=true)."""
    path = shutil.which(name)
    if path is None:
        message = f"`{name}` is not installed: {why}"
        if in_ci():
            pytest.fail(f"{message} (required under CI=true)", pytrace=False)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def install_js_deps() -> Path:
    """tests/e2e/js/node_modules, installed from package-lock.json when missing or stale."""
    npm = require_tool("npm", "it installs centrifuge-js for the end-to-end tests")
    require_tool("node", "it runs centrifuge-js for the end-to-end tests")
    modules = JS_DIR / "node_modules"
    lock = JS_DIR / "package-lock.json"
    installed = modules / ".package-lock.json"  # npm writes it on every install
    fresh = installed.is_file() and (
        not lock.is_file() or installed.stat().st_mtime >= lock.stat().st_mtime
    )
    if not (fresh and (modules / "centrifuge" / "package.json").is_file()):
        command = "ci" if lock.is_file() else "install"
        done = subprocess.run(
            [npm, command, "--no-audit", "--no-fund", "--ignore-scripts"],
            cwd=JS_DIR,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(f"npm {command} failed in {JS_DIR}:\n{done.stdout}\n{done.stderr}")
    return modules


@dataclass
class TidingsServer:
    """A `tidings serve` subprocess in its own directory, with its own config."""

    root: Path
    port: int = field(default_factory=free_port)
    secret: str = field(default_factory=lambda: secrets.token_hex(32))
    gateway: str = ""  # extra [gateway] options, TOML lines
    proc: subprocess.Popen[bytes] | None = None
    api_key: str = ""

    @property
    def config(self) -> Path:
        return self.root / "tidings.toml"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/connection/websocket"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
        env.update(
            TIDINGS_PORT=str(self.port),
            TIDINGS_CONFIG=str(self.config),
            TIDINGS_LOG_LEVEL="warning",
        )
        return env

    def cli(self, *args: str) -> str:
        """Run `tidings ARGS` beside the server; returns the last line it printed."""
        done = subprocess.run(
            [str(TIDINGS), *args],
            cwd=self.root,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(f"tidings {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout.strip().splitlines()[-1]

    def token(self, user: str, channel: str | None = None, ttl: int | None = None) -> str:
        args = ["token", "create", "--user", user]
        if channel is not None:
            args += ["--channel", channel]
        if ttl is not None:
            args += ["--ttl", str(ttl)]
        return self.cli(*args)

    def start(self) -> None:
        assert len(self.secret) == 64
        (self.root / "var").mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            f'token_secret = "{self.secret}"\n\n'
            f"[gateway]\n{self.gateway}\n"
            f"[gateway.channels.default]\n{CHANNEL_OPTIONS}\n"
            f"[gateway.channels.namespaces.chat]\n{CHANNEL_OPTIONS}"
        )
        self.cli("migrate")
        self.api_key = self.cli("apikey", "create", "--scope", "publish", "--name", "e2e")
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [str(TIDINGS), "serve"],
                cwd=self.root,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"tidings serve exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.http_url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"tidings serve was not ready within 30 s:\n{self.output()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-20000:] if self.log.is_file() else ""

    def publish(self, channel: str, payload: dict[str, Any], type_: str = "e2e") -> str:
        """POST /v1/events to one channel; returns the event id."""
        response = httpx.post(
            f"{self.http_url}/v1/events",
            headers={"Authorization": f"Bearer {self.api_key}"},
            json={"type": type_, "channels": [channel], "payload": payload},
            timeout=10,
        )
        assert response.status_code == 202, response.text
        return str(response.json()["id"])


def run_server(root: Path, gateway: str = "") -> Iterator[TidingsServer]:
    if not TIDINGS.is_file():
        pytest.fail(f"the tidings command is not installed in this venv: {TIDINGS}")
    server = TidingsServer(root, gateway=gateway)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def js_modules() -> Path:
    return install_js_deps()


@pytest.fixture(scope="module")
def tidings_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TidingsServer]:
    # A ping every second or so, to answer within two: the scenario's idle step sees several.
    gateway = "ping_interval = 1\npong_timeout = 2\n"
    yield from run_server(tmp_path_factory.mktemp("tidings-js"), gateway)


def run_node(server: TidingsServer, script: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Run a script of tests/e2e/js; returns the JSON summary it prints last, once it says ok."""
    node = require_tool("node", "it runs centrifuge-js for the end-to-end tests")
    done = subprocess.run(
        [node, str(script), json.dumps(config)],
        cwd=JS_DIR,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    try:
        summary: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        pytest.fail(
            f"{script.name} printed no JSON summary (exit {done.returncode}):\n"
            f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}\nserver:\n{server.output()}"
        )
    if not summary.get("ok"):
        pytest.fail(
            f"{script.name} failed at step {summary.get('step')!r}: {summary.get('error')}\n"
            f"summary: {json.dumps(summary, indent=1)}\n"
            f"stderr (the frames):\n{done.stderr}\nserver:\n{server.output()}"
        )
    assert done.returncode == 0, done.stderr
    return summary


def run_scenario(server: TidingsServer, channel: str, missed: int, idle_ms: int) -> dict[str, Any]:
    config = {
        "wsUrl": server.ws_url,
        "httpUrl": server.http_url,
        "apiKey": server.api_key,
        "channel": channel,
        "user": "alice",
        "token": server.token("alice"),
        "observerToken": server.token("bob"),
        "missed": missed,
        "idleMs": idle_ms,
    }
    return run_node(server, SCENARIO, config)


def test_centrifuge_js_subscribe_publish_presence_history_recover(
    js_modules: Path, tidings_server: TidingsServer
) -> None:
    missed = 7
    channel = f"chat:room-{secrets.token_hex(4)}"
    s = run_scenario(tidings_server, channel, missed, idle_ms=5000)

    # Subscribed to a positioned, recoverable stream.
    first = s["firstSubscribe"]
    assert first["recoverable"] is True
    assert first["positioned"] is True
    assert first["wasRecovering"] is False
    assert first["epoch"]

    # The client's own publication came back to it, with its user.
    own = s["selfPublication"]
    assert own["data"]["kind"] == "self"
    assert own["user"] == "alice"
    assert own["offset"] >= 1

    # Presence: both connections, by user; stats count them.
    users = sorted(p["user"] for p in s["presence"])
    assert users == ["alice", "bob"]
    assert s["clientId"] in {p["client"] for p in s["presence"]}
    assert s["presenceStats"] == {"numClients": 2, "numUsers": 2}

    # History holds the publication, at the same offset and epoch.
    history = s["history"]
    assert [p["offset"] for p in history["publications"]] == [own["offset"]]
    assert history["publications"][0]["data"] == own["data"]
    assert history["offset"] == own["offset"]
    assert history["epoch"] == first["epoch"]

    # The socket was cut abnormally, and the SDK retried while the server was out of reach.
    assert s["disconnect"] == {"code": 1, "reason": "transport closed"}  # centrifuge-js
    assert s["attemptsWhileDisconnected"] >= 1
    assert s["connects"] >= 2
    assert s["reconnectedClientId"] != s["clientId"]

    # Resubscribed from its position, and recovered.
    again = s["resubscribe"]
    assert again["wasRecovering"] is True
    assert again["recovered"] is True
    assert again["epoch"] == first["epoch"]

    # Every publication exactly once, contiguous offsets in order; the missed ones came
    # through the recovery, not live.
    pubs = s["publications"]
    offsets = [p["offset"] for p in pubs]
    assert offsets == list(range(own["offset"], own["offset"] + missed + 2)), offsets
    assert s["recoveredCount"] == missed
    assert [p["recovering"] for p in pubs] == [False] + [True] * missed + [False]
    missed_pubs = pubs[1 : missed + 1]
    assert sorted(p["data"]["payload"]["seq"] for p in missed_pubs) == list(range(1, missed + 1))
    assert {p["data"]["payload"]["kind"] for p in missed_pubs} == {"missed"}
    assert pubs[-1]["data"]["payload"] == {"kind": "after", "seq": missed + 1}
    for p in pubs[1:]:
        assert set(p["data"]) >= {"event_id", "type", "actor", "payload", "created_at"}
        assert p["data"]["type"] == "e2e.js"
    assert sorted(p["data"]["event_id"] for p in missed_pubs) == sorted(s["acceptedEventIds"])

    # The observer, connected all along, saw the same stream live, in the same order.
    assert [(p["offset"], p["data"]) for p in s["observerPublications"]] == [
        (p["offset"], p["data"]) for p in pubs
    ]
    # Join and leave, as the observer (subscribed with join_leave) saw them.
    alice_joins = [j["client"] for j in s["observerJoins"] if j["user"] == "alice"]
    alice_leaves = [x["client"] for x in s["observerLeaves"] if x["user"] == "alice"]
    assert alice_joins == [s["clientId"], s["reconnectedClientId"]]
    assert alice_leaves == [s["clientId"]]

    # Idle for 5 s with ping_interval = 1 and 2 s to answer: the SDK answered every ping.
    # (The server checks its deadlines once a second, so pings come every 1 to 2 s.)
    idle = s["idle"]
    assert idle["pings"] >= 2, idle
    assert idle["pongs"] == idle["pings"], idle
    assert (idle["closes"], idle["reconnects"], idle["state"]) == (0, 0, "connected"), idle

    assert s["errors"] == []
    # The user's client reported only the dials that failed while it was cut off.
    assert set(s["userClientErrors"]) <= {"transport closed"}


@pytest.fixture(scope="module")
def api_summary(js_modules: Path, tidings_server: TidingsServer) -> dict[str, Any]:
    """tests/e2e/js/api.mjs, run once: history queries, token refresh, a private channel."""
    suffix = secrets.token_hex(4)
    private_channel = f"chat:$private-{suffix}"
    config: dict[str, Any] = {
        "wsUrl": tidings_server.ws_url,
        "channel": f"chat:history-{suffix}",
        "privateChannel": private_channel,
        "subToken": tidings_server.token("erin", channel=private_channel),
        "freshToken": tidings_server.token("erin", ttl=3600),
    }
    # Last, so that little of its life is spent before the client connects.
    token = tidings_server.token("erin", ttl=5)
    config["token"] = token
    config["tokenExpiresAt"] = jwt.decode(token, options={"verify_signature": False})["exp"]
    return run_node(tidings_server, API, config)


def test_centrifuge_js_history_forward_and_position(api_summary: dict[str, Any]) -> None:
    h = api_summary["history"]
    epoch = h["position"]["epoch"]
    assert epoch
    assert h["position"] == {"offsets": [], "offset": 5, "epoch": epoch}
    assert h["all"] == {"offsets": [1, 2, 3, 4, 5], "offset": 5, "epoch": epoch}
    assert h["first2"] == {"offsets": [1, 2], "offset": 5, "epoch": epoch}
    assert h["since2"] == {"offsets": [3, 4, 5], "offset": 5, "epoch": epoch}
    assert h["sinceTop"] == {"offsets": [], "offset": 5, "epoch": epoch}
    assert h["wrongEpoch"] == {"error": 112}  # unrecoverable position


def test_centrifuge_js_history_reverse(api_summary: dict[str, Any]) -> None:
    h = api_summary["history"]
    # Centrifuge: no `since` -> the newest `limit`, newest first; `since` -> older than it.
    assert h["latest2"]["offsets"] == [5, 4]
    assert h["before4"]["offsets"] == [3, 2, 1]


def test_centrifuge_js_token_refresh_and_private_channel(api_summary: dict[str, Any]) -> None:
    # The connection token expires: the server says when, the SDK refreshes in place.
    assert api_summary["connectReply"]["expires"] is True
    assert 1 <= api_summary["connectReply"]["ttl"] <= 5
    r = api_summary["refresh"]
    assert r["tokenCalls"] == 1
    assert r["refreshCommands"] == 1
    assert r["reply"]["client"] == r["clientId"]
    assert r["reply"]["expires"] is True
    assert r["reply"]["ttl"] > 3000
    assert r["state"] == "connected"
    assert r["subscriptions"] == ["subscribed", "subscribed"]
    assert not [e for e in api_summary["events"] if e["event"] != "connecting"]

    # A `$` channel: subscribed with the subscription token getToken handed over.
    p = api_summary["private"]
    assert p == {"state": "subscribed", "subTokenCalls": 1, "history": [1]}
