"""Connection and subscription JWTs, with the claims Centrifugo defines.

Connection token claims: `sub` (user id, "" for anonymous), `exp`, `info` (JSON shown in
presence, join/leave and client publications) or `b64info`, `channels` (server-side
subscriptions), `meta` (server-only JSON), `expire_at` (connection expiry apart from `exp`;
0 = never). Subscription token claims: `sub` (must be the connection's user), `channel`
(must be the channel subscribed to), `exp`, `info`/`b64info`, `expire_at`.

Signatures: HS256/384/512 with a shared secret, RS256/384/512 with an RSA public key,
ES256/384/512 with an ECDSA public key, or RS*/ES* with the key a JSON Web Key Set (RFC 7517)
names by the token's `kid` header, so signing keys can be rotated: publish the new key in the
set, sign with it, drop the old one once its tokens have expired. Time is passed in (`now`,
Unix seconds): PyJWT's own clock checks are switched off and done here, so decoding is pure.

Failures map to the protocol: an expired token is error 109 (the SDK fetches a new token and
retries); any other bad token closes the connection with 3500 invalid token.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric.ec import (
    EllipticCurvePrivateKey,
    EllipticCurvePublicKey,
)
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.types import Options

from tidings.core.protocol.codes import Disconnect, DisconnectCode, ErrorCode
from tidings.errors import Unauthorized
from tidings.records import record

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512"})
ECDSA_ALGORITHMS = frozenset({"ES256", "ES384", "ES512"})

SigningKey = str | bytes | RSAPrivateKey | EllipticCurvePrivateKey


class TokenError(Unauthorized):
    """A token was refused. `protocol_error` is what the session should answer with."""

    code = "invalid_token"

    @property
    def protocol_error(self) -> ErrorCode | Disconnect:
        return Disconnect.of(DisconnectCode.INVALID_TOKEN)


class InvalidToken(TokenError):
    """Malformed, badly signed, for another audience/issuer/channel/user: close with 3500."""


class TokenExpired(TokenError):
    """`exp` has passed: reply with error 109 so the SDK refreshes the token."""

    code = "token_expired"

    @property
    def protocol_error(self) -> ErrorCode | Disconnect:
        return ErrorCode.TOKEN_EXPIRED


@record
class TokenKeys:
    """Verification keys; build from configuration with `TokenKeys.from_config`."""

    hmac_secret: str | bytes | None = None
    rsa_public_key: RSAPublicKey | None = None
    ecdsa_public_key: EllipticCurvePublicKey | None = None
    audience: str | None = None  # checked when set
    issuer: str | None = None  # checked when set
    leeway: float = 0.0  # seconds of clock skew tolerated on exp/nbf
    jwks: Mapping[str, JsonWebKey] | None = None  # by key id

    @classmethod
    def from_config(
        cls,
        *,
        hmac_secret: str | bytes | None = None,
        rsa_public_key: str | bytes | None = None,
        ecdsa_public_key: str | bytes | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 0.0,
        jwks: str | bytes | None = None,
    ) -> TokenKeys:
        """Load PEM public keys and a JWKS document once (raises `ValueError` for a key of
        the wrong kind or a set that cannot be used)."""
        rsa = _load_public(rsa_public_key, RSAPublicKey, "rsa_public_key")
        ec = _load_public(ecdsa_public_key, EllipticCurvePublicKey, "ecdsa_public_key")
        keyset = parse_jwks(jwks) if jwks is not None else None
        return cls(hmac_secret or None, rsa, ec, audience, issuer, leeway, keyset)

    def key_for(
        self, algorithm: str, kid: str | None = None
    ) -> str | bytes | RSAPublicKey | EllipticCurvePublicKey:
        """The key to verify a token signed with `algorithm`; with a `kid` header, the key of
        that id in the key set."""
        if kid is not None and self.jwks is not None:
            jwk = self.jwks.get(kid)
            if jwk is None:
                raise InvalidToken(f"unknown key id {kid!r}")
            if algorithm not in jwk.algorithms:
                raise InvalidToken(f"key {kid!r} is not for algorithm {algorithm!r}")
            return jwk.key
        key: str | bytes | RSAPublicKey | EllipticCurvePublicKey | None = None
        if algorithm in HMAC_ALGORITHMS:
            key = self.hmac_secret
        elif algorithm in RSA_ALGORITHMS:
            key = self.rsa_public_key
        elif algorithm in ECDSA_ALGORITHMS:
            key = self.ecdsa_public_key
        if key is None:
            raise InvalidToken(f"no key configured for algorithm {algorithm!r}")
        return key


@record
class JsonWebKey:
    """A verification key of a JWKS and the algorithms it may verify."""

    key: RSAPublicKey | EllipticCurvePublicKey
    algorithms: frozenset[str]


_EC_ALGORITHM = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}


def parse_jwks(document: str | bytes) -> dict[str, JsonWebKey]:
    """The signature-verification keys of a JWKS document, by `kid`. RSA keys verify
    RS256/384/512 (or only their `alg`); EC keys the ES algorithm of their curve. Keys for
    encryption (`use: enc`) are left out. Raises `ValueError` naming what is wrong."""
    try:
        doc = orjson.loads(document)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"JWKS is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError("JWKS must be an object with a 'keys' list")
    keys: dict[str, JsonWebKey] = {}
    for i, entry in enumerate(doc["keys"]):
        if not isinstance(entry, dict):
            raise ValueError(f"keys[{i}] is not an object")
        if entry.get("use", "sig") != "sig":
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid:
            raise ValueError(f"keys[{i}] has no 'kid'")
        if kid in keys:
            raise ValueError(f"keys[{i}]: key id {kid!r} appears twice")
        if any(k in entry for k in ("d", "p", "q")):
            raise ValueError(f"keys[{i}] ({kid}) holds a private key; publish public keys only")
        kty, alg = entry.get("kty"), entry.get("alg")
        if kty not in ("RSA", "EC"):
            raise ValueError(f"keys[{i}] ({kid}): key type {kty!r} is not RSA or EC")
        loaded: object
        try:
            if kty == "RSA":
                loaded = RSAAlgorithm.from_jwk(entry)
                allowed = RSA_ALGORITHMS
            else:
                loaded = ECAlgorithm.from_jwk(entry)
                allowed = frozenset({_EC_ALGORITHM.get(str(entry.get("crv")), "")}) - {""}
        except (jwt.InvalidKeyError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"keys[{i}] ({kid}): {exc}") from None
        if not isinstance(loaded, RSAPublicKey | EllipticCurvePublicKey):
            raise ValueError(f"keys[{i}] ({kid}) is not a public key")
        key = loaded
        if alg is not None:
            if alg not in allowed:
                raise ValueError(f"keys[{i}] ({kid}): alg {alg!r} does not fit a {kty} key")
            allowed = frozenset({alg})
        keys[kid] = JsonWebKey(key, allowed)
    if not keys:
        raise ValueError("JWKS has no signature keys")
    return keys


def _load_public(pem: str | bytes | None, kind: type[Any], name: str) -> Any:
    if pem is None:
        return None
    key = load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
    if not isinstance(key, kind):
        raise ValueError(f"{name} is not a {kind.__name__}")
    return key


@record
class ConnectionToken:
    user: str
    exp: int | None = None
    info: bytes | None = None  # JSON bytes
    channels: tuple[str, ...] = ()
    meta: dict[str, Any] | None = None
    expire_at: int | None = None

    def ttl(self, now: float) -> int | None:
        """Seconds until the connection expires (None: never), for `Session.connected`."""
        return _ttl(self.exp, self.expire_at, now)


@record
class SubscriptionToken:
    user: str
    channel: str
    exp: int | None = None
    info: bytes | None = None  # JSON bytes, the channel info of this subscriber
    expire_at: int | None = None

    def ttl(self, now: float) -> int | None:
        """Seconds until the subscription expires (None: never)."""
        return _ttl(self.exp, self.expire_at, now)


def _ttl(exp: int | None, expire_at: int | None, now: float) -> int | None:
    at = expire_at if expire_at is not None else exp
    if not at:
        return None
    return max(1, int(at - now))


def decode_connection_token(token: str, keys: TokenKeys, now: float) -> ConnectionToken:
    """Verify a connection JWT at Unix time `now`; raises `InvalidToken` or `TokenExpired`."""
    claims = _verify(token, keys, now)
    channels = claims.get("channels") or []
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise InvalidToken("channels claim must be a list of strings")
    meta = claims.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise InvalidToken("meta claim must be an object")
    return ConnectionToken(
        user=_user(claims),
        exp=_int_claim(claims, "exp"),
        info=_info(claims),
        channels=tuple(channels),
        meta=meta,
        expire_at=_int_claim(claims, "expire_at"),
    )


def decode_subscription_token(
    token: str, keys: TokenKeys, now: float, *, channel: str, user: str
) -> SubscriptionToken:
    """Verify a subscription JWT for `channel` and the connection's `user`."""
    claims = _verify(token, keys, now)
    if claims.get("channel") != channel:
        raise InvalidToken("token is for another channel")
    if _user(claims) != user:
        raise InvalidToken("token is for another user")
    return SubscriptionToken(
        user=user,
        channel=channel,
        exp=_int_claim(claims, "exp"),
        info=_info(claims),
        expire_at=_int_claim(claims, "expire_at"),
    )


def _verify(token: str, keys: TokenKeys, now: float) -> dict[str, Any]:
    if not token:
        raise InvalidToken("token required")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as exc:
        raise InvalidToken(f"malformed token: {exc}") from None
    algorithm, kid = header.get("alg"), header.get("kid")
    if not isinstance(algorithm, str):
        raise InvalidToken("token header has no algorithm")
    if kid is not None and not isinstance(kid, str):
        raise InvalidToken("token header kid must be a string")
    key = keys.key_for(algorithm, kid)
    options: Options = {
        "verify_exp": False,
        "verify_nbf": False,
        "verify_iat": False,
        "verify_aud": keys.audience is not None,
        "verify_iss": keys.issuer is not None,
    }
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            options=options,
            audience=keys.audience,
            issuer=keys.issuer,
        )
    except jwt.InvalidTokenError as exc:
        raise InvalidToken(f"invalid token: {exc}") from None
    exp = _int_claim(claims, "exp")
    if exp is not None and now >= exp + keys.leeway:
        raise TokenExpired("token expired")
    nbf = _int_claim(claims, "nbf")
    if nbf is not None and now < nbf - keys.leeway:
        raise InvalidToken("token not yet valid")
    return claims


def _user(claims: Mapping[str, Any]) -> str:
    user = claims.get("sub", "")
    if not isinstance(user, str):
        raise InvalidToken("sub claim must be a string")
    return user


def _int_claim(claims: Mapping[str, Any], name: str) -> int | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidToken(f"{name} claim must be a number")
    return int(value)


def _info(claims: Mapping[str, Any]) -> bytes | None:
    if claims.get("b64info"):
        try:
            return base64.b64decode(str(claims["b64info"]), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidToken("b64info claim is not base64") from None
    if claims.get("info") is not None:
        return orjson.dumps(claims["info"])
    return None


def encode_token(
    claims: Mapping[str, Any], key: SigningKey, algorithm: str = "HS256", kid: str | None = None
) -> str:
    """Sign `claims` (for the CLI and tests): a secret for HS*, a private key for RS*/ES*;
    `kid` names the key of a JWKS that verifies it."""
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(dict(claims), key, algorithm=algorithm, headers=headers)


def connection_claims(
    user: str,
    *,
    now: float,
    ttl: float | None = None,
    info: Any = None,
    channels: Iterable[str] = (),
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Claims of a connection token for `user`, expiring `ttl` seconds after `now`."""
    claims: dict[str, Any] = {"sub": user, "iat": int(now)}
    if ttl is not None:
        claims["exp"] = int(now + ttl)
    if info is not None:
        claims["info"] = info
    if channels := list(channels):
        claims["channels"] = channels
    if meta is not None:
        claims["meta"] = dict(meta)
    return claims


def subscription_claims(
    user: str, channel: str, *, now: float, ttl: float | None = None, info: Any = None
) -> dict[str, Any]:
    """Claims of a subscription token letting `user` into `channel`."""
    claims: dict[str, Any] = {"sub": user, "channel": channel, "iat": int(now)}
    if ttl is not None:
        claims["exp"] = int(now + ttl)
    if info is not None:
        claims["info"] = info
    return claims
