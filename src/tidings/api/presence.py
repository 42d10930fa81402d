"""Server API of user presence: a user's state across devices (with privacy applied for a
viewer), privacy settings, contact lists, device reports from the application's backend, and
typing. Scope `publish` (admin includes it)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from tidings.api.auth import require, services
from tidings.api.problems import problem_responses
from tidings.api.schemas import ChannelName
from tidings.core.online import Device, Privacy, UserPresence
from tidings.errors import Conflict, Forbidden
from tidings.types import Scope

router = APIRouter(
    prefix="/v1/presence", tags=["presence"], dependencies=[Depends(require(Scope.PUBLISH))]
)
PROBLEM = problem_responses(401, 403, 422)
UserId = Annotated[str, Field(min_length=1, max_length=200)]
UserPath = Annotated[str, Path(min_length=1, max_length=200)]


class DeviceOut(BaseModel):
    id: str
    kind: str
    status: str
    connected: bool
    foreground: bool
    heartbeat_at: float
    active_at: float


class PresenceOut(BaseModel):
    user: str
    status: str = Field(description="active, idle, probably_offline or offline")
    online: bool
    last_seen: float | None = Field(description="Unix seconds; null if hidden or unknown")
    devices: list[DeviceOut]
    reachable: list[str] = Field(
        description="ids of the devices connected now: a live message would reach them"
    )

    @classmethod
    def of(cls, p: UserPresence) -> PresenceOut:
        return cls(
            user=p.user,
            status=p.status.label,
            online=p.online,
            last_seen=p.last_seen,
            devices=[
                DeviceOut(
                    id=d.id,
                    kind=d.kind,
                    status=s.label,
                    connected=d.connected,
                    foreground=d.foreground,
                    heartbeat_at=d.heartbeat_at,
                    active_at=d.active_at,
                )
                for d, s in p.devices
            ],
            reachable=[d.id for d in p.reachable],
        )


class PrivacyIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    hide_online: bool = False
    hide_last_seen: bool = False


class ContactsIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    contacts: list[str] = Field(
        description="the users told of this user's presence changes, on their personal "
        "channels `<contacts namespace>:#<contact>`; replaces the list"
    )


class ContactsOut(BaseModel):
    user: str
    contacts: list[str]


class DeviceIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    kind: Annotated[str, Field(min_length=1, max_length=40)] = "app"
    foreground: bool = True
    active: bool = Field(default=True, description="the user did something just now")
    connected: bool = True


class TypingIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    channel: ChannelName
    typing: bool = True


@router.get("/users/{user}", responses=PROBLEM, summary="A user's presence across devices")
async def get_presence(
    request: Request,
    user: str,
    viewer: Annotated[
        str | None, Query(max_length=200, description="apply the user's privacy for this viewer")
    ] = None,
) -> PresenceOut:
    return PresenceOut.of(await services(request).online.get(user, viewer=viewer))


@router.put("/users/{user}/privacy", responses=PROBLEM, summary="Hide online state or last seen")
async def put_privacy(request: Request, user: str, body: PrivacyIn) -> PrivacyIn:
    await services(request).online.set_privacy(user, Privacy(body.hide_online, body.hide_last_seen))
    return body


@router.get("/users/{user}/contacts", responses=PROBLEM, summary="A user's contact list")
async def get_contacts(request: Request, user: UserPath) -> ContactsOut:
    return ContactsOut(user=user, contacts=await services(request).online.contacts(user))


@router.put(
    "/users/{user}/contacts", responses=PROBLEM, summary="Replace who hears of a user's presence"
)
async def put_contacts(request: Request, user: UserPath, body: ContactsIn) -> ContactsOut:
    stored = await services(request).online.set_contacts(user, body.contacts)
    return ContactsOut(user=user, contacts=list(stored))


@router.put(
    "/users/{user}/devices/{device}", responses=PROBLEM, summary="Report a device (server side)"
)
async def put_device(request: Request, user: str, device: str, body: DeviceIn) -> PresenceOut:
    online = services(request).online
    now = online.clock.now()
    devices = {d.id: d for d in await online.devices.get(user)}
    known = devices.get(device)
    if known is None and len(devices) >= online.config.max_devices:
        raise Conflict(
            f"user {user} has {len(devices)} devices; the limit is {online.config.max_devices}",
            field="device",
        )
    active_at = now if body.active or known is None else known.active_at
    report = Device(
        id=device,
        heartbeat_at=now,
        active_at=active_at,
        foreground=body.foreground,
        connected=body.connected,
        kind=body.kind,
        channels=known.channels if known is not None else (),
    )
    return PresenceOut.of(await online.report(user, report))


@router.post("/users/{user}/typing", responses=PROBLEM, summary="Start or stop typing")
async def typing(request: Request, user: str, body: TypingIn) -> dict[str, bool]:
    svc = services(request)
    opts = svc.hub.channels.options(body.channel)
    if not opts.presence:
        raise Forbidden(f"{body.channel} has no presence", field="channel")
    return {"sent": await svc.online.typing(user, body.channel, body.typing)}
