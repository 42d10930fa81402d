"""Templates API (scope `admin`): templates, versions, publish/rollback and preview."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from tidings.api.auth import require, services
from tidings.core.templates import Rendered
from tidings.ports.templates import TemplateRecord, VersionRecord
from tidings.types import Scope

router = APIRouter(
    prefix="/v1/templates", tags=["templates"], dependencies=[Depends(require(Scope.ADMIN))]
)
PROBLEM: dict[int | str, dict[str, Any]] = {
    s: {"content": {"application/problem+json": {}}} for s in (401, 403, 404, 409, 422)
}


class TemplateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: Annotated[str, Field(min_length=1, max_length=200)]
    name: Annotated[str, Field(min_length=1, max_length=200)]
    channel: str = Field(description="email, sms, push or in_app")


class VersionOut(BaseModel):
    template: str
    version: int
    state: str
    body: dict[str, Any]
    created_at: float
    published_at: float | None

    @classmethod
    def of(cls, v: VersionRecord) -> VersionOut:
        return cls(
            template=v.template,
            version=v.version,
            state=v.state.value,
            body=v.body,
            created_at=v.created_at,
            published_at=v.published_at,
        )


class TemplateOut(BaseModel):
    id: str
    name: str
    channel: str
    published_version: int | None
    versions: list[VersionOut] | None = None

    @classmethod
    def of(cls, t: TemplateRecord, versions: list[VersionRecord] | None = None) -> TemplateOut:
        return cls(
            id=t.id,
            name=t.name,
            channel=t.channel,
            published_version=t.published_version,
            versions=[VersionOut.of(v) for v in versions] if versions is not None else None,
        )


class VersionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    locales: dict[str, dict[str, str]] = Field(
        description="locale -> field -> template source; `layout` names a layout"
    )
    default_locale: str = "en"
    variables: dict[str, Any] | None = Field(default=None, description="JSON Schema")
    sms_max_segments: Annotated[int, Field(ge=1, le=10)] = 3
    variants: dict[str, dict[str, dict[str, str]]] | None = None


class PreviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    payload: dict[str, Any] = Field(default_factory=dict)
    version: Annotated[int, Field(ge=1)] | None = None
    locale: Annotated[str, Field(max_length=35)] | None = None
    timezone: Annotated[str, Field(max_length=64)] = "UTC"
    variant: Annotated[str, Field(max_length=64)] | None = None
    subscriber: dict[str, Any] | None = None


class PreviewOut(BaseModel):
    template: str
    version: int
    locale: str
    variant: str | None
    rtl: bool
    fields: dict[str, str]
    sms: dict[str, Any] | None = None

    @classmethod
    def of(cls, r: Rendered) -> PreviewOut:
        counted = None
        if r.sms is not None:
            counted = {
                "encoding": r.sms.encoding.value,
                "units": r.sms.units,
                "segments": r.sms.segments,
            }
        return cls(
            template=r.template,
            version=r.version,
            locale=r.locale,
            variant=r.variant,
            rtl=r.rtl,
            fields=dict(r.fields),
            sms=counted,
        )


@router.post("", status_code=201, responses=PROBLEM, summary="Create a template")
async def create(request: Request, body: TemplateIn) -> TemplateOut:
    return TemplateOut.of(
        await services(request).templates.create(body.id, body.name, body.channel)
    )


@router.get("", summary="All templates")
async def all_templates(request: Request) -> list[TemplateOut]:
    return [TemplateOut.of(t) for t in await services(request).templates.store.all()]


@router.get("/{template_id}", responses=PROBLEM, summary="A template with its versions")
async def get(request: Request, template_id: str) -> TemplateOut:
    store = services(request).templates.store
    return TemplateOut.of(await store.get(template_id), await store.versions(template_id))


@router.post(
    "/{template_id}/versions", status_code=201, responses=PROBLEM, summary="Add a draft version"
)
async def add_version(request: Request, template_id: str, body: VersionIn) -> VersionOut:
    data = body.model_dump(exclude_none=True)
    return VersionOut.of(await services(request).templates.add_version(template_id, data))


@router.post(
    "/{template_id}/versions/{version}/publish",
    responses=PROBLEM,
    summary="Publish a version (an older one: roll back)",
)
async def publish(request: Request, template_id: str, version: int) -> VersionOut:
    return VersionOut.of(await services(request).templates.publish(template_id, version))


@router.post("/{template_id}/preview", responses=PROBLEM, summary="Render for a sample payload")
async def preview(request: Request, template_id: str, body: PreviewIn) -> PreviewOut:
    rendered = await services(request).templates.preview(
        template_id,
        body.payload,
        version=body.version,
        locale=body.locale,
        timezone=body.timezone,
        variant=body.variant,
        subscriber=body.subscriber,
    )
    return PreviewOut.of(rendered)
