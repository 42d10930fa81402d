"""The gateway re-reads its JWKS file when it changes: new keys verify at once, a broken file
leaves the keys in force."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from tidings.adapters.clock import ManualClock
from tidings.adapters.memory import MemoryBroker, MemoryPresenceStore
from tidings.config import GatewaySettings, Settings
from tidings.core.channels import ChannelResolver
from tidings.core.tokens import connection_claims, decode_connection_token, encode_token
from tidings.services.gateway import Hub
from tidings.wiring import KeySetWatcher, gateway_options


def write_jwks(path: Path, key: rsa.RSAPrivateKey, kid: str, bump: int) -> None:
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    path.write_text(json.dumps({"keys": [{**jwk, "kid": kid}]}))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + bump * 1_000_000_000))


def test_a_changed_key_set_is_in_force_without_a_restart(tmp_path: Path) -> None:
    first = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    second = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "jwks.json"
    write_jwks(path, first, "k1", 0)
    settings = Settings(
        token_secret="s" * 64,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/t.db",
        gateway=GatewaySettings(token_jwks_file=str(path)),
    )
    clock = ManualClock()
    hub = Hub(
        MemoryBroker(clock),
        MemoryPresenceStore(clock),
        ChannelResolver.from_config({}),
        clock,
        gateway_options(settings),
    )
    watcher = KeySetWatcher(settings, hub)
    claims = connection_claims("u", now=clock.now(), ttl=60)
    old = encode_token(claims, first, "RS256", kid="k1")
    new = encode_token(claims, second, "RS256", kid="k2")
    assert decode_connection_token(old, hub.options.keys, clock.now()).user == "u"
    assert watcher.check() is False  # unchanged

    write_jwks(path, second, "k2", 5)
    assert watcher.check() is True
    assert decode_connection_token(new, hub.options.keys, clock.now()).user == "u"
    assert set(hub.options.keys.jwks or {}) == {"k2"}

    path.write_text('{"keys": "broken"}')
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 10_000_000_000))
    assert watcher.check() is False
    assert set(hub.options.keys.jwks or {}) == {"k2"}  # the keys in force stay
