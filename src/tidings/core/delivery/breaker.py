"""A circuit breaker as a pure state machine; the caller passes the (monotonic) time.

    closed --(N consecutive failures, or failure rate over the window)--> open
    open --(cool-down elapsed)--> half-open
    half-open --(`success_threshold` probe successes)--> closed
    half-open --(a probe fails)--> open (a fresh cool-down)

Call order per attempt: `admit(now)`; if True, make the call and report it with
`record(now, ok)`. While open, `admit` is False and `retry_after(now)` says how long until
half-open. Half-open admits at most `half_open_probes` calls in flight; a probe that is never
reported (its caller crashed) is given up after `probe_timeout`, so the breaker cannot stick.
"""

from __future__ import annotations

import enum
from collections import deque

from tidings.records import record


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@record
class BreakerConfig:
    failure_threshold: int = 5  # consecutive failures that open the circuit
    failure_rate: float = 0.5  # or this share of failures over the window ...
    window: float = 60.0  # ... seconds ...
    min_calls: int = 20  # ... once the window holds at least this many calls
    cooldown: float = 30.0  # open -> half-open after this long
    half_open_probes: int = 1  # calls in flight while half-open
    success_threshold: int = 1  # probe successes that close it again
    probe_timeout: float = 60.0  # an unreported probe is forgotten after this long

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.half_open_probes < 1 or self.success_threshold < 1:
            raise ValueError("thresholds and probes must be at least 1")
        if not 0.0 < self.failure_rate <= 1.0:
            raise ValueError("failure_rate must be in (0, 1]")
        if self.window <= 0 or self.cooldown < 0 or self.min_calls < 1 or self.probe_timeout <= 0:
            raise ValueError("window, min_calls and probe_timeout must be positive")


class CircuitBreaker:
    def __init__(self, config: BreakerConfig | None = None) -> None:
        self.config = config or BreakerConfig()
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._calls: deque[tuple[float, bool]] = deque()  # (time, failed) inside the window
        self._failures_in_window = 0
        self._opened_at = 0.0
        self._probes: list[float] = []  # start times of half-open probes in flight
        self._probe_successes = 0
        self.opened = 0  # how many times it opened (for metrics)

    def state(self, now: float) -> BreakerState:
        if self._state is BreakerState.OPEN and now - self._opened_at >= self.config.cooldown:
            self._state = BreakerState.HALF_OPEN
            self._probes = []
            self._probe_successes = 0
        return self._state

    def retry_after(self, now: float) -> float:
        """Seconds until the breaker lets a call through again (0 when it would now)."""
        state = self.state(now)
        if state is BreakerState.OPEN:
            return self.config.cooldown - (now - self._opened_at)  # > 0 while open
        if state is BreakerState.HALF_OPEN and not self._probe_slot(now):
            oldest = self._probes[0] + self.config.probe_timeout - now
            return max(0.0, min(self.config.cooldown, oldest))
        return 0.0

    def admit(self, now: float) -> bool:
        state = self.state(now)
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN or not self._probe_slot(now):
            return False
        self._probes.append(now)
        return True

    def record(self, now: float, ok: bool) -> None:
        """Report the outcome of a call that `admit` let through."""
        state = self.state(now)
        if state is BreakerState.HALF_OPEN:
            if self._probes:
                self._probes.pop(0)
            if not ok:
                self._open(now)
                return
            self._probe_successes += 1
            if self._probe_successes >= self.config.success_threshold:
                self._close()
            return
        if state is BreakerState.OPEN:
            return  # a call admitted before the circuit opened: already counted as open
        self._count(now, not ok)
        if ok:
            self._consecutive = 0
            return
        self._consecutive += 1
        calls = len(self._calls)
        if self._consecutive >= self.config.failure_threshold or (
            calls >= self.config.min_calls
            and self._failures_in_window >= self.config.failure_rate * calls
        ):
            self._open(now)

    def _probe_slot(self, now: float) -> bool:
        self._probes = [t for t in self._probes if now - t < self.config.probe_timeout]
        return len(self._probes) < self.config.half_open_probes

    def _count(self, now: float, failed: bool) -> None:
        self._calls.append((now, failed))
        self._failures_in_window += failed
        horizon = now - self.config.window
        while self._calls and self._calls[0][0] <= horizon:
            _, old = self._calls.popleft()
            self._failures_in_window -= old

    def _open(self, now: float) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = now
        self._probes = []
        self._probe_successes = 0
        self.opened += 1

    def _close(self) -> None:
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._calls.clear()
        self._failures_in_window = 0
        self._probes = []
        self._probe_successes = 0
