"""centrifuge-js in a real browser (Debian's Chromium, driven by Playwright) against a real
`tidings serve` process: the page comes from another origin, connects over WebSocket with a
connection token, subscribes, and receives what the test publishes through POST /v1/events.

Needs the Python package `playwright` (its driver only: the browser is Debian's
/usr/bin/chromium, never one Playwright downloads) and `node`/`npm` for centrifuge-js.
Skipped without them, except under CI=true, where that fails.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_centrifuge_js import TidingsServer, in_ci, install_js_deps, run_server

pytestmark = pytest.mark.e2e

CHROMIUM = Path(os.environ.get("TIDINGS_E2E_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

PAGE = """<!doctype html>
<html>
<head><meta charset="utf-8"><link rel="icon" href="data:,"><title>Tidings e2e</title></head>
<body>
<pre id="log"></pre>
<script src="/centrifuge.js"></script>
<script>
  window.received = [];
  window.events = [];
  window.errors = [];
  const note = (e) => {
    window.events.push(e);
    document.getElementById('log').textContent += JSON.stringify(e) + '\\n';
  };
  // Connects, subscribes to cfg.channel; resolves with the client id once subscribed.
  window.start = async (cfg) => {
    const client = new Centrifuge(cfg.wsUrl, { token: cfg.token, timeout: 5000 });
    window.client = client;
    client.on('connected', (ctx) => note({ event: 'connected', client: ctx.client,
                                          transport: ctx.transport }));
    client.on('disconnected', (ctx) => note({ event: 'disconnected', code: ctx.code,
                                             reason: ctx.reason }));
    client.on('error', (ctx) => window.errors.push(String(ctx.error && ctx.error.message)));
    const sub = client.newSubscription(cfg.channel);
    window.sub = sub;
    sub.on('subscribed', (ctx) => note({ event: 'subscribed', recoverable: ctx.recoverable,
                                        positioned: ctx.positioned,
                                        epoch: ctx.streamPosition && ctx.streamPosition.epoch }));
    sub.on('publication', (ctx) => window.received.push({
      offset: ctx.offset, data: ctx.data, user: ctx.info ? ctx.info.user : null,
    }));
    sub.on('error', (ctx) => window.errors.push(String(ctx.error && ctx.error.message)));
    client.connect();
    sub.subscribe();
    await sub.ready(5000);
    const connected = window.events.find((e) => e.event === 'connected');
    return connected ? connected.client : null;
  };
</script>
</body>
</html>
"""


def require_browser() -> Any:
    """Playwright's sync API, when it and Debian's Chromium are installed."""
    problem = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem = "the Python package `playwright` is not installed (pip install playwright)"
    if problem is None and not CHROMIUM.is_file():
        problem = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    if problem is not None:
        if in_ci():
            pytest.fail(f"{problem} (required under CI=true)", pytrace=False)
        pytest.skip(problem)
    return sync_playwright


class StaticSite:
    """The test page and centrifuge-js' browser build, on a port of their own (so the
    WebSocket to Tidings is cross-origin, as from a real web app)."""

    def __init__(self, bundle: Path) -> None:
        files = {
            "/": ("text/html; charset=utf-8", PAGE.encode()),
            "/centrifuge.js": ("text/javascript; charset=utf-8", bundle.read_bytes()),
        }

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                found = files.get(self.path.split("?", 1)[0])
                if found is None:
                    self.send_error(404)
                    return
                kind, body = found
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def __enter__(self) -> StaticSite:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_playwright = require_browser()
    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def site() -> Iterator[StaticSite]:
    bundle = install_js_deps() / "centrifuge" / "dist" / "centrifuge.js"
    with StaticSite(bundle) as s:
        yield s


@pytest.fixture(scope="module")
def tidings_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TidingsServer]:
    yield from run_server(tmp_path_factory.mktemp("tidings-browser"))


def test_browser_receives_server_side_events(
    browser: Any, site: StaticSite, tidings_server: TidingsServer
) -> None:
    channel = f"chat:browser-{secrets.token_hex(4)}"
    page = browser.new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    try:
        page.goto(site.url)
        token = tidings_server.token("carol")
        cfg = {"wsUrl": tidings_server.ws_url, "token": token, "channel": channel}
        try:
            client_id = page.evaluate("cfg => window.start(cfg)", cfg)
        except Exception as exc:
            pytest.fail(
                f"the page did not subscribe: {exc}\nconsole: {console}\n"
                f"events: {page.evaluate('window.events')}\n"
                f"errors: {page.evaluate('window.errors')}\nserver:\n{tidings_server.output()}"
            )
        assert client_id

        sent = [
            tidings_server.publish(channel, {"n": n, "text": f"héllo {n}"}, type_="e2e.browser")
            for n in range(1, 4)
        ]
        page.wait_for_function("n => window.received.length >= n", arg=len(sent), timeout=10_000)
        page.wait_for_timeout(200)  # room for a duplicate to show up
        received: list[dict[str, Any]] = page.evaluate("window.received")
        events: list[dict[str, Any]] = page.evaluate("window.events")
        errors: list[str] = page.evaluate("window.errors")
    finally:
        page.close()

    detail = json.dumps({"received": received, "events": events, "console": console}, indent=1)
    assert len(received) == len(sent), detail
    offsets = [r["offset"] for r in received]
    assert offsets == list(range(offsets[0], offsets[0] + len(sent))), detail
    assert sorted(r["data"]["event_id"] for r in received) == sorted(sent), detail
    assert sorted(r["data"]["payload"]["n"] for r in received) == [1, 2, 3], detail
    for r in received:
        data = r["data"]
        assert set(data) >= {"event_id", "type", "actor", "payload", "created_at"}, detail
        assert data["type"] == "e2e.browser"
        assert data["payload"]["text"] == f"héllo {data['payload']['n']}"
        assert r["user"] is None  # published by the server, not by a client

    subscribed = [e for e in events if e["event"] == "subscribed"]
    assert len(subscribed) == 1, detail
    assert subscribed[0]["recoverable"] is True
    assert subscribed[0]["positioned"] is True
    assert [e for e in events if e["event"] == "connected"] == [
        {"event": "connected", "client": client_id, "transport": "websocket"}
    ]
    assert not [e for e in events if e["event"] == "disconnected"], detail
    assert errors == [], detail
    assert not [c for c in console if c.startswith(("error", "pageerror"))], detail
