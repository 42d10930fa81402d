"""Campaign pacing: recipients per second from the rates per channel, and the tick plan."""

from __future__ import annotations

import pytest

from tidings.core.notify import Workflow
from tidings.services.campaigns import PER_TICK, channel_costs, pace, tick_plan


def test_a_recipient_costs_one_message_per_channel_step() -> None:
    w = (
        Workflow("promo")
        .in_app(content={"title": "t", "body": "b"})
        .email(content={"subject": "s", "text": "t"}, id="first")
        .email(content={"subject": "s", "text": "t"}, id="reminder")
        .delay(duration=60)
    )
    assert channel_costs(w) == {"in_app": 1, "email": 2}


def test_the_pace_is_the_tightest_bound() -> None:
    costs = {"in_app": 1, "email": 2}
    assert pace(100.0, None, costs) == 100.0
    assert pace(None, {"email": 150.0, "in_app": 5000.0}, costs) == 75.0
    assert pace(None, {"email": 150.0, "in_app": 60.0}, costs) == 60.0
    assert pace(50.0, {"email": 150.0}, costs) == 50.0
    assert pace(None, {"sms": 10.0}, costs) is None  # the workflow sends no SMS
    assert pace(20.0, {"sms": 10.0}, costs) == 20.0


@pytest.mark.parametrize(
    ("per_second", "n", "interval"),
    [
        (100.0, 100, 1.0),
        (75.0, 75, 1.0),
        (100 / 3, 33, 0.99),
        (1.6, 1, 0.625),
        (0.5, 1, 2.0),
        (10_000.0, PER_TICK, 0.1),
    ],
)
def test_a_tick_hands_out_whole_recipients(per_second: float, n: int, interval: float) -> None:
    got_n, got_interval = tick_plan(per_second)
    assert got_n == n and got_interval == pytest.approx(interval)


SECONDS = 30.0
EPSILON = 1e-6


@pytest.mark.parametrize(
    ("rate", "rates", "costs", "per_second"),
    [
        (100.0, None, {"in_app": 1}, 100.0),
        (None, {"email": 250.0, "in_app": 5000.0}, {"in_app": 1, "email": 2}, 125.0),
        (None, {"email": 100.0}, {"email": 3}, 100 / 3),
        (1000.0, {"email": 3.2}, {"in_app": 1, "email": 2}, 1.6),
        (0.5, {"sms": 10.0}, {"sms": 1}, 0.5),
        (None, {"in_app": 25_000.0, "push": 30_000.0}, {"in_app": 1, "push": 2}, 15_000.0),
        (10_000.0, None, {"in_app": 1, "webhook": 1}, 10_000.0),
    ],
)
def test_ticks_keep_every_channel_within_its_rate_and_reach_the_pace(
    rate: float | None, rates: dict[str, float] | None, costs: dict[str, int], per_second: float
) -> None:
    """Ticks scheduled as the tick job does (each n / pace after the last was due) over
    `SECONDS`: by any tick, each channel has had at most its rate's worth plus one tick's,
    and the recipients handed out before a tick are never behind `per_second`."""
    n, interval = tick_plan(pace(rate, rates, costs) or 0.0)
    assert n <= max(1.0, per_second)  # a tick is at most one second's worth
    due, handed = 0.0, 0
    while due <= SECONDS:
        assert handed >= per_second * due - EPSILON  # never behind the pace
        handed += n
        for ch, cost in costs.items():
            limit = (rates or {}).get(ch)
            if limit is not None:
                assert cost * handed <= limit * due + cost * n + EPSILON, ch
        if rate is not None:
            assert handed <= rate * due + n + EPSILON
        due += interval
    assert handed >= per_second * SECONDS  # the pace is reached
    assert handed <= per_second * SECONDS + n
