from __future__ import annotations

from typing import Protocol

from tidings.types import ClientInfo, PresenceStats


class PresenceStore(Protocol):
    """Who is in a channel, as TTL entries refreshed by heartbeats.

    Contract:
    - `add` inserts or refreshes the entry of `info.client` in `channel`, valid for `ttl`
      seconds from now (by the store's clock).
    - Expired entries are never returned: a gateway that dies without cleanup leaves no ghost
      after the TTL.
    - `remove` deletes one client's entry; removing an absent entry is a no-op.
    """

    async def add(self, channel: str, info: ClientInfo, ttl: float) -> None: ...

    async def remove(self, channel: str, client: str) -> None: ...

    async def get(self, channel: str) -> dict[str, ClientInfo]: ...

    async def stats(self, channel: str) -> PresenceStats: ...

    async def close(self) -> None: ...
