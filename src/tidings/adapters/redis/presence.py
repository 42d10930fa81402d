"""Redis presence store shared by every node.

Key layout (``P`` = prefix, ``C`` = channel; literal braces keep a channel's keys in one Redis
Cluster hash slot):

- ``P:ph:{C}``  HASH  client id -> client info (JSON, see `broker.encode_info`)
- ``P:pz:{C}``  ZSET  client id scored by its expiry time (epoch seconds of the injected clock)

Entries expire by score against the store's clock, pruned atomically before every read. Both
keys also carry a Redis TTL (the longest entry ttl plus `KEY_TTL_MARGIN`) so a channel whose
gateways all died leaves nothing behind.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from tidings.adapters.redis.broker import decode_info, encode_info
from tidings.ports.clock import Clock
from tidings.types import ClientInfo, PresenceStats

KEY_TTL_MARGIN = 60.0

_ADD_LUA = """
-- KEYS[1] hash, KEYS[2] zset
-- ARGV[1] client, ARGV[2] info, ARGV[3] expires at, ARGV[4] key ttl in ms
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local ttl = tonumber(ARGV[4])
for i = 1, 2 do
  if redis.call('PTTL', KEYS[i]) < ttl then
    redis.call('PEXPIRE', KEYS[i], ARGV[4])
  end
end
return 1
"""

_READ_LUA = """
-- KEYS[1] hash, KEYS[2] zset; ARGV[1] now
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
if #expired > 0 then
  for i = 1, #expired, 500 do
    redis.call('HDEL', KEYS[1], unpack(expired, i, math.min(i + 499, #expired)))
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
end
return redis.call('HGETALL', KEYS[1])
"""


class RedisPresenceStore:
    """Presence as a HASH of infos plus a ZSET of expiry times per channel."""

    def __init__(self, redis_url: str, clock: Clock, *, prefix: str = "tidings") -> None:
        self._clock = clock
        self._prefix = prefix
        self._redis: aioredis.Redis = aioredis.Redis.from_url(redis_url)
        self._add_script = self._redis.register_script(_ADD_LUA)
        self._read_script = self._redis.register_script(_READ_LUA)

    def _keys(self, channel: str) -> list[str]:
        return [f"{self._prefix}:ph:{{{channel}}}", f"{self._prefix}:pz:{{{channel}}}"]

    async def add(self, channel: str, info: ClientInfo, ttl: float) -> None:
        expires_at = self._clock.now() + ttl
        key_ttl_ms = max(1, int((max(ttl, 0.0) + KEY_TTL_MARGIN) * 1000))
        await self._add_script(
            keys=self._keys(channel),
            args=[info.client, encode_info(info), repr(expires_at), key_ttl_ms],
        )

    async def remove(self, channel: str, client: str) -> None:
        hash_key, zset_key = self._keys(channel)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hdel(hash_key, client)
            pipe.zrem(zset_key, client)
            await pipe.execute()

    async def _live(self, channel: str) -> dict[str, ClientInfo]:
        flat = await self._read_script(keys=self._keys(channel), args=[repr(self._clock.now())])
        out: dict[str, ClientInfo] = {}
        for index in range(0, len(flat) - 1, 2):
            out[bytes(flat[index]).decode("utf-8")] = decode_info(bytes(flat[index + 1]))
        return out

    async def get(self, channel: str) -> dict[str, ClientInfo]:
        return await self._live(channel)

    async def stats(self, channel: str) -> PresenceStats:
        live = await self._live(channel)
        return PresenceStats(
            num_clients=len(live), num_users=len({info.user for info in live.values()})
        )

    async def close(self) -> None:
        await self._redis.aclose()
