"""Per-connection limits and the token bucket that paces commands."""

from __future__ import annotations

from tidings.records import record


@record
class SessionConfig:
    max_subscriptions: int = 128
    max_command_size: int = 64 * 1024  # bytes of one command
    max_frame_size: int = 1024 * 1024  # bytes of one transport frame
    commands_per_second: float = 50.0  # token bucket refill; 0 disables rate limiting
    command_burst: int = 100  # token bucket size
    ping_interval: float = 25.0  # 0: no pings
    pong_timeout: float = 10.0  # 0: pongs not required
    stale_timeout: float = 10.0  # to send connect and be connected; 0: no limit
    expire_grace: float = 25.0  # after a connection/subscription ttl runs out
    max_pending_commands: int = 64  # received while connecting
    max_buffered_publications: int = 1024  # per subscribe in flight
    server_version: str = ""


class TokenBucket:
    """`rate` tokens per second up to `burst`, starting full; `take(now)` spends one token if
    there is one. `now` is a monotonic time in seconds."""

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate, self._burst = rate, float(burst)
        self._tokens, self._last = float(burst), now

    def take(self, now: float) -> bool:
        if self._rate <= 0:
            return True
        self._tokens = min(self._burst, self._tokens + max(0.0, now - self._last) * self._rate)
        self._last = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True
