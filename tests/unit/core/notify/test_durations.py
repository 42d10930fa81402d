from __future__ import annotations

from typing import Any

import pytest

from tidings.core.notify.durations import format_duration, parse_duration
from tidings.errors import InvalidInput


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10m", 600.0),
        ("1h30m", 5400.0),
        ("2d", 172800.0),
        ("1w2d", 777600.0),
        ("45s", 45.0),
        ("250ms", 0.25),
        ("1m30s", 90.0),
        ("PT10M", 600.0),
        ("PT1H30M", 5400.0),
        ("P1DT2H", 93600.0),
        ("P1W", 604800.0),
        ("PT0.5S", 0.5),
        (" 5m ", 300.0),
        (90, 90.0),
    ],
)
def test_accepted(text: Any, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "10",
        "10 minutes",
        "1.5h",
        "30m1h",
        "1h1h",
        "-5m",
        "PT",
        "P",
        "P1M",
        "P1Y",
        "1H",
        "10mm",
        "m",
        "PT10",
        True,
        None,
        1.5,
        [],
        "P1DT",
    ],
)
def test_rejected_with_field(bad: Any) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_duration(bad, "steps[2].window")
    assert info.value.field == "steps[2].window"


def test_zero_and_negative_and_too_long() -> None:
    with pytest.raises(InvalidInput, match="longer than zero"):
        parse_duration("0s")
    assert parse_duration("0s", positive=False) == 0.0
    with pytest.raises(InvalidInput, match="negative"):
        parse_duration(-1)
    with pytest.raises(InvalidInput, match="366 days"):
        parse_duration("400d")


@pytest.mark.parametrize("seconds", [0.25, 1, 90, 5400, 93600, 86400 * 3 + 61])
def test_format_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds
