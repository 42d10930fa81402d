"""Ports of user presence: live device reports (shared by every gateway) and the records kept
in the database (last seen, privacy)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from tidings.core.online import Device, Privacy


class DeviceStore(Protocol):
    """Device reports of users, with a TTL, shared by every gateway.

    Contract:
    - `put` inserts or replaces `device` (by `device.id`) of `user`, kept for `ttl` seconds from
      now (by the store's clock); it also marks `device.heartbeat_at` as the user's newest
      heartbeat when it is newer than the one known. It returns what `get` would return
      right after (one round trip for both).
    - `get` returns the user's devices whose TTL has not run out, in no particular order.
    - `silent_users(before, limit)` lists users marked online whose newest heartbeat is at or
      before `before`: the candidates to go offline, oldest first. A gateway that died without
      cleanup leaves its users here, so another gateway's sweep takes them offline.
    - `mark(user, online, silent_before=None)` flips the user's online mark atomically and
      returns the number of this transition (1, 2, 3 ... per user) when it changed it, else
      None: of several gateways seeing the same transition, exactly one gets a number. Going
      offline also drops the user's devices and newest heartbeat. With `silent_before`, going
      offline happens only if the user's newest heartbeat is still at or before it (checked
      in the same atomic step), so a device that reported between a sweep's read and its flip
      keeps the user online.
    """

    async def put(self, user: str, device: Device, ttl: float) -> list[Device]: ...

    async def get(self, user: str) -> list[Device]: ...

    async def silent_users(self, before: float, limit: int) -> list[str]: ...

    async def mark(
        self, user: str, online: bool, silent_before: float | None = None
    ) -> int | None: ...

    async def close(self) -> None: ...


class PresenceRecords(Protocol):
    """What is kept of a user's presence in the database.

    Contract: `last_seen` returns the newest time saved (None if never); saving an older time
    than the one stored keeps the stored one. `privacy` of an unknown user is `Privacy()`.
    `set_contacts` replaces the user's contact list (the users told of their presence changes)
    as a whole, in one transaction; `contacts` returns it sorted (empty for an unknown user).
    Last seen, privacy and contacts are independent: writing one never changes another.
    """

    async def save_last_seen(self, user: str, at: float) -> None: ...

    async def save_last_seen_many(self, seen: Mapping[str, float]) -> None:
        """`save_last_seen` for many users in one write."""
        ...

    async def last_seen(self, user: str) -> float | None: ...

    async def privacy(self, user: str) -> Privacy: ...

    async def hidden_users(self) -> set[str]:
        """Users who hide their online state."""
        ...

    async def set_privacy(self, user: str, privacy: Privacy) -> None: ...

    async def contacts(self, user: str) -> list[str]: ...

    async def set_contacts(self, user: str, contacts: Sequence[str]) -> None: ...
