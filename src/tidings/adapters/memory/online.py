"""In-process device store and presence records (the embedded default and the reference for
the contract suite)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tidings.core.online import Device, Privacy
from tidings.ports.clock import Clock


class MemoryDeviceStore:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._devices: dict[str, dict[str, tuple[Device, float]]] = {}
        self._heartbeat: dict[str, float] = {}  # online users -> newest heartbeat
        self._online: set[str] = set()
        self._transitions: dict[str, int] = {}

    async def put(self, user: str, device: Device, ttl: float) -> list[Device]:
        self._devices.setdefault(user, {})[device.id] = (device, self._clock.now() + ttl)
        if device.heartbeat_at > self._heartbeat.get(user, float("-inf")):
            self._heartbeat[user] = device.heartbeat_at
        return await self.get(user)

    async def get(self, user: str) -> list[Device]:
        now = self._clock.now()
        entries = self._devices.get(user, {})
        for device_id in [k for k, (_, until) in entries.items() if until <= now]:
            del entries[device_id]
        if not entries:
            self._devices.pop(user, None)
        return [d for d, _ in entries.values()]

    async def silent_users(self, before: float, limit: int) -> list[str]:
        silent = sorted(
            (at, u) for u, at in self._heartbeat.items() if at <= before and u in self._online
        )
        return [u for _, u in silent[:limit]]

    async def mark(self, user: str, online: bool, silent_before: float | None = None) -> int | None:
        if online == (user in self._online):
            return None
        newest = self._heartbeat.get(user, float("-inf"))
        if not online and silent_before is not None and newest > silent_before:
            return None  # a device reported since the caller saw the user silent
        if online:
            self._online.add(user)
        else:
            self._online.discard(user)
            self._devices.pop(user, None)
            self._heartbeat.pop(user, None)
        n = self._transitions.get(user, 0) + 1
        self._transitions[user] = n
        return n

    async def close(self) -> None:
        pass


class MemoryPresenceRecords:
    def __init__(self) -> None:
        self._seen: dict[str, float] = {}
        self._privacy: dict[str, Privacy] = {}
        self._contacts: dict[str, tuple[str, ...]] = {}
        self.writes = 0  # last-seen writes, for tests and the benchmark

    async def save_last_seen(self, user: str, at: float) -> None:
        self.writes += 1
        if at > self._seen.get(user, float("-inf")):
            self._seen[user] = at

    async def save_last_seen_many(self, seen: Mapping[str, float]) -> None:
        for user, at in seen.items():
            await self.save_last_seen(user, at)

    async def last_seen(self, user: str) -> float | None:
        return self._seen.get(user)

    async def privacy(self, user: str) -> Privacy:
        return self._privacy.get(user, Privacy())

    async def set_privacy(self, user: str, privacy: Privacy) -> None:
        self._privacy[user] = privacy

    async def hidden_users(self) -> set[str]:
        return {u for u, p in self._privacy.items() if p.hide_online}

    async def contacts(self, user: str) -> list[str]:
        return list(self._contacts.get(user, ()))

    async def set_contacts(self, user: str, contacts: Sequence[str]) -> None:
        if contacts:
            self._contacts[user] = tuple(sorted(set(contacts)))
        else:
            self._contacts.pop(user, None)
