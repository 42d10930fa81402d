"""Failure classes and retry policy: exponential backoff with full jitter, capped attempts."""

from __future__ import annotations

import enum
import random

from tidings.records import record


class FailureClass(enum.StrEnum):
    TRANSIENT = "transient"  # network error, 5xx: retry with backoff
    RATE_LIMITED = "rate_limited"  # 429: retry after the server's hint
    PERMANENT = "permanent"  # 4xx, bad address, render error: never retry
    POLICY = "policy"  # suppressed by a rule: not an error, never retry


@record
class RetryPolicy:
    base: float = 1.0  # seconds
    cap: float = 3600.0  # longest single wait
    max_attempts: int = 10

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**(attempt-1))]. `attempt` counts from 1."""
        ceiling = min(self.cap, self.base * (2 ** max(0, attempt - 1)))
        return (rng or random).uniform(0.0, ceiling)


@record
class Decision:
    retry: bool
    delay: float
    reason: str


def decide(
    policy: RetryPolicy,
    failure: FailureClass,
    attempt: int,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> Decision:
    """What to do after failed attempt number `attempt` (counting from 1)."""
    if failure in (FailureClass.PERMANENT, FailureClass.POLICY):
        return Decision(False, 0.0, f"{failure.value} failure")
    if attempt >= policy.max_attempts:
        return Decision(False, 0.0, f"gave up after {attempt} attempts")
    if failure is FailureClass.RATE_LIMITED and retry_after is not None:
        return Decision(True, min(max(retry_after, 0.0), policy.cap), "rate limited")
    return Decision(True, policy.backoff(attempt, rng), f"{failure.value} failure")
