"""Standard Webhooks signing, endpoint URL checks and the auto-disable rule.

Signature: `v1,<base64 HMAC-SHA256 over "{webhook-id}.{webhook-timestamp}.{body}">` with the
secret's decoded bytes; the secret is shown as `whsec_<base64>` (24 to 64 random bytes). Each
secret in force signs, space-separated in `webhook-signature`, so a rotated secret keeps
verifying during its grace period.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import re
from urllib.parse import urlsplit

from tidings.errors import InvalidInput
from tidings.records import record

SECRET_PREFIX = "whsec_"  # noqa: S105 (the format's prefix, not a secret)
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64
MAX_URL_LENGTH = 2048
_MSG_ID = re.compile(r"^[A-Za-z0-9_:-]{1,200}$")


def secret_bytes(secret: str) -> bytes:
    """The key of a `whsec_<base64>` secret; raises `InvalidInput` for anything else."""
    if not secret.startswith(SECRET_PREFIX):
        raise InvalidInput("a webhook secret starts with whsec_", field="secret")
    raw = secret[len(SECRET_PREFIX) :]
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("a webhook secret is whsec_ and base64", field="secret") from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise InvalidInput(
            f"a webhook secret holds {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes",
            field="secret",
        )
    return key


def encode_secret(key: bytes) -> str:
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ValueError(f"a secret key is {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes")
    return SECRET_PREFIX + base64.b64encode(key).decode("ascii")


def signature(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    """One `v1,<base64>` signature."""
    if not _MSG_ID.match(msg_id):
        raise ValueError("a webhook id is 1-200 of [A-Za-z0-9_:-] (never a '.')")
    signed = f"{msg_id}.{timestamp}.{body}".encode()
    digest = hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def sign_headers(
    secrets: tuple[str, ...], msg_id: str, timestamp: int, body: str
) -> dict[str, str]:
    """The three Standard Webhooks headers, signed by every secret in force."""
    if not secrets:
        raise ValueError("at least one secret signs a webhook")
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(s, msg_id, timestamp, body) for s in secrets),
    }


def is_private_address(address: str) -> bool:
    """Loopback, private, link-local (cloud metadata), unique-local, multicast, reserved or
    unspecified: addresses a public webhook has no business reaching."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return bool(
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def check_url(url: str, *, allow_private: bool = True) -> str:
    """The endpoint URL if it is acceptable: http or https, a host, no user:password, no
    fragment; with `allow_private=False` a literal private IP or `localhost` is refused too
    (names are checked again when resolved, at send time). Raises `InvalidInput(field=url)`."""
    if len(url) > MAX_URL_LENGTH:
        raise InvalidInput(f"the URL is longer than {MAX_URL_LENGTH} characters", field="url")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise InvalidInput("the URL contains whitespace or control characters", field="url")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidInput(f"not a valid URL: {exc}", field="url") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidInput("the URL must be http or https", field="url")
    if not parts.hostname:
        raise InvalidInput("the URL has no host", field="url")
    if parts.username is not None or parts.password is not None:
        raise InvalidInput("the URL must not carry credentials", field="url")
    if parts.fragment:
        raise InvalidInput("the URL must not have a fragment", field="url")
    if port == 0:
        raise InvalidInput("the URL's port must be 1-65535", field="url")
    if not allow_private:
        host = parts.hostname
        if host == "localhost" or host.endswith(".localhost"):
            raise InvalidInput("private and loopback addresses are not allowed", field="url")
        try:
            private = is_private_address(host)
        except ValueError:
            private = False  # a name, resolved and checked at send time
        if private:
            raise InvalidInput("private and loopback addresses are not allowed", field="url")
    return url


@record
class DisablePolicy:
    """An endpoint is disabled once it has failed `after_failures` attempts in a row and the
    streak has lasted at least `after_seconds`; both must hold, so neither a burst of failures
    in a minute nor one failure a day for a week disables it."""

    after_failures: int = 50
    after_seconds: float = 5 * 24 * 3600.0

    def should_disable(self, failures: int, failing_since: float | None, now: float) -> bool:
        return (
            failing_since is not None
            and failures >= self.after_failures
            and now - failing_since >= self.after_seconds
        )
