"""Server API of the real-time gateway: publish, broadcast, history, presence, channels,
disconnect. Scope `publish` (admin includes it)."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from tidings.api.auth import require, services
from tidings.api.problems import problem_responses
from tidings.api.schemas import ChannelName
from tidings.core.protocol.codes import Disconnect, DisconnectCode, reconnects
from tidings.types import ClientInfo, Publication, Scope, StreamPosition

router = APIRouter(
    prefix="/v1/realtime", tags=["realtime"], dependencies=[Depends(require(Scope.PUBLISH))]
)
PROBLEM = problem_responses(401, 403, 404, 422)


class PublishIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channel: ChannelName
    data: Any = Field(description="Any JSON value; subscribers receive it as is.")
    idempotency_key: Annotated[str, Field(min_length=1, max_length=255)] | None = None


class BroadcastIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channels: Annotated[list[ChannelName], Field(min_length=1, max_length=1000)]
    data: Any


class DisconnectIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: Annotated[str, Field(min_length=1, max_length=200)]
    code: int = Field(default=int(DisconnectCode.FORCE_NO_RECONNECT), ge=3000, le=4999)
    reason: Annotated[str, Field(max_length=100)] = "disconnected by the server"


class PublicationOut(BaseModel):
    channel: str
    epoch: str
    offset: int
    data: Any = None
    user: str | None = None

    @classmethod
    def of(cls, pub: Publication, *, with_data: bool = False) -> PublicationOut:
        return cls(
            channel=pub.channel,
            epoch=pub.epoch,
            offset=pub.offset,
            data=orjson.loads(pub.data) if with_data and pub.data else None,
            user=pub.info.user if pub.info else None,
        )


class HistoryOut(BaseModel):
    epoch: str
    offset: int
    publications: list[PublicationOut]


class ClientOut(BaseModel):
    client: str
    user: str
    conn_info: Any = None

    @classmethod
    def of(cls, info: ClientInfo) -> ClientOut:
        return cls(
            client=info.client,
            user=info.user,
            conn_info=orjson.loads(info.conn_info) if info.conn_info else None,
        )


def _encode(data: Any) -> bytes:
    return orjson.dumps(data)


@router.post("/publish", responses=PROBLEM, summary="Publish to one channel")
async def publish(request: Request, body: PublishIn) -> PublicationOut:
    pub = await services(request).hub.publish(
        body.channel, _encode(body.data), idempotency_key=body.idempotency_key
    )
    return PublicationOut.of(pub)


@router.post("/broadcast", responses=PROBLEM, summary="One publication to many channels")
async def broadcast(request: Request, body: BroadcastIn) -> list[PublicationOut]:
    hub = services(request).hub
    for ch in body.channels:
        hub.channels.options(ch)  # all names valid before anything is published
    pubs = await hub.broadcast(body.channels, _encode(body.data))
    return [PublicationOut.of(p) for p in pubs]


@router.get("/channels/{channel}/history", responses=PROBLEM, summary="A channel's history")
async def history(
    request: Request,
    channel: str,
    limit: Annotated[int, Query(ge=-1, le=10_000)] = 100,
    since_offset: Annotated[int | None, Query(ge=0)] = None,
    since_epoch: str | None = None,
) -> HistoryOut:
    since = None
    if since_offset is not None or since_epoch is not None:
        since = StreamPosition(since_offset or 0, since_epoch or "")
    result = await services(request).hub.history(channel, since=since, limit=limit)
    return HistoryOut(
        epoch=result.position.epoch,
        offset=result.position.offset,
        publications=[PublicationOut.of(p, with_data=True) for p in result.publications],
    )


@router.get("/channels/{channel}/presence", responses=PROBLEM, summary="Who is in a channel")
async def presence(request: Request, channel: str) -> list[ClientOut]:
    clients = await services(request).hub.presence(channel)
    return [ClientOut.of(info) for info in clients.values()]


@router.get("/channels/{channel}/presence_stats", responses=PROBLEM)
async def presence_stats(request: Request, channel: str) -> dict[str, int]:
    stats = await services(request).hub.presence_stats(channel)
    return {"num_clients": stats.num_clients, "num_users": stats.num_users}


@router.get("/channels", summary="Channels with subscribers on this node")
async def channels(request: Request) -> dict[str, int]:
    hub = services(request).hub
    return {ch: hub.local_subscribers(ch) for ch in hub.channel_names()}


@router.post("/disconnect", responses=PROBLEM, summary="Disconnect a user's connections")
async def disconnect(request: Request, body: DisconnectIn) -> dict[str, Any]:
    count = services(request).hub.disconnect_user(body.user, Disconnect(body.code, body.reason))
    return {"disconnected": count, "reconnect": reconnects(body.code)}
