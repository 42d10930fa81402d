"""User presence and typing through the official centrifuge-python SDK: `rpc` reports the
device state and typing; the other subscriber of a presence channel sees both as ephemeral
publications, a contact hears of the change on their personal channel; the server API shows
the user's devices."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from centrifuge import Client, PublicationContext, ReplyError, SubscriptionEventHandler

from tests.api.conftest import make_settings
from tests.e2e.conftest import Live, free_port, serve
from tidings.config import PresenceSettings


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[Live]:
    """A server whose coalesced presence pushes go out within about a second."""
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path}/live.db",
        port=free_port(),
        presence=PresenceSettings(update_interval=1.0, sweep_interval=0.25),
    )
    async for server in serve(settings):
        yield server


class Signals(SubscriptionEventHandler):
    def __init__(self) -> None:
        self.got: list[tuple[int, Any]] = []
        self.changed = asyncio.Event()

    async def on_publication(self, ctx: PublicationContext) -> None:
        self.got.append((ctx.pub.offset, ctx.pub.data))
        self.changed.set()

    async def wait_for(self, kind: str, timeout: float = 8.0, **match: Any) -> dict[str, Any]:
        async def wait() -> dict[str, Any]:
            while True:
                for _, data in self.got:
                    if (
                        isinstance(data, dict)
                        and data.get("type") == kind
                        and all(data.get(k) == v for k, v in match.items())
                    ):
                        return data
                self.changed.clear()
                await self.changed.wait()

        return await asyncio.wait_for(wait(), timeout)


async def test_typing_and_device_state_reach_the_other_subscriber(live: Live) -> None:
    auth = {"Authorization": f"Bearer {live.api_key}"}
    async with httpx.AsyncClient(base_url=live.http_url) as http:
        r = await http.put(
            "/v1/presence/users/alice/contacts", json={"contacts": ["bob"]}, headers=auth
        )
        assert r.status_code == 200, r.text
    alice = Client(live.ws_url, token=live.token("alice"))
    bob = Client(live.ws_url, token=live.token("bob"))
    bob_signals, bob_contacts = Signals(), Signals()
    a_sub = alice.new_subscription("chat:room")
    b_sub = bob.new_subscription("chat:room", events=bob_signals)
    b_personal = bob.new_subscription("presence:#bob", events=bob_contacts)
    await bob.connect()
    await b_sub.subscribe()
    await b_personal.subscribe()
    await alice.connect()
    try:
        # alice's connection is a device: her contact hears she is active
        came = await bob_contacts.wait_for("presence")
        assert came == {"type": "presence", "user": "alice", "status": "active"}
        await a_sub.subscribe()
        result = await alice.rpc("typing", {"channel": "chat:room"})
        assert result.data == {"sent": True}
        typing = await bob_signals.wait_for("typing")
        assert typing == {"type": "typing", "user": "alice", "typing": True, "ttl": 6.0}
        assert all(offset == 0 for offset, _ in bob_signals.got)  # never in history

        state = await alice.rpc("presence.state", {"foreground": False})
        assert state.data == {"status": "idle"}
        change = await bob_signals.wait_for("presence")  # coalesced: at most one per 1 s
        assert change == {"type": "presence", "user": "alice", "status": "idle"}
        assert await bob_contacts.wait_for("presence", status="idle") == change  # and contacts

        async with httpx.AsyncClient(base_url=live.http_url) as http:
            r = await http.get(
                "/v1/presence/users/alice",
                headers={"Authorization": f"Bearer {live.api_key}"},
            )
        body = r.json()
        assert body["status"] == "idle" and body["online"] is True
        assert [d["foreground"] for d in body["devices"]] == [False]

        with pytest.raises(ReplyError) as refused:
            await alice.rpc("typing", {"channel": "orders:1"})  # not subscribed
        assert refused.value.code == 103
        with pytest.raises(ReplyError) as unknown:
            await alice.rpc("no.such.method", {})
        assert unknown.value.code == 104
        with pytest.raises(ReplyError) as bad:
            await alice.rpc("presence.state", {"foreground": "yes"})
        assert bad.value.code == 107
        history = await b_sub.history(limit=-1)
        assert [p.data.get("type") for p in history.publications] == []  # nothing kept
    finally:
        await alice.disconnect()
        await bob.disconnect()
