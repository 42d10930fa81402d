from __future__ import annotations

from tidings.ports.clock import Clock
from tidings.types import ClientInfo, PresenceStats


class MemoryPresenceStore:
    """Presence entries with expiry times, pruned on read."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._channels: dict[str, dict[str, tuple[ClientInfo, float]]] = {}

    async def add(self, channel: str, info: ClientInfo, ttl: float) -> None:
        self._channels.setdefault(channel, {})[info.client] = (info, self._clock.now() + ttl)

    async def remove(self, channel: str, client: str) -> None:
        entries = self._channels.get(channel)
        if entries is not None:
            entries.pop(client, None)
            if not entries:
                del self._channels[channel]

    def _live(self, channel: str) -> dict[str, ClientInfo]:
        entries = self._channels.get(channel)
        if not entries:
            return {}
        now = self._clock.now()
        for client in [c for c, (_, exp) in entries.items() if exp <= now]:
            del entries[client]
        if not entries:
            del self._channels[channel]
        return {c: info for c, (info, _) in entries.items()}

    async def get(self, channel: str) -> dict[str, ClientInfo]:
        return self._live(channel)

    async def stats(self, channel: str) -> PresenceStats:
        live = self._live(channel)
        return PresenceStats(num_clients=len(live), num_users=len({i.user for i in live.values()}))

    async def close(self) -> None:
        self._channels.clear()
