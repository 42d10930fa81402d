"""Subscribers and topics API (scope `publish`).

`PUT /v1/subscribers/{id}` creates or replaces a subscriber (201 created, 200 replaced);
`PATCH` changes only the fields given. Lists page with an opaque `cursor` and `limit`
(1..100) and answer `next_cursor` (null on the last page)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from tidings.api.auth import require, services
from tidings.api.problems import problem_responses
from tidings.core.subscribers import ID_PATTERN, MAX_DEVICES, MAX_WEBPUSH
from tidings.ports.subscribers import Subscriber, Topic
from tidings.types import Scope

router = APIRouter(tags=["subscribers"], dependencies=[Depends(require(Scope.PUBLISH))])
PROBLEM = problem_responses(401, 403, 404, 409, 422)
SubscriberId = Annotated[str, Path(min_length=1, max_length=200, pattern=ID_PATTERN)]
TopicKey = Annotated[str, Path(min_length=1, max_length=200, pattern=ID_PATTERN)]
Cursor = Annotated[str | None, Query(max_length=1024)]
Limit = Annotated[int, Query(ge=1, le=100)]
Text = Annotated[str, Field(max_length=1024)]


class DeviceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    platform: Literal["apns", "fcm"]
    token: Annotated[str, Field(min_length=1, max_length=512)]


class WebPushKeys(BaseModel):
    model_config = ConfigDict(extra="forbid")
    p256dh: Annotated[str, Field(max_length=256)]
    auth: Annotated[str, Field(max_length=64)]


class WebPushIn(BaseModel):
    """A browser `PushSubscription.toJSON()`."""

    model_config = ConfigDict(extra="forbid")
    endpoint: Annotated[str, Field(max_length=1024)]
    keys: WebPushKeys
    expirationTime: float | None = None  # the browser's spelling; not stored


class SubscriberIn(BaseModel):
    """A subscriber's profile. `phone` in international form (`+1 415 555 0123`), stored
    E.164; `locale` a BCP 47 tag; `timezone` an IANA name; `data` a JSON object of at
    most `inbox.max_data_bytes` (16 KiB) encoded."""

    model_config = ConfigDict(extra="forbid")
    email: Text | None = None
    phone: Annotated[str, Field(max_length=64)] | None = None
    locale: Annotated[str, Field(max_length=64)] | None = None
    timezone: Annotated[str, Field(max_length=64)] | None = None
    data: dict[str, Any] | None = None
    devices: Annotated[list[DeviceIn], Field(max_length=MAX_DEVICES)] | None = None
    webpush: Annotated[list[WebPushIn], Field(max_length=MAX_WEBPUSH)] | None = None


class DeviceOut(BaseModel):
    platform: str
    token: str


class WebPushOut(BaseModel):
    endpoint: str
    keys: dict[str, str]


class SubscriberOut(BaseModel):
    id: str
    email: str | None
    phone: str | None
    locale: str | None
    timezone: str | None
    data: dict[str, Any]
    devices: list[DeviceOut]
    webpush: list[WebPushOut]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, s: Subscriber) -> SubscriberOut:
        return cls(
            id=s.id,
            email=s.email,
            phone=s.phone,
            locale=s.locale,
            timezone=s.timezone,
            data=s.data,
            devices=[DeviceOut(platform=d.platform.value, token=d.token) for d in s.devices],
            webpush=[
                WebPushOut(endpoint=w.endpoint, keys={"p256dh": w.p256dh, "auth": w.auth})
                for w in s.webpush
            ],
            created_at=_dt(s.created_at),
            updated_at=_dt(s.updated_at),
        )


class SubscriberPage(BaseModel):
    items: list[SubscriberOut]
    next_cursor: str | None


class Deleted(BaseModel):
    id: str
    inbox_items_deleted: int


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ttl: Annotated[float, Field(ge=1, le=86400)] | None = Field(
        default=None, description="Seconds; default `inbox.token_ttl`."
    )


class TokenOut(BaseModel):
    token: str = Field(description="HS256 JWT, sub = subscriber id; also a gateway token.")
    expires_at: datetime
    channel: str = Field(description="The subscriber's personal inbox channel.")


class TopicIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: Annotated[str, Field(min_length=1, max_length=200, pattern=ID_PATTERN)]
    name: Annotated[str, Field(min_length=1, max_length=200)] | None = None


class TopicOut(BaseModel):
    key: str
    name: str
    created_at: datetime
    members: int | None = None

    @classmethod
    def of(cls, t: Topic, members: int | None = None) -> TopicOut:
        return cls(key=t.key, name=t.name, created_at=_dt(t.created_at), members=members)


class TopicPage(BaseModel):
    items: list[TopicOut]
    next_cursor: str | None


class MembersIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subscribers: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=200)]],
        Field(min_length=1, max_length=1000),
    ]


class MembersPage(BaseModel):
    items: list[str]
    next_cursor: str | None


class Added(BaseModel):
    added: int


class Removed(BaseModel):
    removed: int


def _dt(at: float) -> datetime:
    return datetime.fromtimestamp(at, UTC)


# --- subscribers ---------------------------------------------------------------------------


@router.put("/v1/subscribers/{subscriber_id}", responses=PROBLEM, summary="Create or replace")
async def put_subscriber(
    request: Request, response: Response, subscriber_id: SubscriberId, body: SubscriberIn
) -> SubscriberOut:
    s, created = await services(request).subscribers.put(
        subscriber_id, body.model_dump(exclude_unset=True)
    )
    response.status_code = 201 if created else 200
    return SubscriberOut.of(s)


@router.patch("/v1/subscribers/{subscriber_id}", responses=PROBLEM, summary="Change fields")
async def patch_subscriber(
    request: Request, subscriber_id: SubscriberId, body: SubscriberIn
) -> SubscriberOut:
    s = await services(request).subscribers.patch(
        subscriber_id, body.model_dump(exclude_unset=True)
    )
    return SubscriberOut.of(s)


@router.get("/v1/subscribers/{subscriber_id}", responses=PROBLEM)
async def get_subscriber(request: Request, subscriber_id: SubscriberId) -> SubscriberOut:
    return SubscriberOut.of(await services(request).subscribers.get(subscriber_id))


@router.delete(
    "/v1/subscribers/{subscriber_id}",
    responses=PROBLEM,
    summary="Erase: profile, devices, topic memberships and inbox",
)
async def delete_subscriber(request: Request, subscriber_id: SubscriberId) -> Deleted:
    purged = await services(request).subscribers.delete(subscriber_id)
    return Deleted(id=subscriber_id, inbox_items_deleted=purged)


@router.get("/v1/subscribers", responses=PROBLEM, summary="Subscribers by id, paged")
async def list_subscribers(
    request: Request, cursor: Cursor = None, limit: Limit = 50
) -> SubscriberPage:
    page = await services(request).subscribers.page(cursor, limit)
    return SubscriberPage(
        items=[SubscriberOut.of(s) for s in page.items], next_cursor=page.next_cursor
    )


@router.post(
    "/v1/subscribers/{subscriber_id}/token",
    responses=PROBLEM,
    summary="A short-lived token for the subscriber's browser (inbox and gateway)",
)
async def subscriber_token(
    request: Request, subscriber_id: SubscriberId, body: TokenIn | None = None
) -> TokenOut:
    svc = services(request)
    token, expires = svc.subscriber_auth.issue(subscriber_id, body.ttl if body else None)
    return TokenOut(token=token, expires_at=_dt(expires), channel=svc.inbox.channel(subscriber_id))


# --- topics --------------------------------------------------------------------------------


@router.post("/v1/topics", status_code=201, responses=PROBLEM, tags=["topics"])
async def create_topic(request: Request, body: TopicIn) -> TopicOut:
    return TopicOut.of(await services(request).subscribers.create_topic(body.key, body.name), 0)


@router.get("/v1/topics", responses=PROBLEM, tags=["topics"])
async def list_topics(request: Request, cursor: Cursor = None, limit: Limit = 50) -> TopicPage:
    page = await services(request).subscribers.topic_page(cursor, limit)
    return TopicPage(items=[TopicOut.of(t) for t in page.items], next_cursor=page.next_cursor)


@router.get("/v1/topics/{key}", responses=PROBLEM, tags=["topics"])
async def get_topic(request: Request, key: TopicKey) -> TopicOut:
    topic, members = await services(request).subscribers.get_topic(key)
    return TopicOut.of(topic, members)


@router.delete("/v1/topics/{key}", status_code=204, responses=PROBLEM, tags=["topics"])
async def delete_topic(request: Request, key: TopicKey) -> Response:
    await services(request).subscribers.delete_topic(key)
    return Response(status_code=204)


@router.post(
    "/v1/topics/{key}/subscribers",
    responses=PROBLEM,
    tags=["topics"],
    summary="Add subscribers (idempotent; unknown ids: 422 and nobody is added)",
)
async def add_members(request: Request, key: TopicKey, body: MembersIn) -> Added:
    added = await services(request).subscribers.add_members(key, body.subscribers)
    return Added(added=added)


@router.post(
    "/v1/topics/{key}/subscribers/remove",
    responses=PROBLEM,
    tags=["topics"],
    summary="Remove subscribers (idempotent)",
)
async def remove_members(request: Request, key: TopicKey, body: MembersIn) -> Removed:
    removed = await services(request).subscribers.remove_members(key, body.subscribers)
    return Removed(removed=removed)


@router.get("/v1/topics/{key}/subscribers", responses=PROBLEM, tags=["topics"])
async def list_members(
    request: Request, key: TopicKey, cursor: Cursor = None, limit: Limit = 100
) -> MembersPage:
    page = await services(request).subscribers.members(key, cursor, limit)
    return MembersPage(items=page.items, next_cursor=page.next_cursor)
