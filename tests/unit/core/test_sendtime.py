"""Local send times across DST and month ends, and recurring schedules."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.core.sendtime import Frequency, Recurrence, clamp_day, resolve_local, zone
from tidings.errors import InvalidInput

BERLIN = ZoneInfo("Europe/Berlin")
ZONES = [
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",  # 30-minute DST
    "Pacific/Chatham",  # +12:45 / +13:45
    "America/Santiago",
    "Africa/Casablanca",  # DST suspended for Ramadan
    "Europe/Dublin",  # negative DST in tzdata
    "America/Havana",  # transitions at midnight
    "America/St_Johns",
    "Asia/Kolkata",  # no DST
    "Asia/Tehran",
    "Pacific/Apia",  # skipped a whole day in 2011
]


def wall(instant: datetime, tz: ZoneInfo) -> datetime:
    return instant.astimezone(tz).replace(tzinfo=None)


def test_a_time_in_the_spring_gap_moves_to_the_jump() -> None:
    at = resolve_local(date(2026, 3, 29), time(2, 30), BERLIN)
    assert wall(at, BERLIN) == datetime(2026, 3, 29, 3, 0)
    assert at == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)


def test_an_ambiguous_time_takes_the_first_occurrence() -> None:
    at = resolve_local(date(2026, 10, 25), time(2, 30), BERLIN)
    assert at == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # 02:30 CEST, not 02:30 CET


def test_an_ordinary_time() -> None:
    assert resolve_local(date(2026, 6, 1), time(9), BERLIN) == datetime(2026, 6, 1, 7, tzinfo=UTC)


@settings(max_examples=400, deadline=None)
@given(
    name=st.sampled_from(ZONES),
    day=st.dates(min_value=date(2010, 1, 1), max_value=date(2035, 12, 31)),
    minute=st.integers(min_value=0, max_value=24 * 60 - 1),
)
def test_the_send_instant_is_the_first_to_reach_the_wall_time(
    name: str, day: date, minute: int
) -> None:
    tz = ZoneInfo(name)
    naive = datetime.combine(day, time(minute // 60, minute % 60))
    at = resolve_local(day, naive.time(), tz)
    assert wall(at, tz) >= naive  # never early
    assert wall(at - timedelta(seconds=1), tz) < naive  # and the first instant that gets there
    if wall(at, tz) != naive:  # only a time that does not exist moves
        assert naive.replace(tzinfo=tz).astimezone(UTC).astimezone(tz).replace(tzinfo=None) != naive


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(ZONES),
    start=st.datetimes(min_value=datetime(2015, 1, 1), max_value=datetime(2034, 1, 1)),
    monthday=st.integers(min_value=28, max_value=31),
)
def test_monthly_on_a_late_day_uses_the_last_day_of_shorter_months(
    name: str, start: datetime, monthday: int
) -> None:
    tz = ZoneInfo(name)
    rule = Recurrence(Frequency.MONTHLY, time(9), monthday=monthday)
    instant = start.replace(tzinfo=UTC)
    months = []
    for _ in range(14):
        nxt = rule.next_after(instant, tz)
        assert nxt > instant
        local = wall(nxt, tz)
        expected = clamp_day(local.year, local.month, monthday)
        # the 9:00 of that day, or the jump if 9:00 does not exist there
        assert nxt == resolve_local(expected, time(9), tz)
        months.append((local.year, local.month))
        instant = nxt
    assert len(set(months)) == len(months)  # one per month, none skipped or doubled
    for (y1, m1), (y2, m2) in itertools.pairwise(months):
        assert (y2 * 12 + m2) - (y1 * 12 + m1) == 1


def test_daily_and_weekly_schedules_keep_their_local_time_across_dst() -> None:
    daily = Recurrence(Frequency.DAILY, time(18))
    t = datetime(2026, 3, 27, 12, tzinfo=UTC)
    seen = []
    for _ in range(4):
        t = daily.next_after(t, BERLIN)
        seen.append(wall(t, BERLIN))
    assert seen == [datetime(2026, 3, d, 18) for d in (27, 28, 29, 30)]
    weekly = Recurrence(Frequency.WEEKLY, time(9), weekdays=frozenset({0}))  # Mondays
    t = weekly.next_after(datetime(2026, 11, 28, tzinfo=UTC), BERLIN)
    assert wall(t, BERLIN) == datetime(2026, 11, 30, 9)


def test_rrule_schedules_on_the_wall_clock() -> None:
    rule = Recurrence(Frequency.RRULE, rule="FREQ=WEEKLY;BYDAY=MO,TH;BYHOUR=9;BYMINUTE=0")
    t = datetime(2026, 11, 28, tzinfo=UTC)
    out = []
    for _ in range(3):
        t = rule.next_after(t, BERLIN)
        out.append(wall(t, BERLIN))
    assert out == [datetime(2026, 11, 30, 9), datetime(2026, 12, 3, 9), datetime(2026, 12, 7, 9)]
    gap = Recurrence(Frequency.RRULE, rule="FREQ=DAILY;BYHOUR=2;BYMINUTE=30")
    t = gap.next_after(datetime(2026, 3, 28, 12, tzinfo=UTC), BERLIN)
    assert wall(t, BERLIN) == datetime(2026, 3, 29, 3, 0)  # the gap moves it to the jump
    t = gap.next_after(t, BERLIN)
    assert wall(t, BERLIN) == datetime(2026, 3, 30, 2, 30)


def test_an_rrule_without_its_time_of_day_takes_at() -> None:
    """RFC 5545: what the rule leaves out comes from its start, which is `at` (09:00 unless
    given), not the moment the schedule was made."""
    mondays = Recurrence(Frequency.RRULE, time(9), rule="FREQ=WEEKLY;BYDAY=MO")
    made = datetime(2026, 11, 30, 5, 38, tzinfo=UTC)  # a Monday, before 09:00
    assert wall(mondays.next_after(made, UTC), UTC) == datetime(2026, 11, 30, 9, 0)
    late = Recurrence(Frequency.RRULE, time(17, 45), rule="FREQ=DAILY;BYHOUR=8")
    assert wall(late.next_after(made, BERLIN), BERLIN) == datetime(2026, 11, 30, 8, 45)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"frequency": Frequency.WEEKLY}, "weekdays"),
        ({"frequency": Frequency.WEEKLY, "weekdays": frozenset({7})}, "weekdays"),
        ({"frequency": Frequency.MONTHLY, "monthday": 32}, "monthday"),
        ({"frequency": Frequency.RRULE, "rule": "FREQ=SOMETIMES"}, "rule"),
    ],
)
def test_bad_schedules_are_refused(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        Recurrence(**kwargs)  # type: ignore[arg-type]
    assert err.value.field == field


def test_unknown_zone() -> None:
    with pytest.raises(InvalidInput, match="Mars/Olympus"):
        zone("Mars/Olympus")
