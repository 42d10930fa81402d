"""Long polling, for clients that can hold neither a WebSocket nor an event stream.

`POST /connection/poll` with `{"token", "channels": [...], "cursor"?, "timeout"?}` (or `GET`
with the query `token`, `channel` (repeatable), `cursor`, `timeout`). Each poll is a short
gateway connection (the SSE `Bridge`): authenticated, subscribed and recovered exactly like a
WebSocket client, then closed. The answer::

    {"events": [{"channel", "offset", "data"}, ...], "recovered": true, "cursor": "..."}

- without a cursor: at once, no events, the cursor of the channels' current tops;
- with a cursor: the publications since it, at once if there are any; otherwise the request
  is held until the first publication arrives or `timeout` seconds pass (default 25 +-10%,
  at most 60), then answered with what arrived (or none and the same cursor);
- if history no longer covers a channel's gap (new epoch, or trimmed): no events,
  `"recovered": false`, `"channels": {channel: {"epoch", "offset"}}` for those channels, and
  a cursor at their new top (the other channels stay where they were): reload their state.

Pass the `cursor` back on the next poll, even when empty (only ephemeral channels): nothing is
lost or repeated between polls. Channels default to those of the cursor. Errors are
problem+json, as for SSE.
"""

from __future__ import annotations

import asyncio
import random
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from tidings.core.sse import decode_cursor, encode_cursor
from tidings.errors import InvalidInput
from tidings.transports.sse import Bridge, Event, advance

DEFAULT_TIMEOUT = 25.0
JITTER = 0.1
MAX_TIMEOUT = 60.0
MAX_CHANNELS = 1024

router = APIRouter(tags=["realtime"])


class PollIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = ""
    channels: list[str] = Field(default_factory=list, max_length=MAX_CHANNELS)
    cursor: str | None = None  # absent: answer at once; "" (no positioned channel): wait
    timeout: float | None = Field(default=None, ge=0, description="Seconds, at most 60")


@router.post("/connection/poll")
async def poll(request: Request, body: PollIn) -> Response:
    """Publications since the cursor, waiting for the next ones if there are none yet."""
    return await _poll(request, body.token, body.channels, body.cursor, body.timeout)


@router.get("/connection/poll")
async def poll_get(
    request: Request,
    token: str = "",
    channel: Annotated[list[str] | None, Query(max_length=MAX_CHANNELS)] = None,
    cursor: str | None = None,
    wait: Annotated[float | None, Query(alias="timeout", ge=0)] = None,
) -> Response:
    """`POST /connection/poll` with query parameters."""
    return await _poll(request, token, channel or [], cursor, wait)


async def _poll(
    request: Request, token: str, channels: list[str], cursor: str | None, wait: float | None
) -> Response:
    since = decode_cursor(cursor or "")
    channels = channels or list(since)
    if not channels:
        raise InvalidInput("name at least one channel", field="channels")
    bridge = Bridge(request.app.state.runtime.hub, "longpoll")
    await bridge.open(token, channels, since)
    try:
        if bridge.failed:
            failed = {ch: {"epoch": p.epoch, "offset": p.offset} for ch, p in bridge.failed.items()}
            return _answer(bridge, [], recovered=False, channels=failed)
        events = bridge.backlog
        if cursor is not None and not bridge.ended and not _publications(events):
            events = events + await _hold(bridge, request, _wait(wait))
        return _answer(bridge, events)
    finally:
        bridge.client.transport_lost()


def _wait(asked: float | None) -> float:
    if asked is None:
        return DEFAULT_TIMEOUT * random.uniform(1 - JITTER, 1 + JITTER)
    return min(asked, MAX_TIMEOUT)


def _publications(events: list[Event]) -> list[Event]:
    return [e for e in events if e.kind == "publication"]


async def _hold(bridge: Bridge, request: Request, wait: float) -> list[Event]:
    """What arrives until the first publication, the end of the connection, the client
    leaving or `wait` seconds, whichever comes first."""

    async def first() -> list[Event]:
        events: list[Event] = []
        while not bridge.ended and not _publications(events):
            events += await bridge.next()
        return events

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    arrived = asyncio.ensure_future(first())
    tasks = {arrived, asyncio.ensure_future(gone())}
    try:
        await asyncio.wait(tasks, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
        return arrived.result() if arrived.done() else []
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _answer(bridge: Bridge, events: list[Event], **extra: Any) -> Response:
    positions = dict(bridge.start)
    out = []
    for event in events:
        advance(positions, event)
        if event.kind == "publication":
            out.append(
                {"channel": event.channel, "offset": event.offset, "data": event.data.get("data")}
            )
        elif event.kind == "disconnect":
            extra["disconnect"] = event.data
    body = {"events": out, "recovered": True, "cursor": encode_cursor(positions), **extra}
    return Response(
        orjson.dumps(body), media_type="application/json", headers={"Cache-Control": "no-store"}
    )
