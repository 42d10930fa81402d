from __future__ import annotations

import pytest

from tests.contract.conftest import Stores
from tidings.errors import Conflict, NotFound
from tidings.types import Scope


async def test_create_find_list_revoke(stores: Stores) -> None:
    key = await stores.apikeys.create("id1", "ci", "abc123", "hash1", frozenset({Scope.PUBLISH}))
    assert key.scopes == frozenset({Scope.PUBLISH}) and key.revoked_at is None
    found = await stores.apikeys.find_by_prefix("abc123")
    assert found == (key, "hash1")
    assert await stores.apikeys.find_by_prefix("nope") is None
    stores.clock.advance(1)
    await stores.apikeys.create("id2", "ops", "def456", "hash2", frozenset(Scope))
    assert [k.id for k in await stores.apikeys.list()] == ["id1", "id2"]
    await stores.apikeys.revoke("id1")
    revoked, _ = await stores.apikeys.find_by_prefix("abc123")
    assert revoked.revoked_at == stores.clock.now()
    with pytest.raises(NotFound):
        await stores.apikeys.revoke("missing")


async def test_prefix_is_unique(stores: Stores) -> None:
    await stores.apikeys.create("id1", "a", "same", "h1", frozenset({Scope.ADMIN}))
    with pytest.raises(Conflict):
        await stores.apikeys.create("id2", "b", "same", "h2", frozenset({Scope.ADMIN}))
