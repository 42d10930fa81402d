"""`TemplateService.resolve` reads which version is published every time, and a stored
version (which never changes) once per process."""

from __future__ import annotations

from typing import Any

from tidings.adapters.clock import ManualClock
from tidings.adapters.memory.templates import MemoryTemplateStore
from tidings.ports.templates import VersionRecord
from tidings.services import templates as module
from tidings.services.templates import TemplateService


def body(title: str) -> dict[str, Any]:
    return {"locales": {"en": {"title": title, "body": "b"}}}


async def test_a_version_is_read_once_and_a_new_publication_is_seen_at_once() -> None:
    store = MemoryTemplateStore(ManualClock(1000.0))
    reads: list[tuple[str, int]] = []
    version = store.version

    async def counted(template_id: str, number: int) -> VersionRecord:
        reads.append((template_id, number))
        return await version(template_id, number)

    store.version = counted  # type: ignore[method-assign]
    service = TemplateService(store)
    await service.create("welcome", "Welcome", "in_app")
    await service.add_version("welcome", body("one"))
    await service.publish("welcome", 1)
    reads.clear()
    first = await service.resolve("welcome")
    again = await service.resolve("welcome")
    assert again is first and first.locales["en"].fields["title"] == "one"
    assert reads == [("welcome", 1)]
    await service.add_version("welcome", body("two"))
    await service.publish("welcome", 2)
    reads.clear()
    assert (await service.resolve("welcome")).locales["en"].fields["title"] == "two"
    assert (await service.resolve("welcome", 1)) is first  # an older version: still kept
    assert reads == [("welcome", 2)]


async def test_the_cache_keeps_at_most_its_bound(monkeypatch: Any) -> None:
    monkeypatch.setattr(module, "VERSION_CACHE", 2)
    service = TemplateService(MemoryTemplateStore(ManualClock(1000.0)))
    await service.create("t", "T", "in_app")
    for n in range(1, 4):
        await service.add_version("t", body(str(n)))
        await service.resolve("t", n)
    assert sorted(service._versions) == [("t", 2), ("t", 3)]
