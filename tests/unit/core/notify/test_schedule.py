from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.core.notify.schedule import (
    QuietHours,
    SendWindow,
    is_allowed,
    parse_quiet_hours,
    parse_send_window,
    release_instant,
    wall_clock,
    zone,
)
from tidings.core.notify.types import Channel
from tidings.errors import InvalidInput

NY = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")


def at(tz: ZoneInfo, y: int, mo: int, d: int, h: int, mi: int, fold: int = 0) -> float:
    return datetime(y, mo, d, h, mi, tzinfo=tz, fold=fold).timestamp()


def local(instant: float | None, tz: ZoneInfo) -> str:
    assert instant is not None
    return datetime.fromtimestamp(instant, tz).isoformat()


def hm(h: int, m: int = 0) -> int:
    return h * 60 + m


def test_outside_quiet_hours_is_now() -> None:
    now = at(BERLIN, 2024, 6, 1, 12, 0)
    assert release_instant(now, BERLIN, [QuietHours(hm(22), hm(7))]) == now


def test_crossing_midnight_releases_next_morning() -> None:
    now = at(BERLIN, 2024, 6, 1, 23, 30)
    r = release_instant(now, BERLIN, [QuietHours(hm(22), hm(7))])
    assert local(r, BERLIN) == "2024-06-02T07:00:00+02:00"
    early = at(BERLIN, 2024, 6, 2, 3, 0)  # the same quiet period, after midnight
    assert release_instant(early, BERLIN, [QuietHours(hm(22), hm(7))]) == r


def test_same_instant_differs_per_zone() -> None:
    now = datetime(2024, 6, 1, 4, 0, tzinfo=UTC).timestamp()  # 06:00 Berlin, 00:00 New York
    quiet = [QuietHours(hm(22), hm(7))]
    assert local(release_instant(now, BERLIN, quiet), BERLIN) == "2024-06-01T07:00:00+02:00"
    assert local(release_instant(now, NY, quiet), NY) == "2024-06-01T07:00:00-04:00"
    tokyo = ZoneInfo("Asia/Tokyo")  # 13:00 there: not quiet
    assert release_instant(now, tokyo, quiet) == now


def test_spring_forward_end_in_gap_releases_at_transition() -> None:
    # 2024-03-10 02:00 -> 03:00 in New York; quiet until 02:30, which never shows.
    now = at(NY, 2024, 3, 9, 23, 0)
    r = release_instant(now, NY, [QuietHours(hm(22), hm(2, 30))])
    assert local(r, NY) == "2024-03-10T03:00:00-04:00"


def test_spring_forward_normal_end() -> None:
    now = at(NY, 2024, 3, 9, 23, 0)
    r = release_instant(now, NY, [QuietHours(hm(22), hm(7))])
    assert local(r, NY) == "2024-03-10T07:00:00-04:00"
    assert r is not None and r - now == 7 * 3600  # one hour shorter night


def test_fall_back_wall_clock_jumps_out_of_quiet() -> None:
    # 2024-11-03 02:00 EDT -> 01:00 EST. Quiet 01:30-02:00: the jump back ends it early.
    now = at(NY, 2024, 11, 3, 1, 45)  # first 01:45 (EDT)
    r = release_instant(now, NY, [QuietHours(hm(1, 30), hm(2))])
    assert local(r, NY) == "2024-11-03T01:00:00-05:00"
    # in the second 01:45 (EST) it ends at 02:00 EST
    later = at(NY, 2024, 11, 3, 1, 45, fold=1)
    assert local(release_instant(later, NY, [QuietHours(hm(1, 30), hm(2))]), NY) == (
        "2024-11-03T02:00:00-05:00"
    )


def test_days_filter_the_start_day() -> None:
    # quiet from Friday 20:00 to Monday 08:00
    quiet = [
        QuietHours(hm(20), hm(8), days=frozenset({4})),  # Fri 20:00 -> Sat 08:00
        QuietHours(hm(0), hm(24), days=frozenset({5, 6})),  # all of Saturday and Sunday
        QuietHours(hm(0), hm(8), days=frozenset({0})),  # Monday until 08:00
    ]
    now = at(BERLIN, 2024, 6, 7, 21, 0)  # Friday
    assert local(release_instant(now, BERLIN, quiet), BERLIN) == "2024-06-10T08:00:00+02:00"
    tuesday = at(BERLIN, 2024, 6, 11, 21, 0)
    assert release_instant(tuesday, BERLIN, quiet) == tuesday
    # a crossing span belongs to its start day only: Thursday night is not quiet
    thursday = at(BERLIN, 2024, 6, 6, 21, 0)
    assert release_instant(thursday, BERLIN, quiet[:1]) == thursday
    saturday_early = at(BERLIN, 2024, 6, 8, 3, 0)
    assert local(release_instant(saturday_early, BERLIN, quiet[:1]), BERLIN) == (
        "2024-06-08T08:00:00+02:00"
    )


def test_send_window_waits_for_next_weekday_opening() -> None:
    windows = [SendWindow(hm(9), hm(18), days=frozenset(range(5)))]
    saturday = at(BERLIN, 2024, 6, 8, 10, 0)
    assert local(release_instant(saturday, BERLIN, [], windows), BERLIN) == (
        "2024-06-10T09:00:00+02:00"
    )
    inside = at(BERLIN, 2024, 6, 10, 10, 0)
    assert release_instant(inside, BERLIN, [], windows) == inside


def test_window_and_quiet_together() -> None:
    windows = [SendWindow(hm(6), hm(12))]
    quiet = [QuietHours(hm(22), hm(8))]
    now = at(BERLIN, 2024, 6, 8, 5, 0)
    assert local(release_instant(now, BERLIN, quiet, windows), BERLIN) == (
        "2024-06-08T08:00:00+02:00"
    )


def test_never_allowed_is_none() -> None:
    assert (
        release_instant(0.0, UTC, [QuietHours(hm(9), hm(17))], [SendWindow(hm(10), hm(16))]) is None
    )


def test_zone_falls_back_to_utc() -> None:
    assert zone(None) is UTC
    assert zone("Not/AZone") is UTC
    assert zone("../etc/passwd") is UTC
    assert zone("Europe/Berlin") == BERLIN


def test_parse_spans() -> None:
    q = parse_quiet_hours({"start": "22:00", "end": "07:30", "days": ["fri", "saturday", 6]})
    assert q == QuietHours(hm(22), hm(7, 30), days=frozenset({4, 5, 6}))
    w = parse_send_window({"start": "09:00", "end": "24:00", "channels": ["email"]})
    assert w.end == 1440 and w.channels == frozenset({Channel.EMAIL})


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"start": "22:00"}, "qh.end"),
        ({"start": "25:00", "end": "07:00"}, "qh.start"),
        ({"start": "7:00", "end": "08:00"}, "qh.start"),
        ({"start": "24:00", "end": "08:00"}, "qh.start"),
        ({"start": "08:00", "end": "08:00"}, "qh.end"),
        ({"start": "08:00", "end": "09:00", "days": []}, "qh.days"),
        ({"start": "08:00", "end": "09:00", "days": ["funday"]}, "qh.days[0]"),
        ({"start": "08:00", "end": "09:00", "channels": ["fax"]}, "qh.channels[0]"),
        ({"start": "08:00", "end": "09:00", "colour": "red"}, "qh.colour"),
        ("22-07", "qh"),
    ],
)
def test_parse_span_errors(spec: Any, field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_quiet_hours(spec, "qh")
    assert info.value.field == field


ZONES = [
    "UTC",
    "America/New_York",
    "Europe/London",
    "Europe/Berlin",
    "Europe/Dublin",  # negative DST in the tz database
    "Australia/Lord_Howe",  # 30-minute DST shift
    "America/Santiago",
    "America/St_Johns",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Pacific/Chatham",
    "Africa/Casablanca",
    "Pacific/Apia",
]
# instants close to DST transitions in 2024 and arbitrary ones from 2000-2035
TRANSITIONS = [
    datetime(2024, 3, 10, 7, tzinfo=UTC),
    datetime(2024, 11, 3, 6, tzinfo=UTC),
    datetime(2024, 3, 31, 1, tzinfo=UTC),
    datetime(2024, 10, 27, 1, tzinfo=UTC),
    datetime(2024, 4, 6, 15, tzinfo=UTC),
    datetime(2024, 10, 5, 16, tzinfo=UTC),
    datetime(2024, 9, 8, 4, tzinfo=UTC),
]
near_transition = st.tuples(st.sampled_from(TRANSITIONS), st.integers(-2 * 86400, 2 * 86400)).map(
    lambda p: p[0].timestamp() + p[1]
)
anytime = st.floats(946684800, 2082758400, allow_nan=False)
spans = st.tuples(
    st.integers(0, 1439), st.integers(1, 1440), st.frozensets(st.integers(0, 6), min_size=1)
).filter(lambda t: t[0] != t[1])


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(ZONES),
    near_transition | anytime,
    st.lists(spans, min_size=1, max_size=2),
    st.lists(spans, max_size=1),
)
def test_release_is_never_quiet_nor_early_and_is_the_first(
    zone_name: str, now: float, quiet_specs: list[Any], window_specs: list[Any]
) -> None:
    tz = ZoneInfo(zone_name)
    quiet = [QuietHours(s, e, d) for s, e, d in quiet_specs]
    windows = [SendWindow(s, e, d) for s, e, d in window_specs]
    release = release_instant(now, tz, quiet, windows)
    if release is None:
        # nothing allowed at any hour of the next week
        assert not any(is_allowed(now + h * 900, tz, quiet, windows) for h in range(8 * 96))
        return
    assert release >= now
    wall = wall_clock(release, tz)
    assert not any(q.contains(wall) for q in quiet)
    assert not windows or any(w.contains(wall) for w in windows)
    if release > now:  # the instant just before was not allowed: nothing earlier was missed
        assert not is_allowed(max(now, release - 0.5), tz, quiet, windows)
        # and a sample of earlier instants is not allowed either
        step = (release - now) / 50
        assert not any(is_allowed(now + i * step, tz, quiet, windows) for i in range(50))
