"""User presence across devices, typing, and the hand-off to notifications.

`OnlineService` keeps device reports in a `DeviceStore` shared by every gateway, aggregates
them with the pure rules of `core.online`, and:

- marks users online and offline (after the grace period) with one atomic flip in the store,
  so exactly one gateway emits the authoritative `user.online` / `user.offline` event through
  the event ingest (idempotency key `presence:<user>:<transition number>`);
- writes last seen to the database at most once per `last_seen_interval` per user, never on
  every heartbeat, gathered and written in one batch per sweep;
- tells only those who care: a status change goes as an ephemeral publication (no history,
  no offset; tag `tidings: presence`) to the user's presence-enabled channels and to the
  personal channel `<contacts namespace>:#<contact>` of each user on the contact list the
  application gave, at most one per `update_interval` per user, the newest state winning (a
  change inside the interval goes out with the first sweep after it); nothing for users who
  hide their state;
- runs typing indicators: start/stop as ephemeral publications (tag `tidings: typing`),
  repeated starts throttled, stopped by TTL when a client goes quiet, refused in channels
  with more than `typing_max_members` users;
- answers "is this user reachable live now, on which devices" for the orchestrator.

`GatewayPresence` connects it to the gateway: a client connection is a device; the hub's
heartbeat visits refresh it; its `rpc` commands `presence.state` and `typing` report the
foreground state, activity and typing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable

import orjson

from tidings.core.online import (
    Device,
    PresenceConfig,
    Privacy,
    Status,
    Throttle,
    TypingBook,
    UserPresence,
    aggregate,
    as_seen_by,
    contact_channel,
    contact_list,
)
from tidings.errors import Forbidden, InvalidInput, NotFound
from tidings.ports.clock import Clock
from tidings.ports.online import DeviceStore, PresenceRecords
from tidings.records import record
from tidings.services.gateway import ClientConnection, Hub
from tidings.tasks import cancel

log = logging.getLogger(__name__)

# (event type, idempotency key, payload) -> persisted once
Emit = Callable[[str, str, dict[str, object]], Awaitable[None]]
# (channel, JSON data, tags) -> an ephemeral publication
Publish = Callable[[str, bytes, dict[str, str]], Awaitable[object]]
# channel -> number of users in it
Members = Callable[[str], Awaitable[int]]

DEVICE_TTL_MARGIN = 30.0
PRIVACY_REFRESH = 30.0
CONTACTS_REFRESH = 30.0


@record
class Counters:
    reports: int
    store_writes: int
    last_seen_writes: int
    updates_sent: int
    typing_sent: int


class OnlineService:
    def __init__(
        self,
        devices: DeviceStore,
        records: PresenceRecords,
        clock: Clock,
        config: PresenceConfig | None = None,
        *,
        emit: Emit | None = None,
        publish: Publish | None = None,
        members: Members | None = None,
        contacts_namespace: str | None = None,
    ) -> None:
        self.devices = devices
        self.records = records
        self.clock = clock
        self.config = config or PresenceConfig()
        self._emit = emit
        self._publish = publish
        self._members = members
        self.contacts_namespace = contacts_namespace
        self._contacts: dict[str, tuple[tuple[str, ...], float]] = {}  # user -> (list, until)
        self._seen = Throttle(self.config.last_seen_interval)
        self._seen_pending: dict[str, float] = {}  # written in batches by the sweep
        self._online_until: dict[str, float] = {}
        self._hidden_users: set[str] = set()
        self._hidden_until = 0.0
        self._updates = Throttle(self.config.update_interval)
        self._sent_status: dict[str, Status] = {}  # last status pushed per user
        self._pending_update: dict[str, float] = {}  # user -> when the push may go
        self._typing = TypingBook(self.config)
        self._task: asyncio.Task[None] | None = None
        self._reports = self._store_writes = self._seen_writes = 0
        self._updates_sent = self._typing_sent = 0

    # --- life ------------------------------------------------------------------------------

    def start(self, every: float = 2.0) -> None:
        self._task = asyncio.get_running_loop().create_task(self._sweep_loop(every))

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
        self._pending_update.clear()

    def counters(self) -> Counters:
        return Counters(
            self._reports,
            self._store_writes,
            self._seen_writes,
            self._updates_sent,
            self._typing_sent,
        )

    # --- reports ---------------------------------------------------------------------------

    async def report(self, user: str, device: Device) -> UserPresence:
        """Store a device's report and act on what changed for the user."""
        self._reports += 1
        ttl = self.config.offline_after + DEVICE_TTL_MARGIN
        devices = await self.devices.put(user, device, ttl)
        self._store_writes += 1
        now = self.clock.now()
        if self._seen.due(user, now):
            self._seen_pending[user] = max(device.heartbeat_at, device.active_at)
        presence = aggregate(user, devices, now, self.config)
        if presence.online and not self._surely_online(user, now):
            n = await self.devices.mark(user, True)
            if n is not None:
                await self._transition(user, "user.online", n, presence)
        if device.connected:
            # Until offline_after has passed since this heartbeat, no sweep anywhere can take
            # the user offline: no need to ask the store again.
            self._online_until[user] = device.heartbeat_at + self.config.offline_after
        await self._status_changed(user, presence)
        return presence

    def _surely_online(self, user: str, now: float) -> bool:
        until = self._online_until.get(user)
        return until is not None and now < until

    async def flush_last_seen(self) -> int:
        """Write the last-seen times gathered since the previous flush, in one batch."""
        pending, self._seen_pending = self._seen_pending, {}
        if pending:
            await self.records.save_last_seen_many(pending)
            self._seen_writes += len(pending)
        return len(pending)

    async def _presence(self, user: str, now: float) -> UserPresence:
        return aggregate(user, await self.devices.get(user), now, self.config)

    async def get(self, user: str, *, viewer: str | None = None) -> UserPresence:
        """The user's presence as `viewer` may see it (None: the server, sees everything)."""
        now = self.clock.now()
        devices = await self.devices.get(user)
        presence = aggregate(user, devices, now, self.config, await self.records.last_seen(user))
        if viewer is None:
            return presence
        return as_seen_by(presence, await self.records.privacy(user), self_view=viewer == user)

    async def active(self, user: str) -> bool:
        """Whether the user is active in the app right now: a connected device in the
        foreground with activity within `idle_after` (a tab left in the background, or a
        device idle, is reachable but not active; one that disconnected is neither, though
        its presence lingers until the sweep). The orchestrator skips push while it holds."""
        presence = await self._presence(user, self.clock.now())
        return any(d.connected and s is Status.ACTIVE for d, s in presence.devices)

    async def reachable(self, user: str) -> tuple[Device, ...]:
        """Devices a live message would reach now: the orchestrator holds email while there
        are some (and the user is active), and sends push or email when there are none."""
        return (await self._presence(user, self.clock.now())).reachable

    async def set_privacy(self, user: str, privacy: Privacy) -> None:
        await self.records.set_privacy(user, privacy)
        self._hidden_until = 0.0  # read again before the next push

    async def set_contacts(self, user: str, contacts: list[str]) -> tuple[str, ...]:
        """Replace `user`'s contact list: the users told of their presence changes (besides
        the members of their presence-enabled channels). Returns the list as stored."""
        checked = contact_list(contacts, self.config, user=user)
        await self.records.set_contacts(user, checked)
        self._contacts.pop(user, None)
        return checked

    async def contacts(self, user: str) -> list[str]:
        return await self.records.contacts(user)

    async def _audience(self, user: str) -> tuple[str, ...]:
        """The personal channels of `user`'s contacts, read once per `CONTACTS_REFRESH` per
        user (a change made through another gateway takes at most that long to apply)."""
        if self.contacts_namespace is None:
            return ()
        now = self.clock.now()
        cached = self._contacts.get(user)
        if cached is None or now >= cached[1]:
            listed = tuple(await self.records.contacts(user))
            cached = self._contacts[user] = (listed, now + CONTACTS_REFRESH)
        return tuple(contact_channel(self.contacts_namespace, c) for c in cached[0])

    async def _hidden(self, user: str) -> bool:
        """Whether `user` hides their online state, for fanout decisions. The set of users
        who hide it is read in one query and kept for `PRIVACY_REFRESH` seconds (a change
        made through another gateway takes at most that long to apply to pushes)."""
        now = self.clock.now()
        if now >= self._hidden_until:
            self._hidden_users = await self.records.hidden_users()
            self._hidden_until = now + PRIVACY_REFRESH
        return user in self._hidden_users

    # --- sweeping --------------------------------------------------------------------------

    async def sweep(self) -> int:
        """Take users whose every device went silent offline (whichever gateway they were
        on), and end typing indicators whose TTL ran out. Returns users taken offline."""
        await self.flush_last_seen()
        now = self.clock.now()
        gone = 0
        before = now - self.config.offline_after
        silent = await self.devices.silent_users(before, 1000)
        for user in silent:
            devices = await self.devices.get(user)
            presence = aggregate(user, devices, now, self.config)
            if presence.online:
                continue
            n = await self.devices.mark(user, False, silent_before=before)
            if n is None:
                continue  # another gateway took it
            gone += 1
            self._online_until.pop(user, None)
            seen = max((max(d.heartbeat_at, d.active_at) for d in devices), default=None)
            if seen is not None:
                await self.records.save_last_seen(user, seen)
                self._seen_writes += 1
            await self._transition(user, "user.offline", n, presence)
            channels = {c for d in devices for c in d.channels}
            self._pending_update.pop(user, None)
            await self._push_status(user, presence, channels)
        await self._send_due_updates(now)
        for channel, user in self._typing.expire(now):
            await self._send_typing(channel, user, False)
        self._seen.prune(now)
        self._updates.prune(now)
        self._online_until = {u: t for u, t in self._online_until.items() if t > now}
        self._contacts = {u: c for u, c in self._contacts.items() if c[1] > now}
        return gone

    async def _sweep_loop(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await self.sweep()
            except Exception:
                log.exception("presence sweep failed")

    # --- transitions and fanout ------------------------------------------------------------

    async def _transition(self, user: str, kind: str, n: int, presence: UserPresence) -> None:
        if self._emit is None:
            return
        payload: dict[str, object] = {
            "user": user,
            "at": self.clock.now(),
            "devices": [{"id": d.id, "kind": d.kind} for d, _ in presence.devices],
        }
        await self._emit(kind, f"presence:{user}:{n}", payload)

    async def _status_changed(self, user: str, presence: UserPresence) -> None:
        if self._sent_status.get(user) is presence.status:
            return
        channels = {c for d, _ in presence.devices for c in d.channels}
        now = self.clock.now()
        if self._updates.due(user, now):
            await self._push_status(user, presence, channels)
            return
        # Coalesce: the sweep sends the newest state once the interval has passed.
        self._pending_update.setdefault(user, self._updates.next_at(user))

    async def _send_due_updates(self, now: float) -> None:
        due = [u for u, at in self._pending_update.items() if at <= now]
        for user in due:
            del self._pending_update[user]
            presence = await self._presence(user, now)
            if self._sent_status.get(user) is presence.status or not presence.online:
                continue  # back where it was, or the offline transition tells it
            self._updates.due(user, now)
            channels = {c for d, _ in presence.devices for c in d.channels}
            await self._push_status(user, presence, channels)

    async def _push_status(self, user: str, presence: UserPresence, channels: set[str]) -> None:
        self._sent_status[user] = presence.status
        if presence.status is Status.OFFLINE:
            self._sent_status.pop(user, None)
        if self._publish is None:
            return
        audience = channels.union(await self._audience(user))
        if not audience or await self._hidden(user):
            return
        data = orjson.dumps({"type": "presence", "user": user, "status": presence.status.label})
        for channel in sorted(audience):
            try:
                await self._publish(channel, data, {"tidings": "presence"})
            except Exception:  # best effort: a failed push never fails the report
                log.exception("presence push failed", extra={"channel": channel})
                continue
            self._updates_sent += 1

    # --- typing ----------------------------------------------------------------------------

    async def typing(self, user: str, channel: str, active: bool) -> bool:
        """Start or stop `user` typing in `channel` (the caller checked the subscription and
        that the namespace has presence). Returns whether the channel was told."""
        now = self.clock.now()
        if active:
            if self._members is not None:
                members = await self._members(channel)
                if members > self.config.typing_max_members:
                    raise Forbidden(
                        f"typing is off in channels of more than "
                        f"{self.config.typing_max_members} users",
                        field="channel",
                    )
            if not self._typing.start(channel, user, now):
                return False
            await self._send_typing(channel, user, True)
            return True
        if not self._typing.stop(channel, user):
            return False
        await self._send_typing(channel, user, False)
        return True

    def typing_now(self, channel: str) -> list[str]:
        return self._typing.typing(channel, self.clock.now())

    async def _send_typing(self, channel: str, user: str, active: bool) -> None:
        if self._publish is None:
            return
        body: dict[str, object] = {"type": "typing", "user": user, "typing": active}
        if active:
            body["ttl"] = self.config.typing_ttl
        await self._publish(channel, orjson.dumps(body), {"tidings": "typing"})
        self._typing_sent += 1


def parse_state(data: bytes | None) -> tuple[bool | None, bool]:
    """`presence.state` rpc data: `{"foreground": bool, "active": bool}` (both optional)."""
    body = _object(data)
    foreground, active = body.get("foreground"), body.get("active", False)
    if foreground is not None and not isinstance(foreground, bool):
        raise InvalidInput("foreground must be true or false", field="foreground")
    if not isinstance(active, bool):
        raise InvalidInput("active must be true or false", field="active")
    return foreground, active


def parse_typing(data: bytes | None) -> tuple[str, bool]:
    """`typing` rpc data: `{"channel": str, "typing": bool}` (typing defaults to true)."""
    body = _object(data)
    channel, active = body.get("channel"), body.get("typing", True)
    if not isinstance(channel, str) or not channel:
        raise InvalidInput("channel is required", field="channel")
    if not isinstance(active, bool):
        raise InvalidInput("typing must be true or false", field="typing")
    return channel, active


def _object(data: bytes | None) -> dict[str, object]:
    try:
        body = orjson.loads(data) if data else {}
    except orjson.JSONDecodeError:
        raise InvalidInput("rpc data must be a JSON object", field="data") from None
    if not isinstance(body, dict):
        raise InvalidInput("rpc data must be a JSON object", field="data")
    return body


class GatewayPresence:
    """The gateway's `ConnectionObserver`: each connection of a known user is a device.

    Connect reports the device (foreground, active now); every heartbeat visit of the hub
    refreshes its heartbeat; a disconnect reports it disconnected with its last heartbeat
    kept, so a reload within the grace period is no offline. `rpc` methods:
    `presence.state` `{"foreground": bool, "active": bool}` and `typing`
    `{"channel": str, "typing": bool}` (the client must be subscribed to the channel and its
    namespace must have presence)."""

    def __init__(self, service: OnlineService, hub: Hub) -> None:
        self.service = service
        self.hub = hub
        self._devices: dict[str, Device] = {}  # by client id
        self._per_user: dict[str, set[str]] = {}  # user -> client ids reported as devices
        self._tasks: set[asyncio.Task[object]] = set()

    def _channels(self, client: ClientConnection) -> tuple[str, ...]:
        out = []
        for channel in sorted(client.session.channels):
            with contextlib.suppress(InvalidInput):
                if self.hub.channels.options(channel).presence:
                    out.append(channel)
        return tuple(out)

    def _spawn(self, user: str, device: Device) -> None:
        task: asyncio.Task[object] = asyncio.get_running_loop().create_task(
            self.service.report(user, device)
        )
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("presence report failed", exc_info=task.exception())

    def _track(self, client: ClientConnection) -> bool:
        """Whether this connection counts as one of its user's devices: at most
        `max_devices` connections of one user per gateway do (a service account with
        thousands of connections would otherwise make every report walk all of them)."""
        ids = self._per_user.setdefault(client.user, set())
        if client.id in ids:
            return True
        if len(ids) >= self.service.config.max_devices:
            return False
        ids.add(client.id)
        return True

    def connected(self, client: ClientConnection) -> None:
        if not client.user or not self._track(client):
            return  # anonymous connections have no user presence
        now = self.service.clock.now()
        device = Device(
            id=client.id,
            heartbeat_at=now,
            active_at=now,
            kind=client.name or "client",
            channels=self._channels(client),
        )
        self._devices[client.id] = device
        self._spawn(client.user, device)

    def alive(self, client: ClientConnection) -> None:
        device = self._devices.get(client.id)
        if device is None:
            if client.user and self._track(client):  # a device slot came free
                self.connected(client)
            return
        device = dataclasses.replace(
            device, heartbeat_at=self.service.clock.now(), channels=self._channels(client)
        )
        self._devices[client.id] = device
        self._spawn(client.user, device)

    def gone(self, client: ClientConnection) -> None:
        ids = self._per_user.get(client.user)
        if ids is not None:
            ids.discard(client.id)
            if not ids:
                del self._per_user[client.user]
        device = self._devices.pop(client.id, None)
        if device is not None:
            self._spawn(client.user, dataclasses.replace(device, connected=False))

    async def rpc(self, client: ClientConnection, method: str, data: bytes | None) -> bytes:
        device = self._devices.get(client.id)
        if method == "presence.state":
            if device is None:
                raise Forbidden("this connection is not one of the user's tracked devices")
            foreground, active = parse_state(data)
            now = self.service.clock.now()
            device = dataclasses.replace(
                device,
                heartbeat_at=now,
                active_at=now if active else device.active_at,
                foreground=device.foreground if foreground is None else foreground,
                channels=self._channels(client),
            )
            self._devices[client.id] = device
            presence = await self.service.report(client.user, device)
            return orjson.dumps({"status": presence.status.label})
        if method == "typing":
            if not client.user:
                raise Forbidden("anonymous connections cannot type")
            channel, active = parse_typing(data)
            if not client.session.is_subscribed(channel):
                raise Forbidden(f"not subscribed to {channel}", field="channel")
            if not self.hub.channels.options(channel).presence:
                raise Forbidden(f"{channel} has no presence", field="channel")
            told = await self.service.typing(client.user, channel, active)
            return orjson.dumps({"sent": told})
        raise NotFound(f"unknown rpc method {method!r}")
