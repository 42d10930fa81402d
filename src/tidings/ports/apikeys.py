from __future__ import annotations

from typing import Protocol

from tidings.types import ApiKey, Scope


class ApiKeyStore(Protocol):
    """API keys, stored hashed: the secret itself is never kept.

    `create` stores a key given its id, public prefix and hash; `find_by_prefix` returns the
    key with its stored hash so the caller can compare in constant time.
    """

    async def create(
        self, key_id: str, name: str, prefix: str, secret_hash: str, scopes: frozenset[Scope]
    ) -> ApiKey: ...

    async def find_by_prefix(self, prefix: str) -> tuple[ApiKey, str] | None: ...

    async def list(self) -> list[ApiKey]: ...

    async def revoke(self, key_id: str) -> None: ...
