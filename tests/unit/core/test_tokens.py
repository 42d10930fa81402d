from __future__ import annotations

import base64
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tidings.core.protocol.codes import Disconnect, ErrorCode
from tidings.core.tokens import (
    ConnectionToken,
    InvalidToken,
    SubscriptionToken,
    TokenExpired,
    TokenKeys,
    connection_claims,
    decode_connection_token,
    decode_subscription_token,
    encode_token,
    subscription_claims,
)

NOW = 1_700_000_000.0
SECRET = "a-long-enough-hmac-secret-for-hs256-and-hs512-tokens-0123456789ab"
KEYS = TokenKeys(hmac_secret=SECRET)


def _pem(private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def test_hs256_connection_token() -> None:
    claims = connection_claims(
        "42", now=NOW, ttl=3600, info={"name": "Ann"}, channels=["news"], meta={"plan": "pro"}
    )
    token = encode_token(claims, SECRET)
    assert decode_connection_token(token, KEYS, NOW) == ConnectionToken(
        user="42",
        exp=int(NOW) + 3600,
        info=b'{"name":"Ann"}',
        channels=("news",),
        meta={"plan": "pro"},
    )
    assert decode_connection_token(token, KEYS, NOW).ttl(NOW + 600) == 3000


def test_anonymous_token_without_expiry() -> None:
    token = encode_token({"sub": ""}, SECRET, "HS512")
    result = decode_connection_token(token, KEYS, NOW)
    assert result == ConnectionToken(user="")
    assert result.ttl(NOW) is None


def test_rs256_and_es256(rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> None:
    keys = TokenKeys.from_config(
        rsa_public_key=_pem(rsa_key).decode(), ecdsa_public_key=_pem(ec_key)
    )
    claims = connection_claims("7", now=NOW, ttl=60)
    assert decode_connection_token(encode_token(claims, rsa_key, "RS256"), keys, NOW).user == "7"
    assert decode_connection_token(encode_token(claims, ec_key, "ES256"), keys, NOW).user == "7"
    # Only HS* tokens need the secret; none is configured here.
    with pytest.raises(InvalidToken, match="no key"):
        decode_connection_token(encode_token(claims, SECRET), keys, NOW)


def test_public_keys_of_the_wrong_kind_are_refused(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    with pytest.raises(ValueError, match="rsa_public_key"):
        TokenKeys.from_config(rsa_public_key=_pem(ec_key))
    with pytest.raises(ValueError, match="ecdsa_public_key"):
        TokenKeys.from_config(ecdsa_public_key=_pem(rsa_key))


def test_expiry_is_checked_against_the_given_time() -> None:
    token = encode_token(connection_claims("1", now=NOW, ttl=60), SECRET)
    decode_connection_token(token, KEYS, NOW + 59)
    with pytest.raises(TokenExpired) as info:
        decode_connection_token(token, KEYS, NOW + 60)
    assert info.value.protocol_error is ErrorCode.TOKEN_EXPIRED
    lenient = TokenKeys(hmac_secret=SECRET, leeway=5)
    decode_connection_token(token, lenient, NOW + 62)


def test_not_before() -> None:
    token = encode_token({"sub": "1", "nbf": int(NOW) + 10}, SECRET)
    with pytest.raises(InvalidToken, match="not yet valid"):
        decode_connection_token(token, KEYS, NOW)
    decode_connection_token(token, KEYS, NOW + 10)


def _tamper(token: str) -> str:
    header, payload, signature = token.split(".")
    sig = base64.urlsafe_b64decode(signature + "==")
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    return ".".join((header, payload, base64.urlsafe_b64encode(flipped).rstrip(b"=").decode()))


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not-a-jwt",
        "a.b.c",
        _tamper(encode_token({"sub": "1"}, SECRET)),
        encode_token(
            {"sub": "1"}, "another-secret-that-is-long-enough-for-hs256-and-hs512-0123456789"
        ),
        jwt.encode({"sub": "1"}, "", algorithm="none"),
        encode_token({"sub": 1}, SECRET),
        encode_token({"sub": "1", "channels": "news"}, SECRET),
        encode_token({"sub": "1", "meta": [1]}, SECRET),
        encode_token({"sub": "1", "exp": "tomorrow"}, SECRET),
        encode_token({"sub": "1", "b64info": "!!!"}, SECRET),
    ],
)
def test_bad_tokens_close_with_invalid_token(token: str) -> None:
    with pytest.raises(InvalidToken) as info:
        decode_connection_token(token, KEYS, NOW)
    assert info.value.protocol_error == Disconnect(3500, "invalid token")


def test_audience_and_issuer() -> None:
    keys = TokenKeys(hmac_secret=SECRET, audience="tidings", issuer="app")
    good = encode_token({"sub": "1", "aud": "tidings", "iss": "app"}, SECRET)
    assert decode_connection_token(good, keys, NOW).user == "1"
    for claims in ({"sub": "1", "aud": "other", "iss": "app"}, {"sub": "1", "aud": "tidings"}):
        with pytest.raises(InvalidToken):
            decode_connection_token(encode_token(claims, SECRET), keys, NOW)


def test_b64info_and_expire_at() -> None:
    claims: dict[str, Any] = {"sub": "1", "b64info": base64.b64encode(b"\x00\x01").decode()}
    claims |= {"exp": int(NOW) + 60, "expire_at": int(NOW) + 600}
    token = decode_connection_token(encode_token(claims, SECRET), KEYS, NOW)
    assert token.info == b"\x00\x01"
    assert token.ttl(NOW) == 600
    never = decode_connection_token(encode_token({"sub": "1", "expire_at": 0}, SECRET), KEYS, NOW)
    assert never.ttl(NOW) is None


def test_subscription_token() -> None:
    token = encode_token(
        subscription_claims("42", "$gossips", now=NOW, ttl=60, info={"role": "mod"}), SECRET
    )
    assert decode_subscription_token(
        token, KEYS, NOW, channel="$gossips", user="42"
    ) == SubscriptionToken("42", "$gossips", int(NOW) + 60, b'{"role":"mod"}')
    with pytest.raises(InvalidToken, match="another channel"):
        decode_subscription_token(token, KEYS, NOW, channel="news", user="42")
    with pytest.raises(InvalidToken, match="another user"):
        decode_subscription_token(token, KEYS, NOW, channel="$gossips", user="43")
    with pytest.raises(TokenExpired):
        decode_subscription_token(token, KEYS, NOW + 61, channel="$gossips", user="42")


# --- JSON Web Key Sets --------------------------------------------------------------------


def _jwk(private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str, **extra: Any) -> dict:
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(private, rsa.RSAPrivateKey) else None
    if algorithm is not None:
        jwk = algorithm.to_jwk(private.public_key(), as_dict=True)
    else:
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    return {**jwk, "kid": kid, **extra}


def _jwks(*keys: dict) -> str:
    import json

    return json.dumps({"keys": list(keys)})


def test_a_key_set_verifies_by_key_id_and_rotates(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    new_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys = TokenKeys.from_config(
        jwks=_jwks(_jwk(rsa_key, "old", alg="RS256"), _jwk(new_rsa, "new"), _jwk(ec_key, "ec"))
    )
    claims = connection_claims("9", now=NOW, ttl=60)
    for key, alg, kid in (
        (rsa_key, "RS256", "old"),
        (new_rsa, "RS512", "new"),
        (ec_key, "ES256", "ec"),
    ):
        assert (
            decode_connection_token(encode_token(claims, key, alg, kid=kid), keys, NOW).user == "9"
        )
    # Signed by one key but naming another: the signature does not verify.
    with pytest.raises(InvalidToken, match="invalid token"):
        decode_connection_token(encode_token(claims, new_rsa, "RS256", kid="old"), keys, NOW)
    # The old key leaves the set: its tokens are refused.
    rotated = TokenKeys.from_config(jwks=_jwks(_jwk(new_rsa, "new")))
    with pytest.raises(InvalidToken, match="unknown key id 'old'"):
        decode_connection_token(encode_token(claims, rsa_key, "RS256", kid="old"), rotated, NOW)


def test_a_key_is_only_good_for_its_algorithms(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    keys = TokenKeys.from_config(jwks=_jwks(_jwk(rsa_key, "r", alg="RS256"), _jwk(ec_key, "e")))
    claims = connection_claims("9", now=NOW, ttl=60)
    with pytest.raises(InvalidToken, match="not for algorithm 'RS384'"):
        decode_connection_token(encode_token(claims, rsa_key, "RS384", kid="r"), keys, NOW)
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(InvalidToken, match="not for algorithm 'ES384'"):
        decode_connection_token(encode_token(claims, p384, "ES384", kid="e"), keys, NOW)
    # An HS256 token naming a key of the set cannot turn the public key into an HMAC secret.
    forged = jwt.encode(claims, "s" * 32, algorithm="HS256", headers={"kid": "r"})
    with pytest.raises(InvalidToken, match="not for algorithm 'HS256'"):
        decode_connection_token(forged, keys, NOW)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("not json", "not JSON"),
        ('{"keys": {}}', "'keys' list"),
        ('{"keys": []}', "no signature keys"),
        ('{"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}', "has no 'kid'"),
        ('{"keys": [{"kty": "oct", "kid": "s", "k": "c2VjcmV0"}]}', "not RSA or EC"),
        ('{"keys": [{"kty": "RSA", "kid": "x", "n": "!!", "e": "AQAB"}]}', "keys\\[0\\] \\(x\\)"),
    ],
)
def test_unusable_key_sets_are_refused(document: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TokenKeys.from_config(jwks=document)


def test_private_and_duplicate_keys_are_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    private = jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key, as_dict=True)
    with pytest.raises(ValueError, match="private key"):
        TokenKeys.from_config(jwks=_jwks({**private, "kid": "p"}))
    with pytest.raises(ValueError, match="appears twice"):
        TokenKeys.from_config(jwks=_jwks(_jwk(rsa_key, "a"), _jwk(rsa_key, "a")))
    encryption = _jwk(rsa_key, "enc", use="enc")
    keys = TokenKeys.from_config(jwks=_jwks(encryption, _jwk(rsa_key, "sig")))
    assert set(keys.jwks or {}) == {"sig"}
