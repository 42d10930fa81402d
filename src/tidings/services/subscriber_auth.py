"""How a browser proves which subscriber it is, for the inbox endpoints.

Two ways, both per deployment:

- **HMAC** (as Novu's and Knock's `subscriber_hash`): the application's backend computes
  `hex(HMAC-SHA256(inbox.hmac_secret, subscriber_id))` and hands it to its page with the
  id; the browser sends both. It never expires: rotate the secret to revoke.
- **JWT**: a short-lived HS256 token with `sub` = subscriber id, issued by the server API
  (`POST /v1/subscribers/{id}/token`) and signed with the gateway's token secret. It is a
  gateway connection token too, so one token opens the WebSocket and reads the inbox; any
  connection token the gateway accepts identifies its `sub` as the subscriber.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from tidings.core import subscribers as rules
from tidings.core.tokens import (
    TokenError,
    TokenKeys,
    connection_claims,
    decode_connection_token,
    encode_token,
)
from tidings.errors import InvalidInput, Unauthorized
from tidings.ports.clock import Clock

MAX_TOKEN_TTL = 24 * 3600.0


class SubscriberAuth:
    def __init__(
        self,
        clock: Clock,
        *,
        hmac_secret: str | None,
        token_secret: str,
        keys: Callable[[], TokenKeys],
        token_ttl: float = 3600.0,
    ) -> None:
        self.clock = clock
        self._hmac_secret = hmac_secret.encode() if hmac_secret else None
        self._token_secret = token_secret
        self._keys = keys  # the gateway's keys in force (they can be reloaded)
        self.token_ttl = token_ttl

    def subscriber_hash(self, subscriber: str) -> str:
        if self._hmac_secret is None:
            raise Unauthorized("subscriber HMAC is not configured (inbox.hmac_secret)")
        return hmac.new(self._hmac_secret, subscriber.encode(), hashlib.sha256).hexdigest()

    def verify_hash(self, subscriber: str, given: str) -> str:
        """The subscriber id if `given` is its HMAC; `Unauthorized` otherwise."""
        expected = self.subscriber_hash(subscriber)
        if not hmac.compare_digest(expected, given.strip().lower()):
            raise Unauthorized("subscriber hash does not match the subscriber id")
        return subscriber

    def issue(self, subscriber: str, ttl: float | None = None) -> tuple[str, float]:
        """A token for `subscriber` and when it expires (epoch seconds)."""
        rules.subscriber_id(subscriber)
        ttl = self.token_ttl if ttl is None else ttl
        if not 1 <= ttl <= MAX_TOKEN_TTL:
            raise InvalidInput(f"must be 1..{int(MAX_TOKEN_TTL)} seconds", field="ttl")
        now = self.clock.now()
        claims = connection_claims(subscriber, now=now, ttl=ttl)
        keys = self._keys()
        if keys.audience is not None:
            claims["aud"] = keys.audience
        if keys.issuer is not None:
            claims["iss"] = keys.issuer
        return encode_token(claims, self._token_secret, "HS256"), float(claims["exp"])

    def verify_token(self, token: str) -> str:
        """The subscriber id a token names; `Unauthorized` if it is bad, expired or
        anonymous."""
        try:
            decoded = decode_connection_token(token, self._keys(), self.clock.now())
        except TokenError as exc:
            raise Unauthorized(f"subscriber token refused: {exc.message}") from None
        if not decoded.user:
            raise Unauthorized("an anonymous token names no subscriber")
        return decoded.user
