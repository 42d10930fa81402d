"""Templates: versions (draft, published, archived), publish and roll back, preview.

A version's body is checked by building the core `TemplateVersion` before it is stored, so
a stored version always renders or fails only on its payload. Deliveries use the published
version and record its number, so history can be re-rendered faithfully.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from tidings.core.templates import (
    HTML_FIELDS,
    Channel,
    Content,
    Rendered,
    Renderer,
    RenderError,
    TemplateVersion,
    check_source,
)
from tidings.errors import InvalidInput, NotFound
from tidings.ports.templates import TemplateRecord, TemplateStore, VersionRecord

TEMPLATE_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,199}$")
VERSION_CACHE = 1024  # parsed versions kept per process


def to_version(template: TemplateRecord, number: int, body: Mapping[str, Any]) -> TemplateVersion:
    """The core version of a stored body; raises `InvalidInput` naming the field."""
    if not isinstance(body, Mapping):
        raise InvalidInput("a version body is an object", field="body")
    unknown = set(body) - {"locales", "default_locale", "variables", "sms_max_segments", "variants"}
    if unknown:
        raise InvalidInput(f"unknown field {sorted(unknown)[0]!r}", field=sorted(unknown)[0])

    def contents(value: Any, where: str) -> dict[str, Content]:
        if not isinstance(value, Mapping) or not value:
            raise InvalidInput(f"{where} maps locales to content", field=where)
        out = {}
        for tag, fields in value.items():
            if not isinstance(fields, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in fields.items()
            ):
                raise InvalidInput(
                    f"{where}.{tag} maps field names to text", field=f"{where}.{tag}"
                )
            layout = fields.get("layout")
            rest = {k: v for k, v in fields.items() if k != "layout"}
            out[str(tag)] = Content(rest, layout)
        return out

    variants_in = body.get("variants") or {}
    if not isinstance(variants_in, Mapping):
        raise InvalidInput("variants maps names to locales", field="variants")
    max_segments = body.get("sms_max_segments", 3)
    if not isinstance(max_segments, int) or isinstance(max_segments, bool) or max_segments < 1:
        raise InvalidInput("sms_max_segments must be a positive integer", field="sms_max_segments")
    variables = body.get("variables")
    if variables is not None and not isinstance(variables, Mapping):
        raise InvalidInput("variables is a JSON Schema object", field="variables")
    return TemplateVersion(
        template=template.id,
        version=number,
        channel=Channel(template.channel),
        locales=contents(body.get("locales"), "locales"),
        default_locale=str(body.get("default_locale", "en")),
        variables=variables,
        sms_max_segments=max_segments,
        variants={str(name): contents(v, f"variants.{name}") for name, v in variants_in.items()},
    )


def _compiles(version: TemplateVersion, layouts: Mapping[str, str]) -> None:
    """Every field of every locale and variant compiles as the renderer compiles it (a
    syntax error, an unknown filter) and every layout named is one the renderer has;
    raises `InvalidInput` naming the field."""
    sources = [("locales", version.locales)] + [
        (f"variants.{name}", v) for name, v in version.variants.items()
    ]
    for where, locales in sources:
        for tag, content in locales.items():
            if content.layout is not None and content.layout not in layouts:
                known = ", ".join(sorted(layouts)) or "none configured"
                raise InvalidInput(
                    f"unknown layout {content.layout!r} (layouts: {known})",
                    field=f"{where}.{tag}.layout",
                )
            for name, text in content.fields.items():
                try:
                    check_source(text, html=name in HTML_FIELDS)
                except RenderError as exc:
                    raise InvalidInput(exc.message, field=f"{where}.{tag}.{name}") from None


class TemplateService:
    def __init__(self, store: TemplateStore, renderer: Renderer | None = None) -> None:
        self.store = store
        self.renderer = renderer or Renderer()
        self._versions: dict[tuple[str, int], TemplateVersion] = {}  # see `resolve`

    async def create(self, template_id: str, name: str, channel: str) -> TemplateRecord:
        if not TEMPLATE_ID.match(template_id):
            raise InvalidInput("ids are lower case letters, digits, '.', '_' and '-'", field="id")
        try:
            Channel(channel)
        except ValueError:
            allowed = ", ".join(c.value for c in Channel)
            raise InvalidInput(f"channel must be one of {allowed}", field="channel") from None
        return await self.store.create(template_id, name, channel)

    async def add_version(self, template_id: str, body: dict[str, Any]) -> VersionRecord:
        template = await self.store.get(template_id)
        # refuse what could never render
        _compiles(to_version(template, 0, body), self.renderer.layouts)
        return await self.store.add_version(template_id, body)

    async def publish(self, template_id: str, version: int) -> VersionRecord:
        """Publish `version`; publishing an older one is the rollback."""
        return await self.store.publish(template_id, version)

    async def resolve(self, template_id: str, version: int | None = None) -> TemplateVersion:
        """The given version, or the published one. Which version is published is read each
        time; a version itself never changes once stored, so it is read and parsed once per
        process (an ingest's contract check, its dispatch and its delivery resolve the same
        version)."""
        template = await self.store.get(template_id)
        number = version if version is not None else template.published_version
        if number is None:
            raise NotFound(f"template {template_id} has no published version")
        key = (template_id, number)
        found = self._versions.get(key)
        if found is None:
            record = await self.store.version(template_id, number)
            found = to_version(template, record.version, record.body)
            if len(self._versions) >= VERSION_CACHE:
                del self._versions[next(iter(self._versions))]  # the oldest
            self._versions[key] = found
        return found

    async def preview(
        self,
        template_id: str,
        payload: Mapping[str, Any],
        *,
        version: int | None = None,
        locale: str | None = None,
        timezone: str = "UTC",
        variant: str | None = None,
        subscriber: Mapping[str, Any] | None = None,
    ) -> Rendered:
        """Render for a sample payload; raises `RenderError`/`InvalidInput` with the reason."""
        core = await self.resolve(template_id, version)
        return self.render(
            core, payload, locale=locale, timezone=timezone, variant=variant, subscriber=subscriber
        )

    def render(
        self,
        version: TemplateVersion,
        payload: Mapping[str, Any],
        *,
        locale: str | None = None,
        timezone: str = "UTC",
        variant: str | None = None,
        subscriber: Mapping[str, Any] | None = None,
    ) -> Rendered:
        """Render a resolved version the way `preview` does (the test-send renders through
        here too, so what is sent is what the preview showed)."""
        return self.renderer.render(
            version,
            payload,
            locale=locale,
            timezone=timezone,
            recipient=subscriber,
            variant=variant,
        )
