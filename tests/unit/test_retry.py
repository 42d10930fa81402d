from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from tidings.core.retry import FailureClass, RetryPolicy, decide


@given(attempt=st.integers(1, 60), seed=st.integers(0, 2**32))
def test_full_jitter_stays_within_the_exponential_ceiling(attempt: int, seed: int) -> None:
    policy = RetryPolicy(base=0.5, cap=300.0)
    delay = policy.backoff(attempt, random.Random(seed))
    assert 0.0 <= delay <= min(300.0, 0.5 * 2 ** (attempt - 1))


def test_jitter_spreads_delays() -> None:
    rng = random.Random(1)
    delays = {round(RetryPolicy(base=1.0).backoff(8, rng), 3) for _ in range(50)}
    assert len(delays) > 40


def test_permanent_and_policy_never_retry() -> None:
    for failure in (FailureClass.PERMANENT, FailureClass.POLICY):
        assert not decide(RetryPolicy(), failure, 1).retry


def test_attempts_are_capped() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert decide(policy, FailureClass.TRANSIENT, 2).retry
    d = decide(policy, FailureClass.TRANSIENT, 3)
    assert not d.retry
    assert "3 attempts" in d.reason


def test_rate_limited_honours_retry_after_up_to_the_cap() -> None:
    policy = RetryPolicy(cap=60.0)
    assert decide(policy, FailureClass.RATE_LIMITED, 1, retry_after=17.0).delay == 17.0
    assert decide(policy, FailureClass.RATE_LIMITED, 1, retry_after=600.0).delay == 60.0
