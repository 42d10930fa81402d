"""Redis device store: the user presence every gateway reads and writes.

Key layout (``P`` = prefix, ``U`` = user):

- ``P:od:U``  HASH  device id -> device report (JSON with its expiry time); the key's own TTL
  is the longest entry TTL plus a margin, so nothing outlives the gateways that wrote it
- ``P:ohb``   ZSET  user -> newest heartbeat (epoch seconds of the injected clock)
- ``P:oon``   SET   users marked online
- ``P:oseq``  HASH  user -> number of online/offline transitions so far

The online mark flips in one script, so of several gateways seeing a user go offline exactly
one gets the transition number and emits `user.offline`.
"""

from __future__ import annotations

from typing import Any

import orjson
import redis.asyncio as aioredis

from tidings.core.online import Device
from tidings.ports.clock import Clock

KEY_TTL_MARGIN = 60.0

_PUT_LUA = """
-- KEYS[1] devices hash, KEYS[2] heartbeat zset
-- ARGV[1] device id, ARGV[2] report, ARGV[3] user, ARGV[4] heartbeat, ARGV[5] key ttl ms
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[5]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
redis.call('ZADD', KEYS[2], 'GT', ARGV[4], ARGV[3])
return redis.call('HGETALL', KEYS[1])
"""

_MARK_LUA = """
-- KEYS[1] online set, KEYS[2] transitions hash, KEYS[3] devices hash, KEYS[4] heartbeat zset
-- ARGV[1] user, ARGV[2] '1' online / '0' offline, ARGV[3] silent_before or ''
if ARGV[2] == '1' then
  if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return false end
else
  if ARGV[3] ~= '' then
    local newest = redis.call('ZSCORE', KEYS[4], ARGV[1])
    if newest and tonumber(newest) > tonumber(ARGV[3]) then return false end
  end
  if redis.call('SREM', KEYS[1], ARGV[1]) == 0 then return false end
  redis.call('DEL', KEYS[3])
  redis.call('ZREM', KEYS[4], ARGV[1])
end
return redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
"""

_SILENT_LUA = """
-- KEYS[1] heartbeat zset, KEYS[2] online set; ARGV[1] before, ARGV[2] limit
local out = {}
local users = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, user in ipairs(users) do
  if #out >= tonumber(ARGV[2]) then break end
  if redis.call('SISMEMBER', KEYS[2], user) == 1 then table.insert(out, user) end
end
return out
"""


def _encode(device: Device, until: float) -> bytes:
    return orjson.dumps(
        {
            "id": device.id,
            "hb": device.heartbeat_at,
            "act": device.active_at,
            "fg": device.foreground,
            "conn": device.connected,
            "kind": device.kind,
            "ch": list(device.channels),
            "until": until,
        }
    )


def _decode(raw: bytes) -> tuple[Device, float]:
    d: dict[str, Any] = orjson.loads(raw)
    device = Device(
        id=d["id"],
        heartbeat_at=float(d["hb"]),
        active_at=float(d["act"]),
        foreground=bool(d["fg"]),
        connected=bool(d["conn"]),
        kind=str(d["kind"]),
        channels=tuple(d["ch"]),
    )
    return device, float(d["until"])


class RedisDeviceStore:
    def __init__(self, redis_url: str, clock: Clock, *, prefix: str = "tidings") -> None:
        self._clock = clock
        self._p = prefix
        self._redis: aioredis.Redis = aioredis.Redis.from_url(redis_url)
        self._put = self._redis.register_script(_PUT_LUA)
        self._mark = self._redis.register_script(_MARK_LUA)
        self._silent = self._redis.register_script(_SILENT_LUA)

    def _devices_key(self, user: str) -> str:
        return f"{self._p}:od:{user}"

    async def put(self, user: str, device: Device, ttl: float) -> list[Device]:
        until = self._clock.now() + ttl
        key_ttl_ms = max(1, int((max(ttl, 0.0) + KEY_TTL_MARGIN) * 1000))
        key = self._devices_key(user)
        flat = await self._put(
            keys=[key, f"{self._p}:ohb"],
            args=[device.id, _encode(device, until), user, repr(device.heartbeat_at), key_ttl_ms],
        )
        return await self._live(key, dict(zip(flat[::2], flat[1::2], strict=True)))

    async def get(self, user: str) -> list[Device]:
        key = self._devices_key(user)
        return await self._live(key, await self._redis.hgetall(key))

    async def _live(self, key: str, raw: dict[Any, Any]) -> list[Device]:
        now = self._clock.now()
        live, expired = [], []
        for field, value in raw.items():
            device, until = _decode(value if isinstance(value, bytes) else value.encode())
            if until > now:
                live.append(device)
            else:
                expired.append(field)
        if expired:
            await self._redis.hdel(key, *expired)
        return live

    async def silent_users(self, before: float, limit: int) -> list[str]:
        users = await self._silent(
            keys=[f"{self._p}:ohb", f"{self._p}:oon"], args=[repr(before), limit]
        )
        return [bytes(u).decode() for u in users]

    async def mark(self, user: str, online: bool, silent_before: float | None = None) -> int | None:
        result = await self._mark(
            keys=[
                f"{self._p}:oon",
                f"{self._p}:oseq",
                self._devices_key(user),
                f"{self._p}:ohb",
            ],
            args=[
                user,
                "1" if online else "0",
                "" if silent_before is None else repr(silent_before),
            ],
        )
        return None if result is None else int(result)

    async def close(self) -> None:
        await self._redis.aclose()
