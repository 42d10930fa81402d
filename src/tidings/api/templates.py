"""Templates API (scope `admin`): templates, versions, publish/rollback, preview and
test-send."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from tidings.api.auth import require, services
from tidings.api.problems import problem_responses
from tidings.core.templates import Rendered
from tidings.ports.templates import TemplateRecord, VersionRecord
from tidings.services.testsend import TemplateTestResult
from tidings.types import Scope

router = APIRouter(
    prefix="/v1/templates", tags=["templates"], dependencies=[Depends(require(Scope.ADMIN))]
)
PROBLEM = problem_responses(401, 403, 404, 409, 422)


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


class SendTestIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: Annotated[str, Field(min_length=1, max_length=320)] = Field(
        description="email: an address; webhook: an endpoint id; in_app: a subscriber id"
    )
    payload: dict[str, Any] = Field(default_factory=dict)
    version: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="default: the published version; a draft can be sent"
    )
    locale: Annotated[str, Field(max_length=35)] | None = None
    timezone: Annotated[str, Field(max_length=64)] = "UTC"
    variant: Annotated[str, Field(max_length=64)] | None = None
    subscriber: dict[str, Any] | None = Field(
        default=None, description="the sample subscriber context, as in the preview"
    )
    channel: Annotated[str, Field(max_length=16)] | None = Field(
        default=None,
        description="default: the template's; `webhook` for any template, `webpush` for push",
    )


class SendTestOut(BaseModel):
    status: str = Field(description="sent, or refused by the destination")
    channel: str
    to: str
    provider: str = Field(description="smtp, webhook or inbox")
    provider_message_id: str | None = Field(description="Message-ID, webhook-id or inbox item id")
    response_status: int | None = Field(description="the SMTP reply code or HTTP status")
    failure: str | None = Field(description="transient, rate_limited, permanent or policy")
    detail: str | None
    retry_after: float | None
    attempted: bool = Field(description="false: refused without calling the destination")
    rendered: PreviewOut

    @classmethod
    def of(cls, t: TemplateTestResult) -> SendTestOut:
        r = t.result
        return cls(
            status="sent" if t.sent else "refused",
            channel=t.channel,
            to=t.to,
            provider=t.provider,
            provider_message_id=r.provider_message_id,
            response_status=r.status,
            failure=None if r.failure is None else r.failure.value,
            detail=r.reason or None,
            retry_after=r.retry_after,
            attempted=r.attempted,
            rendered=PreviewOut.of(t.rendered),
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


@router.post(
    "/{template_id}/test-send",
    responses=PROBLEM,
    summary="Render a version for a sample payload and send it once, marked as a test",
)
async def test_send(request: Request, template_id: str, body: SendTestIn) -> SendTestOut:
    """200 with `status` sent or refused (the destination's answer, with its failure class);
    422 when it cannot be sent: a payload or rendered message that fails validation, a
    destination of the wrong kind, a channel with no provider configured."""
    sent = await services(request).template_tests.send(
        template_id,
        to=body.to,
        payload=body.payload,
        version=body.version,
        locale=body.locale,
        timezone=body.timezone,
        variant=body.variant,
        subscriber=body.subscriber,
        channel=body.channel,
    )
    return SendTestOut.of(sent)
