"""Subscriber profile rules: ids, phone numbers (E.164), BCP 47 locales, IANA time zones,
custom data limits, push device tokens and Web Push subscriptions.

Every check raises `InvalidInput` naming the offending field (`phone`, `devices.1.token`, ...)
and every normaliser returns the one canonical spelling that is stored.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from typing import Any
from urllib.parse import urlsplit

import orjson
import phonenumbers
from babel import localedata
from cryptography.hazmat.primitives.asymmetric import ec

from tidings.core.sendtime import zone
from tidings.errors import InvalidInput
from tidings.records import record

MAX_ID_LENGTH = 200
# Safe in a URL path segment and in a user-limited gateway channel (`inbox:#<id>`): no `/`,
# `#`, `,` or whitespace.
ID_PATTERN = r"^[A-Za-z0-9_.@:=+\-]+$"
_ID_RE = re.compile(ID_PATTERN)
MAX_DATA_BYTES = 16 * 1024
MAX_DEVICES = 20
MAX_WEBPUSH = 20
MAX_TOKEN_LENGTH = 512
MAX_ENDPOINT_LENGTH = 1024

# language (2-3 or 5-8 letters) [-script] [-region] (-variant)* (-singleton(-ext)+)* [-x-private]
_LANGTAG_RE = re.compile(
    r"(?P<language>[A-Za-z]{2,3}|[A-Za-z]{5,8})"
    r"(?:-(?P<script>[A-Za-z]{4}))?"
    r"(?:-(?P<region>[A-Za-z]{2}|[0-9]{3}))?"
    r"(?P<variants>(?:-(?:[A-Za-z0-9]{5,8}|[0-9][A-Za-z0-9]{3}))*)"
    r"(?P<extensions>(?:-[0-9A-WY-Za-wy-z](?:-[A-Za-z0-9]{2,8})+)*)"
    r"(?P<private>-[xX](?:-[A-Za-z0-9]{1,8})+)?"
)
_FCM_TOKEN_RE = re.compile(r"[A-Za-z0-9_:\-.]+")
_HEX_RE = re.compile(r"(?:[0-9a-fA-F]{2})+")


class Platform(enum.StrEnum):
    APNS = "apns"
    FCM = "fcm"


@record
class Device:
    """A mobile push token. A token belongs to one subscriber at a time."""

    platform: Platform
    token: str


@record
class WebPushSubscription:
    """A browser's Push API subscription: endpoint plus its keys (base64url, unpadded)."""

    endpoint: str
    p256dh: str
    auth: str


def subscriber_id(value: str, field: str = "id") -> str:
    if not value or len(value) > MAX_ID_LENGTH or not _ID_RE.match(value):
        raise InvalidInput(
            f"must be 1..{MAX_ID_LENGTH} characters of A-Z a-z 0-9 _ . @ : = + -", field=field
        )
    return value


def suppression_key(channel: str, address: str) -> str:
    """How the suppression list keys an address that is valid for its channel: email
    addresses compare case-insensitively; phone numbers are E.164 already (as subscribers
    store them); tokens and endpoints are kept as they are."""
    return address.lower() if channel == "email" else address


def normalize_phone(value: str, field: str = "phone") -> str:
    """The number in E.164 (`+14155550123`). It must carry its country code (`+...`) and be a
    valid number for its region."""
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        raise InvalidInput(
            "not a phone number in international form (start with + and the country code)",
            field=field,
        ) from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidInput(f"{value!r} is not a valid phone number", field=field)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize_locale(value: str, field: str = "locale") -> str:
    """A well-formed BCP 47 tag of a known language, in canonical case (`pt-BR`, `zh-Hant-TW`).
    `_` is accepted as a separator (`pt_BR`)."""
    tag = value.replace("_", "-")
    m = _LANGTAG_RE.fullmatch(tag)
    if m is None or len(tag) > 35:
        raise InvalidInput(f"{value!r} is not a BCP 47 language tag", field=field)
    language = m["language"].lower()
    if not localedata.exists(language):
        raise InvalidInput(f"unknown language {m['language']!r}", field=field)
    parts = [language]
    if m["script"]:
        parts.append(m["script"].title())
    if m["region"]:
        parts.append(m["region"].upper())
    rest = (m["variants"] or "") + (m["extensions"] or "") + (m["private"] or "")
    return "-".join(parts) + rest.lower()


def normalize_timezone(value: str, field: str = "timezone") -> str:
    """An IANA zone name that the system's time zone database knows."""
    if not value or value != value.strip() or len(value) > 64:
        raise InvalidInput(f"unknown time zone {value!r}", field=field)
    return zone(value, field).key


def check_data(data: Any, max_bytes: int = MAX_DATA_BYTES, field: str = "data") -> dict[str, Any]:
    """Custom data: a JSON object of at most `max_bytes` once encoded."""
    if not isinstance(data, dict):
        raise InvalidInput("must be a JSON object", field=field)
    try:
        size = len(orjson.dumps(data))
    except TypeError:
        raise InvalidInput("must be JSON", field=field) from None
    if size > max_bytes:
        raise InvalidInput(f"is {size} bytes encoded; the limit is {max_bytes}", field=field)
    return data


def check_devices(devices: list[Device], field: str = "devices") -> tuple[Device, ...]:
    if len(devices) > MAX_DEVICES:
        raise InvalidInput(f"at most {MAX_DEVICES} devices", field=field)
    seen: set[str] = set()
    for i, d in enumerate(devices):
        where = f"{field}.{i}.token"
        token = d.token
        if not 8 <= len(token) <= MAX_TOKEN_LENGTH:
            raise InvalidInput(f"must be 8..{MAX_TOKEN_LENGTH} characters", field=where)
        if d.platform is Platform.APNS:
            if not _HEX_RE.fullmatch(token):
                raise InvalidInput("an APNs device token is hexadecimal", field=where)
            token = token.lower()
        elif not _FCM_TOKEN_RE.fullmatch(token):
            raise InvalidInput("an FCM registration token is [A-Za-z0-9_:-.]", field=where)
        if token in seen:
            raise InvalidInput("token given twice", field=where)
        seen.add(token)
    return tuple(
        Device(d.platform, d.token.lower() if d.platform is Platform.APNS else d.token)
        for d in devices
    )


def check_webpush(
    subscriptions: list[WebPushSubscription], field: str = "webpush"
) -> tuple[WebPushSubscription, ...]:
    """Endpoint: an https URL; p256dh: an uncompressed P-256 public point (65 bytes) on the
    curve; auth: 16 bytes. Keys are base64url as the browser's `PushSubscription.toJSON()`
    gives them; they are stored unpadded."""
    if len(subscriptions) > MAX_WEBPUSH:
        raise InvalidInput(f"at most {MAX_WEBPUSH} subscriptions", field=field)
    out: list[WebPushSubscription] = []
    seen: set[str] = set()
    for i, s in enumerate(subscriptions):
        where = f"{field}.{i}"
        url = urlsplit(s.endpoint)
        if url.scheme != "https" or not url.hostname or len(s.endpoint) > MAX_ENDPOINT_LENGTH:
            raise InvalidInput(
                f"must be an https URL of at most {MAX_ENDPOINT_LENGTH} characters",
                field=f"{where}.endpoint",
            )
        if s.endpoint in seen:
            raise InvalidInput("endpoint given twice", field=f"{where}.endpoint")
        seen.add(s.endpoint)
        point = _b64url(s.p256dh, f"{where}.keys.p256dh")
        try:
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        except ValueError:
            raise InvalidInput(
                "must be an uncompressed P-256 public key (65 bytes, base64url)",
                field=f"{where}.keys.p256dh",
            ) from None
        if len(point) != 65:
            raise InvalidInput(
                "must be an uncompressed P-256 public key (65 bytes, base64url)",
                field=f"{where}.keys.p256dh",
            )
        if len(_b64url(s.auth, f"{where}.keys.auth")) != 16:
            raise InvalidInput("must be 16 bytes, base64url", field=f"{where}.keys.auth")
        out.append(WebPushSubscription(s.endpoint, s.p256dh.rstrip("="), s.auth.rstrip("=")))
    return tuple(out)


def _b64url(value: str, field: str) -> bytes:
    try:
        if "+" in value or "/" in value:
            raise ValueError(value)
        return base64.b64decode(value + "=" * (-len(value) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("is not base64url", field=field) from None
