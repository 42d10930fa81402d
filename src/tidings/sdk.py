"""Python SDK for the Tidings server API: send events, publish to channels, read history and
presence, disconnect users.

    async with Tidings("http://127.0.0.1:8000", api_key) as t:
        accepted = await t.send_event("order.shipped", channels=["orders.u1"], payload={...},
                                      idempotency_key="order-42-shipped")
        pub = await t.publish("chat:room", {"text": "hi"})

Every non-2xx answer raises `TidingsApiError` carrying the problem+json document.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from types import TracebackType
from typing import Any

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
        result: dict[str, Any] = await self._call("POST", "/v1/events", json=body, headers=headers)
        return result

    async def get_event(self, event_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", f"/v1/events/{event_id}")
        return result

    # --- real-time -------------------------------------------------------------------------

    async def publish(
        self, channel: str, data: Any, *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"channel": channel, "data": data}
        if idempotency_key:
            body["idempotency_key"] = idempotency_key
        result: dict[str, Any] = await self._call("POST", "/v1/realtime/publish", json=body)
        return result

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
        result: dict[str, Any] = await self._call(
            "GET", f"/v1/realtime/channels/{channel}/history", params=params
        )
        return result

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
