"""User presence across devices, from timestamps (pure).

Each device (one client connection, or a device the application reports for) keeps two times:
its last heartbeat (the connection is alive) and its last activity (the user did something on
it), plus whether it is in the foreground. A user's status is aggregated over all devices, as
Zulip does, and only from those times, so every gateway that reads the same entries agrees:

- a device is **active** when it is in the foreground and had activity within `idle_after`;
- **idle** when it is alive but backgrounded or without recent activity;
- **probably_offline** when its heartbeat is older than `probably_offline_after` (a missed
  heartbeat or two, a reconnect in progress);
- **offline** when its heartbeat is older than `offline_after`.

The user takes the best status of their devices (desktop active + phone in the background =
active). The grace periods are what keep the state from flapping: heartbeats every 20 s with
any jitter under 25 s never make a device even probably offline, and a page reload (a
disconnect and a new connection within seconds) never makes the user offline. `user.online`
and `user.offline` are the transitions between offline and anything else.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass

from tidings.errors import InvalidInput
from tidings.records import record


class Status(enum.IntEnum):
    """Ordered: a higher value is more present."""

    OFFLINE = 0
    PROBABLY_OFFLINE = 1
    IDLE = 2
    ACTIVE = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@record
class PresenceConfig:
    idle_after: float = 120.0  # seconds without activity on a device
    probably_offline_after: float = 45.0  # seconds without a heartbeat
    offline_after: float = 90.0  # seconds without a heartbeat
    last_seen_interval: float = 60.0  # at most one last-seen write per user per interval
    update_interval: float = 5.0  # at most one status push per user per interval
    typing_ttl: float = 6.0  # a typing indicator dies this long after its last start
    typing_throttle: float = 3.0  # repeated starts within this are not sent again
    typing_max_members: int = 200  # no typing in channels with more users than this
    max_devices: int = 16  # connections of one user that count as devices, per gateway
    max_contacts: int = 1000  # users on one contact list

    def __post_init__(self) -> None:
        if not 0 < self.probably_offline_after < self.offline_after:
            raise InvalidInput(
                "need 0 < probably_offline_after < offline_after", field="probably_offline_after"
            )
        for name in ("max_devices", "max_contacts"):
            if getattr(self, name) < 1:
                raise InvalidInput(f"{name} must be >= 1", field=name)
        for name in ("idle_after", "last_seen_interval", "typing_ttl"):
            if getattr(self, name) <= 0:
                raise InvalidInput(f"{name} must be > 0", field=name)
        if self.typing_throttle < 0 or self.typing_throttle >= self.typing_ttl:
            raise InvalidInput("need 0 <= typing_throttle < typing_ttl", field="typing_throttle")


@record
class Device:
    """One device of a user as last reported. Times are Unix seconds."""

    id: str
    heartbeat_at: float
    active_at: float
    foreground: bool = True
    connected: bool = True
    kind: str = "web"  # web, ios, android, desktop, ... as the client says
    channels: tuple[str, ...] = ()  # its presence-enabled subscriptions

    def status(self, now: float, cfg: PresenceConfig) -> Status:
        silent = now - self.heartbeat_at
        if silent >= cfg.offline_after:
            return Status.OFFLINE
        if silent >= cfg.probably_offline_after:
            return Status.PROBABLY_OFFLINE
        if self.foreground and now - self.active_at < cfg.idle_after:
            return Status.ACTIVE
        return Status.IDLE


@record
class UserPresence:
    user: str
    status: Status
    devices: tuple[tuple[Device, Status], ...]  # live ones (not offline), best first
    last_seen: float | None  # newest heartbeat or activity known

    @property
    def online(self) -> bool:
        return self.status is not Status.OFFLINE

    @property
    def reachable(self) -> tuple[Device, ...]:
        """Devices connected now (a live message would reach them)."""
        return tuple(d for d, s in self.devices if d.connected and s >= Status.IDLE)


def aggregate(
    user: str,
    devices: Iterable[Device],
    now: float,
    cfg: PresenceConfig,
    last_seen: float | None = None,
) -> UserPresence:
    """The user's presence from their devices' reports (and a stored last-seen time)."""
    rated = sorted(
        ((d, d.status(now, cfg)) for d in devices),
        key=lambda pair: (pair[1], pair[0].active_at),
        reverse=True,
    )
    live = tuple((d, s) for d, s in rated if s is not Status.OFFLINE)
    status = live[0][1] if live else Status.OFFLINE
    seen = [last_seen] if last_seen is not None else []
    seen += [max(d.heartbeat_at, d.active_at) for d, _ in rated]
    return UserPresence(user, status, live, max(seen) if seen else None)


@record
class Privacy:
    hide_online: bool = False  # others see the user as offline
    hide_last_seen: bool = False  # others do not see when the user was last seen


def as_seen_by(presence: UserPresence, privacy: Privacy, *, self_view: bool) -> UserPresence:
    """What another user may see: hidden online state looks offline, with no devices."""
    if self_view:
        return presence
    status, devices = presence.status, presence.devices
    if privacy.hide_online:
        status, devices = Status.OFFLINE, ()
    last_seen = None if privacy.hide_last_seen else presence.last_seen
    return UserPresence(presence.user, status, devices, last_seen)


# A contact is told through its personal channel `<namespace>:#<contact>`, so its id must be
# a valid channel user: channel characters without the separators `#` and `,`.
_CONTACT_RE = re.compile(r"[A-Za-z0-9_\-.:@$=+!~;/|]{1,200}")


def contact_list(contacts: Iterable[str], cfg: PresenceConfig, *, user: str) -> tuple[str, ...]:
    """A user's contact list as given by the application, checked: sorted, without
    duplicates and without the user themself, at most `max_contacts` entries."""
    out = set()
    for contact in contacts:
        if not isinstance(contact, str) or not _CONTACT_RE.fullmatch(contact):
            raise InvalidInput(
                f"contact {contact!r} must be 1-200 characters of A-Z a-z 0-9 _-.:@$=+!~;/|",
                field="contacts",
            )
        if contact != user:
            out.add(contact)
    if len(out) > cfg.max_contacts:
        raise InvalidInput(
            f"{len(out)} contacts; at most {cfg.max_contacts} are allowed", field="contacts"
        )
    return tuple(sorted(out))


def contact_channel(namespace: str, contact: str) -> str:
    """The personal channel through which `contact` hears of their contacts' presence."""
    return f"{namespace}:#{contact}"


class Throttle:
    """At most one event per key per `interval`; the caller keeps the latest value itself.
    `due(key, now)` is True (and records `now`) when the key may fire. Memory is bounded by
    forgetting keys idle for longer than the interval on `prune`."""

    __slots__ = ("_last", "interval")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}

    def due(self, key: str, now: float) -> bool:
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            return False
        self._last[key] = now
        return True

    def next_at(self, key: str) -> float:
        """When `key` may fire again."""
        last = self._last.get(key)
        return last + self.interval if last is not None else 0.0

    def prune(self, now: float) -> None:
        self._last = {k: t for k, t in self._last.items() if now - t < self.interval}

    def __len__(self) -> int:
        return len(self._last)


@dataclass(slots=True)
class _Typing:
    started_at: float  # last start sent to others
    expires_at: float


class TypingBook:
    """Who is typing where. `start` answers whether to tell the channel (not if the same user
    told it within `typing_throttle`); `stop` whether a stop must go out; `expire` lists the
    indicators whose TTL ran out without a new start, so a client that vanished never stays
    "typing"."""

    def __init__(self, cfg: PresenceConfig) -> None:
        self.cfg = cfg
        self._entries: dict[tuple[str, str], _Typing] = {}

    def start(self, channel: str, user: str, now: float) -> bool:
        key = (channel, user)
        entry = self._entries.get(key)
        if entry is not None and entry.expires_at > now:
            entry.expires_at = now + self.cfg.typing_ttl
            if now - entry.started_at < self.cfg.typing_throttle:
                return False
            entry.started_at = now
            return True
        self._entries[key] = _Typing(now, now + self.cfg.typing_ttl)
        return True

    def stop(self, channel: str, user: str) -> bool:
        return self._entries.pop((channel, user), None) is not None

    def expire(self, now: float) -> list[tuple[str, str]]:
        gone = [key for key, e in self._entries.items() if e.expires_at <= now]
        for key in gone:
            del self._entries[key]
        return gone

    def typing(self, channel: str, now: float) -> list[str]:
        return sorted(
            u for (c, u), e in self._entries.items() if c == channel and e.expires_at > now
        )

    def __len__(self) -> int:
        return len(self._entries)
