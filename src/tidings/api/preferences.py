"""Notification preferences and the suppression list.

- `/v1/subscribers/{id}/preferences` with an API key (scope `publish`): `GET`, `PUT`
  (replace the document) and `PATCH` (JSON Merge Patch: change one switch without sending
  the rest) for any subscriber.
- `/v1/inbox/preferences`: the same three for the subscriber's browser, authenticated as the
  inbox routes are (a subscriber token, or `X-Subscriber-Id` with `X-Subscriber-Hash`); a
  subscriber reads and changes only their own preferences.
- `/v1/suppressions` (scope `publish`): addresses that get nothing; list, add, remove.

The preferences document is validated by the core, so a 422 names the exact field, such as
`workflows.comment.created.channels.sms` or `quiet_hours.0.start`. What `GET` answers is a
valid `PUT` body."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from tidings.api.auth import require, services
from tidings.api.inbox import _credential_subscriber as credential_subscriber
from tidings.api.subscribers import PROBLEM, SubscriberId
from tidings.core.notify.decisions import Preferences
from tidings.core.notify.preferences import preferences_to_json
from tidings.ports.preferences import Suppression
from tidings.types import Scope

SuppressChannel = Literal["email", "sms", "push", "webpush"]
Reason = Literal["hard_bounce", "unsubscribed", "complaint", "invalid_token", "manual"]

EXAMPLE: dict[str, Any] = {
    "enabled": True,
    "channels": {"sms": False},
    "workflows": {"comment.created": {"enabled": None, "channels": {"email": False}}},
    "commercial_consent": False,
    "quiet_hours": [
        {"start": "22:00", "end": "07:00", "days": ["mon", "tue", "wed", "thu", "fri"]}
    ],
}
PreferencesBody = Annotated[
    dict[str, Any],
    Body(
        description="The preferences document: `enabled`, `channels`, `workflows`, "
        "`commercial_consent`, `quiet_hours`; every key optional.",
        examples=[EXAMPLE],
    ),
]
PatchBody = Annotated[
    dict[str, Any],
    Body(
        description="A JSON Merge Patch (RFC 7396) of the preferences document: objects "
        "merge key by key, `null` removes a choice (its default applies again), lists "
        "(`quiet_hours`) are replaced whole.",
        examples=[{"workflows": {"comment.created": {"channels": {"sms": False}}}}],
    ),
]


class WorkflowPreferenceOut(BaseModel):
    enabled: bool | None = Field(description="null: no choice, the workflow runs")
    channels: dict[str, bool]


class QuietHoursOut(BaseModel):
    start: str = Field(description="HH:MM, local time")
    end: str = Field(description="HH:MM; not after start: crosses midnight")
    days: list[str]
    channels: list[str]


class PreferencesOut(BaseModel):
    enabled: bool
    channels: dict[str, bool]
    workflows: dict[str, WorkflowPreferenceOut]
    commercial_consent: bool
    quiet_hours: list[QuietHoursOut]

    @classmethod
    def of(cls, prefs: Preferences) -> PreferencesOut:
        return cls.model_validate(preferences_to_json(prefs))


class SuppressionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channel: SuppressChannel
    address: Annotated[str, Field(min_length=1, max_length=1024)]
    reason: Reason = "manual"
    detail: Annotated[str, Field(max_length=1000)] = ""


class SuppressionOut(BaseModel):
    channel: str
    address: str
    reason: str
    detail: str
    created_at: datetime

    @classmethod
    def of(cls, s: Suppression) -> SuppressionOut:
        return cls(
            channel=s.channel,
            address=s.address,
            reason=s.reason,
            detail=s.detail,
            created_at=datetime.fromtimestamp(s.created_at, UTC),
        )


class SuppressionAdded(BaseModel):
    channel: str
    address: str = Field(description="As stored: email lowercased, phone numbers in E.164.")
    added: bool = Field(description="false: it was already suppressed (first reason kept)")


class SuppressionPageOut(BaseModel):
    items: list[SuppressionOut]
    next_after: str | None = Field(description="Pass as `after` for the next page; null at end.")


def _routes(router: APIRouter, who: Callable[..., Awaitable[str]]) -> None:
    # The dependency is a default value, as in api/inbox.py.
    @router.get("", responses=PROBLEM, summary="The subscriber's preferences")
    async def get_preferences(request: Request, subscriber: str = Depends(who)) -> PreferencesOut:
        return PreferencesOut.of(await services(request).preferences.get(subscriber))

    @router.put("", responses=PROBLEM, summary="Replace the preferences")
    async def put_preferences(
        request: Request, body: PreferencesBody, subscriber: str = Depends(who)
    ) -> PreferencesOut:
        return PreferencesOut.of(await services(request).preferences.put(subscriber, body))

    @router.patch("", responses=PROBLEM, summary="Change some preferences (JSON Merge Patch)")
    async def patch_preferences(
        request: Request, body: PatchBody, subscriber: str = Depends(who)
    ) -> PreferencesOut:
        return PreferencesOut.of(await services(request).preferences.patch(subscriber, body))


# --- server: an API key acts for any subscriber ---------------------------------------------

server = APIRouter(
    prefix="/v1/subscribers/{subscriber_id}/preferences",
    tags=["preferences"],
    dependencies=[Depends(require(Scope.PUBLISH))],
)


async def _path_subscriber(subscriber_id: SubscriberId) -> str:
    return subscriber_id


_routes(server, _path_subscriber)

# --- browser: the subscriber a token or an HMAC names ---------------------------------------

browser = APIRouter(prefix="/v1/inbox/preferences", tags=["inbox (browser)"])
_routes(browser, credential_subscriber)

# --- the suppression list -------------------------------------------------------------------

suppressions = APIRouter(
    prefix="/v1/suppressions",
    tags=["suppressions"],
    dependencies=[Depends(require(Scope.PUBLISH))],
)


@suppressions.get("", responses=PROBLEM, summary="Suppressed addresses by channel and address")
async def list_suppressions(
    request: Request,
    channel: SuppressChannel | None = None,
    after: Annotated[str | None, Query(max_length=1100)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> SuppressionPageOut:
    page = await services(request).preferences.list_suppressions(
        channel=channel, after=after, limit=limit
    )
    return SuppressionPageOut(
        items=[SuppressionOut.of(s) for s in page.items], next_after=page.next_after
    )


@suppressions.post("", responses=PROBLEM, summary="Suppress an address (idempotent)")
async def add_suppression(
    request: Request, response: Response, body: SuppressionIn
) -> SuppressionAdded:
    address, added = await services(request).preferences.suppress(
        body.channel, body.address, body.reason, body.detail
    )
    response.status_code = 201 if added else 200
    return SuppressionAdded(channel=body.channel, address=address, added=added)


@suppressions.delete(
    "/{channel}/{address:path}",
    status_code=204,
    responses=PROBLEM,
    summary="Take an address off the list (404 if it is not on it)",
)
async def remove_suppression(
    request: Request,
    channel: SuppressChannel,
    address: Annotated[str, Path(min_length=1, max_length=1024)],
) -> Response:
    await services(request).preferences.unsuppress(channel, address)
    return Response(status_code=204)
