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
def test_a_tick_hands_out_whole_recipients_and_the_next_keeps_the_average(
    per_second: float, n: int, interval: float
) -> None:
    got_n, got_interval = tick_plan(per_second)
    assert got_n == n and got_interval == pytest.approx(interval)
    assert got_n / got_interval == pytest.approx(per_second)  # the average is the pace
