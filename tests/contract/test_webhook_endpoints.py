"""Contract of the webhook endpoint store on memory, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.contract.conftest import sql_url
from tidings.adapters import sql
from tidings.adapters.memory.webhooks import MemoryWebhookEndpointStore
from tidings.adapters.sql.webhooks import SqlWebhookEndpointStore
from tidings.core.delivery.webhooks import DisablePolicy, encode_secret
from tidings.errors import Conflict, NotFound
from tidings.ports.providers import WebhookEndpoint

S1 = encode_secret(b"1" * 32)
S2 = encode_secret(b"2" * 32)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield MemoryWebhookEndpointStore()
        return
    url = await sql_url(request, request.param, tmp_path)
    engine = sql.create_engine(url)
    try:
        yield SqlWebhookEndpointStore(engine)
    finally:
        await engine.dispose()


def endpoint(i: str, **kw: Any) -> WebhookEndpoint:
    base: dict[str, Any] = {
        "id": i,
        "url": f"https://hooks.example.com/{i}",
        "description": "d",
        "event_types": ("order.paid",),
        "secret": S1,
        "enabled": True,
        "created_at": 100.0,
        "updated_at": 100.0,
    }
    return WebhookEndpoint(**{**base, **kw})


async def test_create_get_page_and_conflict(store: Any) -> None:
    for i in ("ep_c", "ep_a", "ep_b"):
        await store.create(endpoint(i))
    assert await store.get("ep_a") == endpoint("ep_a")
    with pytest.raises(Conflict):
        await store.create(endpoint("ep_a"))
    assert [e.id for e in await store.page(None, 2)] == ["ep_a", "ep_b"]
    assert [e.id for e in await store.page("ep_b", 2)] == ["ep_c"]
    assert await store.page("ep_c", 2) == []
    with pytest.raises(NotFound):
        await store.get("ep_x")


async def test_update_and_delete(store: Any) -> None:
    await store.create(endpoint("ep_1"))
    e = await store.update("ep_1", url="https://new.example.com/", now=200.0)
    assert (e.url, e.description, e.event_types, e.updated_at) == (
        "https://new.example.com/",
        "d",
        ("order.paid",),
        200.0,
    )
    e = await store.update("ep_1", event_types=(), description="", now=300.0)
    assert (e.event_types, e.description) == ((), "")
    assert await store.get("ep_1") == e
    await store.delete("ep_1")
    with pytest.raises(NotFound):
        await store.delete("ep_1")
    with pytest.raises(NotFound):
        await store.update("ep_1", url="https://x.example.com/", now=1.0)


async def test_secret_rotation_keeps_the_old_one_until_it_expires(store: Any) -> None:
    await store.create(endpoint("ep_1"))
    e = await store.set_secret("ep_1", S2, 500.0, 200.0)
    assert (e.secret, e.previous_secret, e.previous_secret_expires_at) == (S2, S1, 500.0)
    assert e.signing_secrets(499.0) == (S2, S1)
    assert e.signing_secrets(500.0) == (S2,)
    e = await store.set_secret("ep_1", S1, None, 300.0)
    assert (e.secret, e.previous_secret, e.previous_secret_expires_at) == (S1, None, None)
    assert await store.get("ep_1") == e


async def test_failure_streak_disables_by_policy_and_success_ends_it(store: Any) -> None:
    policy = DisablePolicy(after_failures=3, after_seconds=3600.0)
    await store.create(endpoint("ep_1"))
    e = await store.record_failure("ep_1", 1000.0, policy, "r")
    assert (e.failures, e.failing_since, e.enabled) == (1, 1000.0, True)
    await store.record_success("ep_1")
    e = await store.get("ep_1")
    assert (e.failures, e.failing_since) == (0, None)
    for t in (2000.0, 2100.0, 2200.0):
        e = await store.record_failure("ep_1", t, policy, "r")
    assert (e.failures, e.failing_since, e.enabled) == (3, 2000.0, True)  # not an hour yet
    e = await store.record_failure("ep_1", 5600.0, policy, "dead")
    assert (e.failures, e.enabled, e.disabled_reason, e.disabled_at) == (4, False, "dead", 5600.0)
    assert await store.get("ep_1") == e
    e = await store.enable("ep_1", 6000.0)
    assert (e.enabled, e.disabled_reason, e.failures, e.failing_since) == (True, None, 0, None)
    with pytest.raises(NotFound):
        await store.record_failure("ep_x", 1.0, policy, "r")


async def test_concurrent_failures_each_count_once(store: Any) -> None:
    policy = DisablePolicy(after_failures=1000, after_seconds=0.0)
    await store.create(endpoint("ep_1"))
    await asyncio.gather(*(store.record_failure("ep_1", 10.0, policy, "r") for _ in range(20)))
    assert (await store.get("ep_1")).failures == 20


async def test_disable_keeps_the_first_reason(store: Any) -> None:
    await store.create(endpoint("ep_1"))
    e = await store.disable("ep_1", "410 Gone", 10.0)
    assert (e.enabled, e.disabled_reason, e.disabled_at) == (False, "410 Gone", 10.0)
    e = await store.disable("ep_1", "operator", 20.0)
    assert (e.disabled_reason, e.disabled_at) == ("410 Gone", 10.0)
    with pytest.raises(NotFound):
        await store.disable("ep_x", "r", 1.0)
