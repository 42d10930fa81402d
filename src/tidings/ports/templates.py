"""Port of the template store: templates, their numbered versions and which one is live."""

from __future__ import annotations

import enum
from typing import Any, Protocol

from tidings.records import record


class VersionState(enum.StrEnum):
    DRAFT = "draft"
    PUBLISHED = "published"
    ARCHIVED = "archived"


@record
class TemplateRecord:
    id: str
    name: str
    channel: str
    published_version: int | None
    created_at: float


@record
class VersionRecord:
    template: str
    version: int
    state: VersionState
    body: dict[str, Any]  # locales, default_locale, variables, sms_max_segments, variants
    created_at: float
    published_at: float | None = None


class TemplateStore(Protocol):
    """Contract:
    - `create` refuses an existing id with `Conflict`.
    - `add_version` numbers versions 1, 2, 3 ... per template (never reused), state draft;
      concurrent adds get distinct numbers.
    - `publish` makes one version the published one atomically: the version published before
      becomes archived; publishing an archived version again is how a rollback is done.
    - Unknown templates or versions raise `NotFound`.
    """

    async def create(self, template_id: str, name: str, channel: str) -> TemplateRecord: ...

    async def get(self, template_id: str) -> TemplateRecord: ...

    async def all(self) -> list[TemplateRecord]: ...

    async def add_version(self, template_id: str, body: dict[str, Any]) -> VersionRecord: ...

    async def version(self, template_id: str, version: int) -> VersionRecord: ...

    async def versions(self, template_id: str) -> list[VersionRecord]: ...

    async def publish(self, template_id: str, version: int) -> VersionRecord: ...
