"""Python SDK for the Tidings server API: send and cancel events and read why each of their
messages was sent, held, suppressed or failed; manage subscribers, topics and workflows;
report message statuses; publish to channels, read history and presence, disconnect users.

    async with Tidings("http://127.0.0.1:8000", api_key) as t:
        await t.put_subscriber("ana", email="ana@example.com", timezone="Europe/Lisbon")
        accepted = await t.send_event("order.shipped", recipients=["ana"], payload={...},
                                      idempotency_key="order-42-shipped")
        report = await t.notifications(accepted["id"])   # runs, messages, trail
        pub = await t.publish("chat:room", {"text": "hi"})

Every non-2xx answer raises `TidingsApiError` carrying the problem+json document.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

__all__ = ["Tidings", "TidingsApiError"]


class TidingsApiError(Exception):
    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        super().__init__(f"{status}: {problem.get('detail') or problem.get('title')}")
        self.status = status
        self.problem = problem


class Tidings:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
            transport=transport,
        )

    async def __aenter__(self) -> Tidings:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        r = await self._http.request(method, path, **kwargs)
        if r.status_code >= 400:
            try:
                problem = r.json()
            except ValueError:
                problem = {"title": r.reason_phrase, "detail": r.text}
            raise TidingsApiError(r.status_code, problem)
        return r.json() if r.content else None

    async def _doc(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """`_call` for the answers that are one JSON object."""
        result: dict[str, Any] = await self._call(method, path, **kwargs)
        return result

    # --- events ----------------------------------------------------------------------------

    async def send_event(
        self,
        type: str,
        *,
        payload: dict[str, Any] | None = None,
        recipients: Iterable[str] = (),
        topic: str | None = None,
        channels: Iterable[str] = (),
        actor: str | None = None,
        priority: str = "transactional",
        send_at: datetime | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Accept an event (202). `idempotency_key` (your id for the event) makes a retried
        call return the first result instead of a second event."""
        body: dict[str, Any] = {
            "type": type,
            "payload": payload or {},
            "recipients": list(recipients),
            "channels": list(channels),
            "priority": priority,
        }
        if topic is not None:
            body["topic"] = topic
        if actor is not None:
            body["actor"] = actor
        if send_at is not None:
            body["send_at"] = send_at.isoformat()
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return await self._doc("POST", "/v1/events", json=body, headers=headers)

    async def get_event(self, event_id: str) -> dict[str, Any]:
        return await self._doc("GET", f"/v1/events/{_seg(event_id)}")

    async def cancel_event(self, event_id: str) -> dict[str, Any]:
        """Stop an event: held, delayed or waiting runs end `cancelled`, their queued
        messages are not sent (409 once it is cancelled)."""
        return await self._doc("POST", f"/v1/events/{_seg(event_id)}/cancel")

    # --- notifications ---------------------------------------------------------------------

    async def notifications(
        self, event_id: str, *, cursor: str | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        """A page of the event's recipients: `{counts, runs, messages, trail, next_cursor}`,
        why each message was sent, held, suppressed or failed."""
        return await self._doc(
            "GET",
            f"/v1/events/{_seg(event_id)}/notifications",
            params=_page(cursor, limit),
        )

    async def subscriber_notifications(
        self, subscriber_id: str, *, cursor: str | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        """The subscriber's trail (oldest first) and messages (newest first), paged."""
        return await self._doc(
            "GET",
            f"/v1/subscribers/{_seg(subscriber_id)}/notifications",
            params=_page(cursor, limit),
        )

    async def message(self, message_id: str) -> dict[str, Any]:
        return await self._doc("GET", f"/v1/messages/{_seg(message_id)}")

    async def report_status(
        self, message_id: str, status: str, *, at: float | None = None
    ) -> dict[str, Any]:
        """Report delivery (delivered, bounced, failed) or engagement (seen, read, clicked,
        archived) for a message; runs waiting for it wake."""
        body: dict[str, Any] = {"status": status}
        if at is not None:
            body["at"] = at
        return await self._doc("POST", f"/v1/messages/{_seg(message_id)}/status", json=body)

    async def put_workflow(self, key: str, definition: dict[str, Any]) -> dict[str, Any]:
        """Define or replace the workflow of event type `key` (see docs/workflows.md)."""
        return await self._doc("PUT", f"/v1/workflows/{_seg(key)}", json=definition)

    async def get_workflow(self, key: str) -> dict[str, Any]:
        return await self._doc("GET", f"/v1/workflows/{_seg(key)}")

    async def delete_workflow(self, key: str) -> None:
        await self._call("DELETE", f"/v1/workflows/{_seg(key)}")

    # --- subscribers and topics ------------------------------------------------------------

    async def put_subscriber(self, subscriber_id: str, **fields: Any) -> dict[str, Any]:
        """Create or replace a subscriber: `email`, `phone`, `locale`, `timezone`, `data`,
        `devices`, `webpush`."""
        return await self._doc("PUT", f"/v1/subscribers/{_seg(subscriber_id)}", json=fields)

    async def update_subscriber(self, subscriber_id: str, **fields: Any) -> dict[str, Any]:
        """Change the given fields only (`data` merges key by key; a key set to None goes)."""
        return await self._doc("PATCH", f"/v1/subscribers/{_seg(subscriber_id)}", json=fields)

    async def get_subscriber(self, subscriber_id: str) -> dict[str, Any]:
        return await self._doc("GET", f"/v1/subscribers/{_seg(subscriber_id)}")

    async def delete_subscriber(self, subscriber_id: str) -> int:
        """Erase the subscriber (profile, devices, memberships, inbox); how many inbox items
        went."""
        result = await self._call("DELETE", f"/v1/subscribers/{_seg(subscriber_id)}")
        return int(result["inbox_items_deleted"])

    async def subscriber_token(self, subscriber_id: str, *, ttl: float | None = None) -> str:
        """A short-lived token for the subscriber's browser: the inbox API and the gateway."""
        body = {"ttl": ttl} if ttl is not None else {}
        result = await self._call("POST", f"/v1/subscribers/{_seg(subscriber_id)}/token", json=body)
        return str(result["token"])

    async def create_topic(self, key: str, name: str | None = None) -> dict[str, Any]:
        """A new topic (409 when the key is taken)."""
        body: dict[str, Any] = {"key": key}
        if name is not None:
            body["name"] = name
        return await self._doc("POST", "/v1/topics", json=body)

    async def add_to_topic(self, key: str, subscriber_ids: Iterable[str]) -> int:
        """Add subscribers to a topic (idempotent); how many were new."""
        result = await self._call(
            "POST",
            f"/v1/topics/{_seg(key)}/subscribers",
            json={"subscribers": list(subscriber_ids)},
        )
        return int(result["added"])

    async def remove_from_topic(self, key: str, subscriber_ids: Iterable[str]) -> int:
        result = await self._call(
            "POST",
            f"/v1/topics/{_seg(key)}/subscribers/remove",
            json={"subscribers": list(subscriber_ids)},
        )
        return int(result["removed"])

    # --- real-time -------------------------------------------------------------------------

    async def publish(
        self, channel: str, data: Any, *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"channel": channel, "data": data}
        if idempotency_key:
            body["idempotency_key"] = idempotency_key
        return await self._doc("POST", "/v1/realtime/publish", json=body)

    async def broadcast(self, channels: Iterable[str], data: Any) -> list[dict[str, Any]]:
        body = {"channels": list(channels), "data": data}
        result: list[dict[str, Any]] = await self._call("POST", "/v1/realtime/broadcast", json=body)
        return result

    async def history(
        self, channel: str, *, limit: int = 100, since: tuple[int, str] | None = None
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if since is not None:
            params["since_offset"], params["since_epoch"] = since
        return await self._doc("GET", f"/v1/realtime/channels/{channel}/history", params=params)

    async def presence(self, channel: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._call(
            "GET", f"/v1/realtime/channels/{channel}/presence"
        )
        return result

    async def presence_stats(self, channel: str) -> dict[str, int]:
        result: dict[str, int] = await self._call(
            "GET", f"/v1/realtime/channels/{channel}/presence_stats"
        )
        return result

    async def channels(self) -> dict[str, int]:
        result: dict[str, int] = await self._call("GET", "/v1/realtime/channels")
        return result

    async def disconnect(
        self, user: str, *, code: int = 3503, reason: str = "disconnected by the server"
    ) -> int:
        result = await self._call(
            "POST", "/v1/realtime/disconnect", json={"user": user, "code": code, "reason": reason}
        )
        return int(result["disconnected"])


def _seg(value: str) -> str:
    """`value` as one path segment (an id may hold `:`, `@`, `+`, `=`, a key `/`)."""
    return quote(value, safe="")


def _page(cursor: str | None, limit: int | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if cursor is not None:
        params["cursor"] = cursor
    if limit is not None:
        params["limit"] = limit
    return params
