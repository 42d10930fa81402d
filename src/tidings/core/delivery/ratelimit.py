"""A token bucket, pure: `rate` tokens a second up to `burst`; the caller passes the time."""

from __future__ import annotations

_EPSILON = 1e-9


class TokenBucket:
    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self._at = now
        self._queued_until = now  # the end of the slots kept for refused callers (`slot`)

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now

    def tokens(self, now: float) -> float:
        self._refill(now)
        return self._tokens

    def take(self, now: float, n: float = 1.0) -> float:
        """Take `n` tokens if there are enough and return 0; otherwise take nothing and return
        the seconds until there will be (infinite when `n` exceeds the burst)."""
        self._refill(now)
        if n > self.burst:
            return float("inf")
        if self._tokens >= n - _EPSILON:  # the wait this method names is always enough
            self._tokens = max(0.0, self._tokens - n)
            return 0.0
        return (n - self._tokens) / self.rate

    def slot(self, now: float) -> float:
        """`take` one token, or, when there is none, the seconds until a slot kept for the
        caller: refused callers are spread one token apart (`1 / rate`) after the next
        token, so that coming back each finds one, instead of all coming back at once and
        all but one being refused again."""
        wait = self.take(now)
        if wait <= 0:
            return 0.0
        slot = max(now + wait, self._queued_until)
        self._queued_until = slot + 1.0 / self.rate
        return slot - now
