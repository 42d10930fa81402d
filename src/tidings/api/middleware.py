"""ASGI middleware: request body limit and Prometheus request metrics."""

from __future__ import annotations

import time

import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tidings.api.problems import CONTENT_TYPE, PROBLEM_BASE


async def _send_413(send: Send, limit: int) -> None:
    body = orjson.dumps(
        {
            "type": PROBLEM_BASE + "content-too-large",
            "title": "Content too large",
            "status": 413,
            "detail": f"request body exceeds {limit} bytes",
        }
    )
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", CONTENT_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Rejects bodies over `limit` bytes with 413, by Content-Length or while streaming, before
    the application reads them whole."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = self.limit + 1
                if declared > self.limit:
                    await _send_413(send, self.limit)
                    return
        seen = 0
        started = False
        rejected = False

        async def limited_receive() -> Message:
            nonlocal seen, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit and not started:
                    # Answer now; the application sees a disconnected client and whatever it
                    # sends afterwards is dropped.
                    rejected = True
                    await _send_413(send, self.limit)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if rejected:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, limited_receive, guarded_send)


class Metrics:
    """Counts requests and observes their latency by route template (not raw path, so ids
    don't explode the label set)."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter(
            "tidings_http_requests_total",
            "HTTP requests by method, route and status",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "tidings_http_request_duration_seconds",
            "HTTP request latency by method and route",
            ["method", "route"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "GET")
            self.requests.labels(method, template, str(status)).inc()
            self.latency.labels(method, template).observe(time.perf_counter() - start)
