"""In-process template store (reference for the contract suite)."""

from __future__ import annotations

import dataclasses
from typing import Any

from tidings.errors import Conflict, NotFound
from tidings.ports.clock import Clock
from tidings.ports.templates import TemplateRecord, VersionRecord, VersionState


class MemoryTemplateStore:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._templates: dict[str, TemplateRecord] = {}
        self._versions: dict[str, list[VersionRecord]] = {}

    async def create(self, template_id: str, name: str, channel: str) -> TemplateRecord:
        if template_id in self._templates:
            raise Conflict(f"template {template_id} exists", field="id")
        record = TemplateRecord(template_id, name, channel, None, self._clock.now())
        self._templates[template_id] = record
        self._versions[template_id] = []
        return record

    async def get(self, template_id: str) -> TemplateRecord:
        record = self._templates.get(template_id)
        if record is None:
            raise NotFound(f"template {template_id} not found")
        return record

    async def all(self) -> list[TemplateRecord]:
        return sorted(self._templates.values(), key=lambda t: t.id)

    async def add_version(self, template_id: str, body: dict[str, Any]) -> VersionRecord:
        await self.get(template_id)
        versions = self._versions[template_id]
        record = VersionRecord(
            template_id, len(versions) + 1, VersionState.DRAFT, body, self._clock.now()
        )
        versions.append(record)
        return record

    async def version(self, template_id: str, version: int) -> VersionRecord:
        await self.get(template_id)
        versions = self._versions[template_id]
        if not 1 <= version <= len(versions):
            raise NotFound(f"template {template_id} has no version {version}")
        return versions[version - 1]

    async def versions(self, template_id: str) -> list[VersionRecord]:
        await self.get(template_id)
        return list(self._versions[template_id])

    async def publish(self, template_id: str, version: int) -> VersionRecord:
        record = await self.version(template_id, version)
        template = self._templates[template_id]
        versions = self._versions[template_id]
        now = self._clock.now()
        if template.published_version is not None and template.published_version != version:
            old = versions[template.published_version - 1]
            versions[old.version - 1] = dataclasses.replace(old, state=VersionState.ARCHIVED)
        record = dataclasses.replace(record, state=VersionState.PUBLISHED, published_at=now)
        versions[version - 1] = record
        self._templates[template_id] = dataclasses.replace(template, published_version=version)
        return record
