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


async def test_duplicate_id_conflicts_and_keeps_the_original(stores: Stores) -> None:
    await stores.apikeys.create("id1", "a", "p1", "h1", frozenset({Scope.PUBLISH}))
    with pytest.raises(Conflict):
        await stores.apikeys.create("id1", "b", "p2", "h2", frozenset({Scope.ADMIN}))
    assert await stores.apikeys.find_by_prefix("p2") is None
    found = await stores.apikeys.find_by_prefix("p1")
    assert found is not None and found[0].name == "a" and found[1] == "h1"
    assert [k.id for k in await stores.apikeys.list()] == ["id1"]


async def test_scopes_round_trip(stores: Stores) -> None:
    for i, scopes in enumerate([frozenset(), frozenset({Scope.ADMIN}), frozenset(Scope)]):
        stores.clock.advance(1)
        created = await stores.apikeys.create(f"id{i}", "k", f"p{i}", "h", scopes)
        assert created.scopes == scopes and created.created_at == stores.clock.now()
    listed = await stores.apikeys.list()
    assert [k.scopes for k in listed] == [frozenset(), frozenset({Scope.ADMIN}), frozenset(Scope)]
    assert all(isinstance(k.created_at, float) for k in listed)


async def test_revoked_keys_stay_listed_and_findable(stores: Stores) -> None:
    await stores.apikeys.create("id1", "a", "p1", "h1", frozenset({Scope.PUBLISH}))
    stores.clock.advance(10)
    await stores.apikeys.revoke("id1")
    [listed] = await stores.apikeys.list()
    assert listed.revoked_at == stores.clock.now()
    found = await stores.apikeys.find_by_prefix("p1")
    assert found == (listed, "h1")
