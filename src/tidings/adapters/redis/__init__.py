"""Redis adapters: the scale-out broker (pub/sub fanout between nodes plus stream history) and
the presence store shared by every node."""

from tidings.adapters.redis.broker import RedisBroker
from tidings.adapters.redis.presence import RedisPresenceStore

__all__ = ["RedisBroker", "RedisPresenceStore"]
