"""In-app inbox API, twice: for the server and for the subscriber's browser.

- `/v1/subscribers/{id}/inbox...` with an API key (scope `publish`): act for any subscriber,
  and add items.
- `/v1/inbox...` for the browser, as the subscriber a credential names: `Authorization:
  Bearer <subscriber token>` (from `POST /v1/subscribers/{id}/token`, or any gateway
  connection token), or `X-Subscriber-Id` with `X-Subscriber-Hash` =
  hex(HMAC-SHA256(inbox.hmac_secret, id)). A subscriber sees only its own items: another
  subscriber's item id is 404.

Both serve the same routes below their base: `GET` (the feed), `GET /counts`,
`GET /items/{item_id}`, `POST /items/{item_id}/{action}` and `POST /mark` (bulk)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tidings.api.auth import bearer, require, services
from tidings.api.subscribers import PROBLEM, SubscriberId
from tidings.errors import Unauthorized
from tidings.ports.inbox import Archived, Counts, InboxItem, Mark, Status
from tidings.services.inbox import Feed, item_json
from tidings.types import Scope

ItemId = Annotated[str, Path(min_length=1, max_length=64)]


class ItemIn(BaseModel):
    """A message for the subscriber's inbox. With `event_id` the add is idempotent per
    (event_id, subscriber, step): a retry answers 200 with the stored item."""

    model_config = ConfigDict(extra="forbid")
    title: Annotated[str, Field(min_length=1, max_length=500)]
    body: Annotated[str, Field(max_length=10_000)] = ""
    action_url: Annotated[str, Field(max_length=2048)] | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    event_id: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    workflow: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    step: Annotated[str, Field(min_length=1, max_length=100)] | None = None


class ItemOut(BaseModel):
    id: str
    subscriber: str
    title: str
    body: str
    action_url: str | None
    data: dict[str, Any]
    event_id: str | None
    workflow: str | None
    step: str | None
    created_at: str
    seen_at: str | None
    read_at: str | None
    archived_at: str | None

    @classmethod
    def of(cls, item: InboxItem) -> ItemOut:
        return cls(**item_json(item))


class CountsOut(BaseModel):
    unread: int
    unseen: int

    @classmethod
    def of(cls, c: Counts) -> CountsOut:
        return cls(unread=c.unread, unseen=c.unseen)


class FeedOut(BaseModel):
    items: list[ItemOut]
    next_cursor: str | None = Field(description="Older items: pass as `cursor`; null at the end.")
    watermark: str | None = Field(
        description="Names the newest item of this page: `POST .../mark` with `until` marks "
        "it and everything older, not what arrived since."
    )
    counts: CountsOut
    channel: str = Field(description="The live channel: `item` and `counts` messages.")

    @classmethod
    def of(cls, feed: Feed, channel: str) -> FeedOut:
        return cls(
            items=[ItemOut.of(i) for i in feed.items],
            next_cursor=feed.next_cursor,
            watermark=feed.watermark,
            counts=CountsOut.of(feed.counts),
            channel=channel,
        )


class MarkIn(BaseModel):
    """Mark the listed `ids`, or every item up to the `until` watermark, or (neither) every
    item of the subscriber."""

    model_config = ConfigDict(extra="forbid")
    action: Mark
    ids: (
        Annotated[
            list[Annotated[str, Field(min_length=1, max_length=64)]],
            Field(min_length=1, max_length=1000),
        ]
        | None
    ) = None
    until: Annotated[str, Field(max_length=1024)] | None = None

    @model_validator(mode="after")
    def _one(self) -> MarkIn:
        if self.ids is not None and self.until is not None:
            raise ValueError("give ids or until, not both")
        return self


class MarkOut(BaseModel):
    changed: int
    counts: CountsOut


def _routes(router: APIRouter, who: Callable[..., Awaitable[str]]) -> None:
    # The dependency is a default value: with postponed annotations FastAPI resolves names
    # in the module, where a local `Annotated` alias would not be found.
    @router.get("", responses=PROBLEM, summary="The feed, newest first")
    async def feed(
        request: Request,
        subscriber: str = Depends(who),
        status: Status = Status.ALL,
        archived: Archived = Archived.EXCLUDE,
        cursor: Annotated[str | None, Query(max_length=1024)] = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
    ) -> FeedOut:
        inbox = services(request).inbox
        found = await inbox.feed(
            subscriber, status=status, archived=archived, cursor=cursor, limit=limit
        )
        return FeedOut.of(found, inbox.channel(subscriber))

    @router.get("/counts", responses=PROBLEM, summary="Unread and unseen (not archived)")
    async def counts(request: Request, subscriber: str = Depends(who)) -> CountsOut:
        return CountsOut.of(await services(request).inbox.counts(subscriber))

    @router.get("/items/{item_id}", responses=PROBLEM)
    async def get_item(
        request: Request, item_id: ItemId, subscriber: str = Depends(who)
    ) -> ItemOut:
        return ItemOut.of(await services(request).inbox.get(subscriber, item_id))

    @router.post("/items/{item_id}/{action}", responses=PROBLEM, summary="Mark one item")
    async def mark_one(
        request: Request, item_id: ItemId, action: Mark, subscriber: str = Depends(who)
    ) -> ItemOut:
        return ItemOut.of(await services(request).inbox.mark_one(subscriber, item_id, action))

    @router.post("/mark", responses=PROBLEM, summary="Mark many: ids, or all up to a watermark")
    async def mark(request: Request, body: MarkIn, subscriber: str = Depends(who)) -> MarkOut:
        inbox = services(request).inbox
        changed = await inbox.mark(subscriber, body.action, ids=body.ids, until=body.until)
        return MarkOut(changed=changed, counts=CountsOut.of(await inbox.counts(subscriber)))


# --- server: an API key acts for any subscriber ---------------------------------------------

server = APIRouter(
    prefix="/v1/subscribers/{subscriber_id}/inbox",
    tags=["inbox"],
    dependencies=[Depends(require(Scope.PUBLISH))],
)


async def _path_subscriber(subscriber_id: SubscriberId) -> str:
    return subscriber_id


@server.post("", responses=PROBLEM, summary="Add an item (idempotent with event_id)")
async def add_item(
    request: Request, response: Response, subscriber_id: SubscriberId, body: ItemIn
) -> ItemOut:
    item, created = await services(request).inbox.add(
        subscriber_id,
        title=body.title,
        body=body.body,
        action_url=body.action_url,
        data=body.data,
        event_id=body.event_id,
        workflow=body.workflow,
        step=body.step,
    )
    response.status_code = 201 if created else 200
    return ItemOut.of(item)


_routes(server, _path_subscriber)


# --- browser: the subscriber a token or an HMAC names ---------------------------------------

browser = APIRouter(prefix="/v1/inbox", tags=["inbox (browser)"])


async def _credential_subscriber(
    request: Request,
    subscriber_id: Annotated[str | None, Header(alias="X-Subscriber-Id", max_length=200)] = None,
    subscriber_hash: Annotated[
        str | None, Header(alias="X-Subscriber-Hash", max_length=128)
    ] = None,
) -> str:
    auth = services(request).subscriber_auth
    credentials: HTTPAuthorizationCredentials | None = await bearer(request)
    if credentials is not None:
        if credentials.credentials.startswith("tdg_"):
            raise Unauthorized(
                "an API key acts for subscribers at /v1/subscribers/{id}/inbox, not here"
            )
        return auth.verify_token(credentials.credentials)
    if subscriber_id is not None and subscriber_hash is not None:
        return auth.verify_hash(subscriber_id, subscriber_hash)
    raise Unauthorized(
        "send 'Authorization: Bearer <subscriber token>' or X-Subscriber-Id with X-Subscriber-Hash"
    )


_routes(browser, _credential_subscriber)
