"""Send times in the recipient's local time, across DST and month ends (pure).

Rules, applied everywhere a local wall-clock time becomes an instant:

- A local time that does not exist (the clock jumps over it when DST starts) moves to the next
  valid time: the instant of the jump. 02:30 on the night Europe/Berlin goes from 02:00 to
  03:00 is sent at 03:00.
- A local time that exists twice (the clock goes back when DST ends) takes the first
  occurrence.
- A day of the month past the month's end ("the 31st") is the month's last day.
- The zone is the one given at resolution time: schedules are resolved with the recipient's
  zone when they run, not when they were made.

`Recurrence` gives the next occurrence of a per-subscriber schedule: daily, weekly on given
days, monthly on a day (clamped), or an RFC 5545 RRULE evaluated on the local wall clock.
"""

from __future__ import annotations

import calendar
import enum
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dateutil.rrule import rrule, rrulestr

from tidings.errors import InvalidInput
from tidings.records import record


def zone(name: str, field: str = "timezone") -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(f"unknown time zone {name!r}", field=field) from None


def _instant(naive: datetime, tz: ZoneInfo, fold: int) -> datetime:
    return naive.replace(tzinfo=tz, fold=fold).astimezone(UTC)


def _shows(instant: datetime, tz: ZoneInfo) -> datetime:
    return instant.astimezone(tz).replace(tzinfo=None)


def resolve_local(day: date, at: time, tz: ZoneInfo) -> datetime:
    """The instant (UTC) at which the wall clock in `tz` shows `at` on `day`, by the rules
    above."""
    naive = datetime.combine(day, at.replace(tzinfo=None, fold=0))
    first = _instant(naive, tz, 0)
    if _shows(first, tz) == naive:
        second = _instant(naive, tz, 1)
        return min(first, second)  # ambiguous: the earlier one; else both are equal
    # In a gap: fold=0 and fold=1 land either side of the jump. Find the jump itself.
    lo, hi = sorted((first, _instant(naive, tz, 1)))
    offset_lo = lo.astimezone(tz).utcoffset()
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(tz).utcoffset() == offset_lo:
            lo = mid
        else:
            hi = mid
    return hi.replace(microsecond=0)


def clamp_day(year: int, month: int, day: int) -> date:
    """`day` of the month, or the month's last day when it has fewer."""
    return date(year, month, min(day, calendar.monthrange(year, month)[1]))


class Frequency(enum.StrEnum):
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"
    RRULE = "rrule"


@record
class Recurrence:
    """A schedule on the recipient's wall clock. `weekdays` are 0 = Monday .. 6 = Sunday
    (weekly); `monthday` 1..31 (monthly, clamped to the month's end); `rule` an RRULE body
    such as ``FREQ=WEEKLY;BYDAY=MO,TH;BYHOUR=9;BYMINUTE=0``, whose start (RFC 5545's
    DTSTART) is at `at`: a rule without BYHOUR or BYMINUTE takes them from `at`, as a
    series without them takes its start's."""

    frequency: Frequency
    at: time = time(9, 0)
    weekdays: frozenset[int] = frozenset()
    monthday: int = 1
    rule: str = ""

    def __post_init__(self) -> None:
        if self.frequency is Frequency.WEEKLY and (
            not self.weekdays or not all(0 <= d <= 6 for d in self.weekdays)
        ):
            raise InvalidInput("weekly needs weekdays between 0 and 6", field="weekdays")
        if self.frequency is Frequency.MONTHLY and not 1 <= self.monthday <= 31:
            raise InvalidInput("monthday must be 1..31", field="monthday")
        if self.frequency is Frequency.RRULE:
            self._rrule(datetime(2000, 1, 1))  # validates

    def _rrule(self, start: datetime) -> rrule:
        try:
            parsed = rrulestr(self.rule, dtstart=start)
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"invalid RRULE: {exc}", field="rule") from None
        if not isinstance(parsed, rrule):
            raise InvalidInput("one RRULE only", field="rule")
        return parsed

    def next_after(self, instant: datetime, tz: ZoneInfo) -> datetime:
        """The first occurrence strictly after `instant` (aware), as a UTC instant."""
        local = instant.astimezone(tz).replace(tzinfo=None)
        if self.frequency is Frequency.RRULE:
            return self._next_rrule(instant, local, tz)
        day = local.date() - timedelta(days=1)  # a gap can move yesterday's time past midnight
        for _ in range(800):
            if self._matches(day):
                at = resolve_local(day, self.at, tz)
                if at > instant:
                    return at
            day += timedelta(days=1)
        raise InvalidInput("the schedule has no next occurrence", field="frequency")

    def _matches(self, day: date) -> bool:
        match self.frequency:
            case Frequency.DAILY:
                return True
            case Frequency.WEEKLY:
                return day.weekday() in self.weekdays
            case Frequency.MONTHLY:
                return day == clamp_day(day.year, day.month, self.monthday)
        return False

    def _next_rrule(self, instant: datetime, local: datetime, tz: ZoneInfo) -> datetime:
        # the series starts at `at` (a rule's missing BYHOUR/BYMINUTE come from its start),
        # two days back so that an occurrence moved by a DST gap is not missed
        start = datetime.combine(local.date() - timedelta(days=2), self.at)
        rule = self._rrule(start)
        cursor = start
        for _ in range(10_000):
            occurrence = rule.after(cursor, inc=False)
            if occurrence is None:
                raise InvalidInput("the RRULE has no next occurrence", field="rule")
            at = resolve_local(occurrence.date(), occurrence.time(), tz)
            if at > instant:
                return at
            cursor = occurrence
        raise InvalidInput("the RRULE has no next occurrence", field="rule")
