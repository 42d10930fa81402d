"""Subscribers and topics: validation, upsert and partial update, cursor pages, and what
deleting a subscriber takes with it.

Every field is checked here (not only in the HTTP schema), so the SDK, the CLI and the
orchestrator get the same rules and the same `InvalidInput(field=...)` errors: phone numbers
are stored in E.164, locales as canonical BCP 47 tags, time zones as IANA names, custom
data as a JSON object of at most `max_data_bytes`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Generic, TypeVar

from tidings.core import subscribers as rules
from tidings.core.paging import decode_cursor, encode_cursor
from tidings.core.subscribers import Device, Platform, WebPushSubscription
from tidings.errors import InvalidInput, NotFound
from tidings.ports.clock import Clock
from tidings.ports.inbox import InboxStore
from tidings.ports.preferences import PreferenceStore
from tidings.ports.subscribers import Subscriber, SubscriberStore, Topic, TopicStore
from tidings.records import record

T = TypeVar("T")
FIELDS = frozenset({"email", "phone", "locale", "timezone", "data", "devices", "webpush"})
MAX_PAGE = 100
MAX_BULK = 1000
_EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")


@record
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None  # None: this was the last page


class SubscriberService:
    def __init__(
        self,
        store: SubscriberStore,
        topics: TopicStore,
        inbox: InboxStore,
        clock: Clock,
        *,
        max_data_bytes: int = rules.MAX_DATA_BYTES,
        preferences: PreferenceStore | None = None,
    ) -> None:
        self.store = store
        self.topics = topics
        self.inbox = inbox
        self.preferences = preferences  # erased with the subscriber
        self.clock = clock
        self.max_data_bytes = max_data_bytes

    # --- subscribers ------------------------------------------------------------------------

    async def put(self, subscriber_id: str, fields: Mapping[str, Any]) -> tuple[Subscriber, bool]:
        """Create or replace the whole subscriber: fields left out are cleared."""
        rules.subscriber_id(subscriber_id)
        values = self._validate(fields)
        now = self.clock.now()
        return await self.store.put(
            Subscriber(id=subscriber_id, created_at=now, updated_at=now, **values)
        )

    async def patch(self, subscriber_id: str, fields: Mapping[str, Any]) -> Subscriber:
        """Change only the given fields. `data` is merged key by key (a key set to null is
        removed); `devices` and `webpush`, when given, replace the lists."""
        current = await self.store.get(subscriber_id)
        merged: dict[str, Any] = {
            "email": current.email,
            "phone": current.phone,
            "locale": current.locale,
            "timezone": current.timezone,
            "data": dict(current.data),
            "devices": [{"platform": d.platform.value, "token": d.token} for d in current.devices],
            "webpush": [
                {"endpoint": w.endpoint, "keys": {"p256dh": w.p256dh, "auth": w.auth}}
                for w in current.webpush
            ],
        }
        for key, value in fields.items():
            if key == "data" and isinstance(value, dict):
                for k, v in value.items():
                    if v is None:
                        merged["data"].pop(k, None)
                    else:
                        merged["data"][k] = v
            else:
                merged[key] = value
        values = self._validate(merged)
        stored, _ = await self.store.put(
            Subscriber(
                id=subscriber_id,
                created_at=current.created_at,
                updated_at=self.clock.now(),
                **values,
            )
        )
        return stored

    async def get(self, subscriber_id: str) -> Subscriber:
        return await self.store.get(subscriber_id)

    async def delete(self, subscriber_id: str) -> int:
        """Erase the subscriber: profile, devices, Web Push subscriptions, topic memberships,
        notification preferences and every inbox item. The inbox goes first, so a retried
        delete after a crash finishes the job. Returns how many inbox items were deleted.

        An id without a profile whose inbox holds items (events may name any valid id) is
        erased too; `NotFound` only when there was nothing at all."""
        try:
            await self.store.get(subscriber_id)
        except NotFound:
            purged = await self.inbox.purge(subscriber_id)
            if not purged:
                raise
            if self.preferences is not None:
                await self.preferences.delete(subscriber_id)
            return purged
        purged = await self.inbox.purge(subscriber_id)
        if self.preferences is not None:
            await self.preferences.delete(subscriber_id)
        await self.store.delete(subscriber_id)
        return purged

    async def page(self, cursor: str | None, limit: int) -> Page[Subscriber]:
        after = _after(cursor)
        limit = _limit(limit)
        found = await self.store.page(after=after, limit=limit + 1)
        return _page(found[:limit], len(found) > limit, lambda s: s.id)

    def _validate(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(fields) - FIELDS)
        if unknown:
            raise InvalidInput("unknown field", field=unknown[0])
        out: dict[str, Any] = {}
        email = fields.get("email")
        if email is not None:
            if not isinstance(email, str) or len(email) > 320 or not _EMAIL_RE.match(email):
                raise InvalidInput("not an email address", field="email")
            local, domain = email.rsplit("@", 1)
            email = f"{local}@{domain.lower()}"
        out["email"] = email
        phone = fields.get("phone")
        out["phone"] = None if phone is None else rules.normalize_phone(_str(phone, "phone"))
        locale = fields.get("locale")
        out["locale"] = None if locale is None else rules.normalize_locale(_str(locale, "locale"))
        tz = fields.get("timezone")
        out["timezone"] = None if tz is None else rules.normalize_timezone(_str(tz, "timezone"))
        data = fields.get("data")
        out["data"] = {} if data is None else rules.check_data(data, self.max_data_bytes)
        out["devices"] = rules.check_devices(_devices(fields.get("devices") or []))
        out["webpush"] = rules.check_webpush(_webpush(fields.get("webpush") or []))
        return out

    # --- topics -----------------------------------------------------------------------------

    async def create_topic(self, key: str, name: str | None = None) -> Topic:
        rules.subscriber_id(key, field="key")
        return await self.topics.create(Topic(key, name or key, self.clock.now()))

    async def get_topic(self, key: str) -> tuple[Topic, int]:
        topic = await self.topics.get(key)
        return topic, await self.topics.count(key)

    async def delete_topic(self, key: str) -> None:
        await self.topics.delete(key)

    async def topic_page(self, cursor: str | None, limit: int) -> Page[Topic]:
        after = _after(cursor)
        limit = _limit(limit)
        found = await self.topics.page(after=after, limit=limit + 1)
        return _page(found[:limit], len(found) > limit, lambda t: t.key)

    async def add_members(self, key: str, subscriber_ids: Sequence[str]) -> int:
        _bulk(subscriber_ids)
        return await self.topics.add_members(key, subscriber_ids, self.clock.now())

    async def remove_members(self, key: str, subscriber_ids: Sequence[str]) -> int:
        _bulk(subscriber_ids)
        return await self.topics.remove_members(key, subscriber_ids)

    async def members(self, key: str, cursor: str | None, limit: int) -> Page[str]:
        after = _after(cursor)
        limit = _limit(limit)
        found = await self.topics.members(key, after=after, limit=limit + 1)
        return _page(found[:limit], len(found) > limit, lambda m: m)

    def iter_members(self, key: str, batch: int = 1000) -> AsyncIterator[list[str]]:
        """Every member of the topic in batches (for fanout), memory bounded by `batch`."""
        return self.topics.iter_members(key, batch=batch)


def _str(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput("must be a string", field=field)
    return value


def _devices(raw: Any) -> list[Device]:
    if not isinstance(raw, list):
        raise InvalidInput("must be a list", field="devices")
    out: list[Device] = []
    for i, d in enumerate(raw):
        if not isinstance(d, Mapping) or set(d) - {"platform", "token"}:
            raise InvalidInput("a device is {platform, token}", field=f"devices.{i}")
        try:
            platform = Platform(str(d.get("platform")))
        except ValueError:
            raise InvalidInput("must be apns or fcm", field=f"devices.{i}.platform") from None
        out.append(Device(platform, _str(d.get("token"), f"devices.{i}.token")))
    return out


def _webpush(raw: Any) -> list[WebPushSubscription]:
    if not isinstance(raw, list):
        raise InvalidInput("must be a list", field="webpush")
    out: list[WebPushSubscription] = []
    for i, s in enumerate(raw):
        where = f"webpush.{i}"
        if not isinstance(s, Mapping) or set(s) - {"endpoint", "keys", "expirationTime"}:
            raise InvalidInput("a subscription is {endpoint, keys: {p256dh, auth}}", field=where)
        keys = s.get("keys")
        if not isinstance(keys, Mapping):
            raise InvalidInput("must be {p256dh, auth}", field=f"{where}.keys")
        out.append(
            WebPushSubscription(
                _str(s.get("endpoint"), f"{where}.endpoint"),
                _str(keys.get("p256dh"), f"{where}.keys.p256dh"),
                _str(keys.get("auth"), f"{where}.keys.auth"),
            )
        )
    return out


def _bulk(ids: Sequence[str]) -> None:
    if not ids:
        raise InvalidInput("give at least one subscriber id", field="subscribers")
    if len(ids) > MAX_BULK:
        raise InvalidInput(f"at most {MAX_BULK} ids per request", field="subscribers")


def _after(cursor: str | None) -> str | None:
    return None if cursor is None else str(decode_cursor(cursor, {"after": str})["after"])


def _limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"must be 1..{MAX_PAGE}", field="limit")
    return limit


def _page(items: list[T], more: bool, key: Any) -> Page[T]:
    cursor = encode_cursor({"after": key(items[-1])}) if more and items else None
    return Page(items, cursor)
