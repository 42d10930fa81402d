"""API keys: created once (the secret is shown once and stored only as a hash), checked on
every request with a constant-time comparison."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid

from tidings.errors import Forbidden, Unauthorized
from tidings.ports.apikeys import ApiKeyStore
from tidings.ports.clock import Clock
from tidings.types import ApiKey, Scope

KEY_PREFIX = "tdg"
CACHE_SECONDS = 5.0


def hash_secret(key: str) -> str:
    # Keys carry 256 random bits, so a fast hash is enough: there is nothing to brute-force.
    return hashlib.sha256(key.encode()).hexdigest()


def parse_key(key: str) -> str | None:
    """The public prefix of a well-formed key `tdg_<prefix>_<secret>`, else None."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or len(parts[1]) != 12 or len(parts[2]) < 32:
        return None
    return parts[1]


class ApiKeyService:
    def __init__(self, store: ApiKeyStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._cache: dict[str, tuple[ApiKey, float]] = {}

    async def create(self, name: str, scopes: frozenset[Scope]) -> tuple[ApiKey, str]:
        prefix = secrets.token_hex(6)
        plaintext = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
        key = await self._store.create(
            str(uuid.uuid4()), name, prefix, hash_secret(plaintext), scopes
        )
        return key, plaintext

    async def authenticate(self, plaintext: str) -> ApiKey:
        """The key for a presented secret; `Unauthorized` if unknown, malformed or revoked.

        Verified keys are cached for a few seconds, so a revocation takes effect within
        `CACHE_SECONDS` on every process."""
        digest = hash_secret(plaintext)
        now = self._clock.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            return cached[0]
        prefix = parse_key(plaintext)
        if prefix is None:
            raise Unauthorized("malformed API key")
        found = await self._store.find_by_prefix(prefix)
        if found is None or not hmac.compare_digest(found[1], digest):
            raise Unauthorized("unknown API key")
        key = found[0]
        if key.revoked_at is not None:
            raise Unauthorized("API key revoked")
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (key, now + CACHE_SECONDS)
        return key

    @staticmethod
    def authorize(key: ApiKey, scope: Scope) -> None:
        """Admin keys may do everything; others need the scope itself."""
        if Scope.ADMIN in key.scopes or scope in key.scopes:
            return
        raise Forbidden(f"API key lacks the '{scope.value}' scope")

    async def list(self) -> list[ApiKey]:
        return await self._store.list()

    async def revoke(self, key_id: str) -> None:
        await self._store.revoke(key_id)
        self._cache.clear()
