"""The circuit breaker state machine and the token bucket, driven by explicit times."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.core.delivery.breaker import BreakerConfig, BreakerState, CircuitBreaker
from tidings.core.delivery.ratelimit import TokenBucket


def fail(b: CircuitBreaker, now: float, n: int = 1) -> None:
    for _ in range(n):
        assert b.admit(now)
        b.record(now, ok=False)


def test_opens_after_consecutive_failures_and_waits_the_cooldown() -> None:
    b = CircuitBreaker(BreakerConfig(failure_threshold=3, cooldown=30.0))
    fail(b, 0.0, 2)
    assert b.admit(0.0)
    b.record(0.0, ok=True)  # a success resets the streak
    fail(b, 1.0, 2)
    assert b.state(1.0) is BreakerState.CLOSED
    fail(b, 2.0)
    assert b.state(2.0) is BreakerState.OPEN
    assert not b.admit(2.0)
    assert b.retry_after(12.0) == 20.0
    assert not b.admit(31.9)
    assert b.state(32.0) is BreakerState.HALF_OPEN
    assert b.opened == 1


def test_half_open_admits_limited_probes_and_closes_on_success() -> None:
    b = CircuitBreaker(
        BreakerConfig(failure_threshold=1, cooldown=10.0, half_open_probes=2, success_threshold=2)
    )
    fail(b, 0.0)
    assert b.admit(10.0) and b.admit(10.0)
    assert not b.admit(10.0)  # both probe slots taken
    assert b.retry_after(10.0) > 0
    b.record(11.0, ok=True)
    assert b.state(11.0) is BreakerState.HALF_OPEN  # one success of the two needed
    assert b.admit(11.0)
    b.record(12.0, ok=True)
    assert b.state(12.0) is BreakerState.CLOSED


def test_a_failed_probe_opens_again_with_a_fresh_cooldown() -> None:
    b = CircuitBreaker(BreakerConfig(failure_threshold=1, cooldown=10.0))
    fail(b, 0.0)
    assert b.admit(10.0)
    b.record(10.5, ok=False)
    assert b.state(10.5) is BreakerState.OPEN
    assert b.retry_after(10.5) == 10.0
    assert b.opened == 2


def test_an_unreported_probe_is_given_up() -> None:
    b = CircuitBreaker(BreakerConfig(failure_threshold=1, cooldown=1.0, probe_timeout=5.0))
    fail(b, 0.0)
    assert b.admit(1.0)
    assert not b.admit(2.0)
    assert b.admit(6.5)  # the first probe's caller never reported


def test_failure_rate_over_the_window_opens_without_a_streak() -> None:
    cfg = BreakerConfig(failure_threshold=100, failure_rate=0.5, window=10.0, min_calls=10)
    b = CircuitBreaker(cfg)
    for i in range(9):  # alternate: never two failures in a row
        assert b.admit(i * 0.1)
        b.record(i * 0.1, ok=i % 2 == 1)
    assert b.state(1.0) is BreakerState.CLOSED  # 9 calls: below min_calls
    fail(b, 1.0)  # 10 calls, 6 failures
    assert b.state(1.0) is BreakerState.OPEN


def test_old_calls_leave_the_window() -> None:
    cfg = BreakerConfig(failure_threshold=100, failure_rate=0.5, window=10.0, min_calls=4)
    b = CircuitBreaker(cfg)
    fail(b, 0.0, 2)
    for t in (20.0, 20.0):
        assert b.admit(t)
        b.record(t, ok=True)
    fail(b, 20.0)  # the two old failures are out of the window: 1 of 3
    assert b.state(20.0) is BreakerState.CLOSED


def test_config_is_checked() -> None:
    with pytest.raises(ValueError):
        BreakerConfig(failure_rate=0.0)
    with pytest.raises(ValueError):
        BreakerConfig(half_open_probes=0)


@given(
    st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=5.0), st.booleans()),
        min_size=1,
        max_size=200,
    )
)
def test_no_call_goes_through_while_open(steps: list[tuple[float, bool]]) -> None:
    cfg = BreakerConfig(failure_threshold=3, cooldown=10.0, half_open_probes=1)
    b = CircuitBreaker(cfg)
    now = 0.0
    in_flight_half_open = 0
    for gap, ok in steps:
        now += gap
        state = b.state(now)
        admitted = b.admit(now)
        if state is BreakerState.OPEN:
            assert not admitted
            assert 0.0 < b.retry_after(now) <= cfg.cooldown
        if state is BreakerState.CLOSED:
            assert admitted
        if state is BreakerState.HALF_OPEN and admitted:
            in_flight_half_open += 1
            assert in_flight_half_open <= cfg.half_open_probes
        if admitted:
            b.record(now, ok)
            in_flight_half_open = 0


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == 0.5
    assert bucket.take(0.5) == 0.0
    assert bucket.tokens(100.0) == 3.0  # never more than the burst
    assert bucket.take(100.0, 4) == float("inf")
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1, now=0.0)


def test_token_bucket_keeps_slots_for_the_refused_one_token_apart() -> None:
    bucket = TokenBucket(rate=2.0, burst=2, now=0.0)
    assert [bucket.slot(0.0) for _ in range(6)] == [0.0, 0.0, 0.5, 1.0, 1.5, 2.0]
    # each comes back at its slot and finds its token
    assert [bucket.slot(t) for t in (0.5, 1.0, 1.5, 2.0)] == [0.0, 0.0, 0.0, 0.0]
    # the slots kept are spent: a later caller is told the next token's wait only
    assert bucket.slot(2.0) == 0.5
    assert bucket.slot(10.0) == 0.0


@given(
    st.floats(min_value=0.1, max_value=100.0),
    st.integers(min_value=1, max_value=50),
    st.lists(st.floats(min_value=0.0, max_value=2.0), min_size=1, max_size=300),
)
def test_token_bucket_never_admits_more_than_burst_plus_rate_times_time(
    rate: float, burst: int, gaps: list[float]
) -> None:
    bucket = TokenBucket(rate, burst, now=0.0)
    now = 0.0
    admitted = 0
    for gap in gaps:
        now += gap
        wait = bucket.take(now)
        if wait == 0.0:
            admitted += 1
        else:
            assert bucket.take(now + wait) == 0.0  # the wait it names is enough
            now += wait
            admitted += 1
    assert admitted <= burst + rate * now + 1e-6
