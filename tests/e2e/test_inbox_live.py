"""The inbox's live channel with the official centrifuge-python SDK against a live server:
a subscriber token from the server API opens the gateway, the personal channel delivers the
new item and the counts, and nobody else may subscribe to it."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from centrifuge import (
    Client,
    PublicationContext,
    SubscribedContext,
    SubscriptionEventHandler,
    UnsubscribedContext,
)

from tests.e2e.conftest import Live


class Inbox(SubscriptionEventHandler):
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.subscribed = False
        self.unsubscribed: list[int] = []
        self.changed = asyncio.Event()

    async def on_publication(self, ctx: PublicationContext) -> None:
        self.messages.append(ctx.pub.data)
        self.changed.set()

    async def on_subscribed(self, ctx: SubscribedContext) -> None:
        self.subscribed = True
        self.changed.set()

    async def on_unsubscribed(self, ctx: UnsubscribedContext) -> None:
        self.unsubscribed.append(ctx.code)
        self.changed.set()

    async def until(self, predicate: Any, timeout: float = 5.0) -> None:
        async def wait() -> None:
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(wait(), timeout)


async def test_live_item_and_counts_reach_the_subscribers_channel(live: Live) -> None:
    server = {"Authorization": f"Bearer {live.api_key}"}
    async with httpx.AsyncClient(base_url=live.http_url) as http:
        r = await http.post("/v1/subscribers/alice/token", json={"ttl": 600}, headers=server)
        assert r.status_code == 200, r.text
        token, channel = r.json()["token"], r.json()["channel"]
        assert channel == "inbox:#alice"

        inbox = Inbox()
        client = Client(live.ws_url, token=token)  # the subscriber token opens the gateway
        sub = client.new_subscription(channel, events=inbox)
        intruder_events = Inbox()
        intruder = Client(live.ws_url, token=live.token("mallory"))
        spy = intruder.new_subscription(channel, events=intruder_events)
        await client.connect()
        await intruder.connect()
        try:
            await sub.subscribe()
            await inbox.until(lambda: inbox.subscribed)
            await spy.subscribe()
            await intruder_events.until(lambda: intruder_events.unsubscribed)
            assert intruder_events.unsubscribed == [103]  # permission denied

            r = await http.post(
                "/v1/subscribers/alice/inbox",
                json={"title": "Your order shipped", "event_id": "ev-42", "workflow": "order"},
                headers=server,
            )
            assert r.status_code == 201
            item = r.json()
            await inbox.until(lambda: len(inbox.messages) >= 2)
            assert inbox.messages[0] == {"type": "item", "item": item}
            assert inbox.messages[1] == {"type": "counts", "unread": 1, "unseen": 1}

            # the browser marks it read with the same token: the item and the counts follow
            browser = {"Authorization": f"Bearer {token}"}
            r = await http.post(f"/v1/inbox/items/{item['id']}/read", headers=browser)
            assert r.status_code == 200 and r.json()["read_at"]
            await inbox.until(lambda: len(inbox.messages) >= 4)
            assert inbox.messages[2] == {"type": "item", "item": r.json()}
            assert inbox.messages[3] == {"type": "counts", "unread": 0, "unseen": 0}

            # a retried delivery stores nothing new and pushes no second item
            r = await http.post(
                "/v1/subscribers/alice/inbox",
                json={"title": "Your order shipped", "event_id": "ev-42", "workflow": "order"},
                headers=server,
            )
            assert r.status_code == 200 and r.json()["id"] == item["id"]
            # (per-channel order: a second item would come before these counts)
            await inbox.until(lambda: len(inbox.messages) >= 5)
            assert inbox.messages[4] == {"type": "counts", "unread": 0, "unseen": 0}
            assert intruder_events.messages == []
        finally:
            await client.disconnect()
            await intruder.disconnect()
