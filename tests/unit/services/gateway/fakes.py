"""A `Transport` for gateway unit tests: records what the client connection writes; the test
sets `backlog` (bytes waiting) to pause it."""

from __future__ import annotations

import orjson

from tidings.core.protocol import requests as r
from tidings.services.gateway import EncodedBatch, EncodedPush


class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.backlog = 0
        self.limit = 1000  # the hub's max_buffer_bytes in these tests
        self.closed: r.Close | None = None

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def write_push(self, push: EncodedPush) -> None:
        self.sent.append(push.json)

    def write_batch(self, batch: EncodedBatch) -> None:
        self.sent.extend(push.json for push in batch.pushes)

    @property
    def paused(self) -> bool:
        return self.backlog > self.limit

    def close(self, close: r.Close) -> None:
        self.closed = close

    def pushes(self) -> list[dict]:
        out = []
        for raw in self.sent:
            msg = orjson.loads(raw)
            if "push" in msg and "pub" in msg["push"]:
                out.append(msg["push"])
        return out
