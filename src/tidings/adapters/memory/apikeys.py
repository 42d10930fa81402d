from __future__ import annotations

import dataclasses

from tidings.errors import Conflict, NotFound
from tidings.ports.clock import Clock
from tidings.types import ApiKey, Scope


class MemoryApiKeyStore:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._keys: dict[str, tuple[ApiKey, str]] = {}

    async def create(
        self, key_id: str, name: str, prefix: str, secret_hash: str, scopes: frozenset[Scope]
    ) -> ApiKey:
        if key_id in self._keys:
            raise Conflict(f"api key {key_id} exists")
        if any(k.prefix == prefix for k, _ in self._keys.values()):
            raise Conflict(f"api key prefix {prefix} exists")
        key = ApiKey(
            id=key_id, name=name, prefix=prefix, scopes=scopes, created_at=self._clock.now()
        )
        self._keys[key_id] = (key, secret_hash)
        return key

    async def find_by_prefix(self, prefix: str) -> tuple[ApiKey, str] | None:
        for key, secret_hash in self._keys.values():
            if key.prefix == prefix:
                return key, secret_hash
        return None

    async def list(self) -> list[ApiKey]:
        return sorted((k for k, _ in self._keys.values()), key=lambda k: k.created_at)

    async def revoke(self, key_id: str) -> None:
        if key_id not in self._keys:
            raise NotFound(f"api key {key_id} not found")
        key, secret_hash = self._keys[key_id]
        self._keys[key_id] = (dataclasses.replace(key, revoked_at=self._clock.now()), secret_hash)
