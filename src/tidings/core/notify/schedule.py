"""Quiet hours and send windows in a recipient's time zone, and the exact instant a held
message may go out.

Windows are written in local wall-clock time. A moment is *quiet* when the recipient's wall
clock shows a time inside a quiet period; a period whose end is not after its start crosses
midnight and belongs to the day it starts on (``days`` filter that start day; 0 = Monday).
Send windows are the opposite: when a channel has any, it may send only inside one.

:func:`release_instant` is exact across DST transitions because it judges instants by the wall
clock they show, and the earliest allowed instant is always ``now``, a boundary time on some
day (each instant that shows it, both folds), or a UTC-offset transition (where the wall clock
jumps over or back across a boundary). It checks those candidates in order.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tidings.core.notify.fields import channel, check_known, required
from tidings.core.notify.types import Channel
from tidings.errors import InvalidInput
from tidings.records import record

DAY_NAMES: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ALL_DAYS: Final = frozenset(range(7))
_CLOCK_RE = re.compile(r"([01]\d|2[0-3]):([0-5]\d)|24:00")
HORIZON_DAYS: Final = 9  # a weekly rule that allows any moment allows one within 8 days
QUIET_CHANNELS_DEFAULT: Final = frozenset({Channel.PUSH, Channel.WEBPUSH, Channel.SMS})
WINDOW_CHANNELS_DEFAULT: Final = frozenset(Channel) - {Channel.IN_APP, Channel.WEBHOOK}


@record
class LocalSpan:
    """``start``/``end`` in minutes after local midnight (end may be 1440), on ``days``."""

    start: int
    end: int
    days: frozenset[int] = ALL_DAYS

    def __post_init__(self) -> None:
        if not (0 <= self.start < 1440 and 0 <= self.end <= 1440):
            raise InvalidInput("times must lie within a day", field="start")
        if self.start == self.end:
            raise InvalidInput("start and end must differ", field="end")
        if not self.days or not self.days <= ALL_DAYS:
            raise InvalidInput("days must be a non-empty set of weekdays", field="days")

    @property
    def crosses_midnight(self) -> bool:
        return self.end <= self.start

    def contains(self, wall: datetime) -> bool:
        """Whether the naive local date-time ``wall`` falls inside a period of this span."""
        minute = wall.hour * 60 + wall.minute + (wall.second + wall.microsecond / 1e6) / 60
        today = wall.weekday()
        if not self.crosses_midnight:
            return today in self.days and self.start <= minute < self.end
        if today in self.days and minute >= self.start:
            return True
        return (today - 1) % 7 in self.days and minute < self.end


@record
class QuietHours(LocalSpan):
    """No messages on ``channels`` while the recipient's clock is inside the span; they are
    held until it ends."""

    channels: frozenset[Channel] = QUIET_CHANNELS_DEFAULT


@record
class SendWindow(LocalSpan):
    """Messages on ``channels`` go out only while the recipient's clock is inside a window."""

    channels: frozenset[Channel] = WINDOW_CHANNELS_DEFAULT


def zone(name: str | None) -> tzinfo:
    """The time zone called ``name``; UTC for None, an empty or an unknown name."""
    if not name:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def wall_clock(instant: float, tz: tzinfo) -> datetime:
    """The naive local date-time an instant shows in ``tz``."""
    return datetime.fromtimestamp(instant, tz).replace(tzinfo=None)


def is_allowed(
    instant: float, tz: tzinfo, quiet: Sequence[LocalSpan], windows: Sequence[LocalSpan]
) -> bool:
    """Outside every quiet span and, when there are windows, inside one of them."""
    if not quiet and not windows:
        return True
    wall = wall_clock(instant, tz)
    if any(q.contains(wall) for q in quiet):
        return False
    return not windows or any(w.contains(wall) for w in windows)


def release_instant(
    now: float, tz: tzinfo, quiet: Sequence[LocalSpan], windows: Sequence[LocalSpan] = ()
) -> float | None:
    """The earliest instant ``>= now`` that is allowed (``now`` itself when it is), or None
    when the spans never allow a message (for example a window that lies inside quiet hours
    every day)."""
    if is_allowed(now, tz, quiet, windows):
        return now
    first_day = wall_clock(now, tz).date() - timedelta(days=1)
    boundaries = {q.end for q in quiet} | {w.start for w in windows}
    candidates: set[float] = set()
    for offset in range(HORIZON_DAYS + 1):
        day = first_day + timedelta(days=offset)
        for minute in boundaries:
            candidates.update(_instants_showing(day, minute, tz))
    candidates.update(_transitions(tz, now - 86400, now + (HORIZON_DAYS + 1) * 86400))
    for candidate in sorted(c for c in candidates if c >= now):
        if is_allowed(candidate, tz, quiet, windows):
            return candidate
    return None


def _instants_showing(day: date, minute: int, tz: tzinfo) -> set[float]:
    """Every instant whose wall clock in ``tz`` shows ``minute`` on ``day`` (none in a DST gap,
    two in an overlap)."""
    naive = datetime.combine(day, time()) + timedelta(minutes=minute)
    out: set[float] = set()
    for fold in (0, 1):
        instant = naive.replace(tzinfo=tz, fold=fold).timestamp()
        if wall_clock(instant, tz) == naive:
            out.add(instant)
    return out


def _offset(instant: float, tz: tzinfo) -> timedelta | None:
    return datetime.fromtimestamp(instant, tz).utcoffset()


def _transitions(tz: tzinfo, start: float, end: float) -> Iterable[float]:
    """Instants in [start, end) where the UTC offset of ``tz`` changes (whole seconds)."""
    step = 3600
    t = float(int(start))
    before = _offset(t, tz)
    while t < end:
        after = _offset(t + step, tz)
        if after != before:
            lo, hi = int(t), int(t + step)  # offset(lo) == before, offset(hi) == after
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _offset(mid, tz) == before:
                    lo = mid
                else:
                    hi = mid
            yield float(hi)
        before = after
        t += step


# -- parsing -------------------------------------------------------------------------------


def parse_clock(value: Any, field: str) -> int:
    """Minutes after midnight from ``"HH:MM"`` (24-hour; ``"24:00"`` allowed as an end)."""
    if not isinstance(value, str) or not _CLOCK_RE.fullmatch(value):
        raise InvalidInput('must be a time of day such as "22:00"', field=field)
    hours, minutes = value.split(":")
    return int(hours) * 60 + int(minutes)


def parse_days(value: Any, field: str) -> frozenset[int]:
    """Weekdays from a list of names (``mon``..``sun``) or numbers (0 = Monday)."""
    if not isinstance(value, list) or not value:
        raise InvalidInput("must be a non-empty list of weekdays (mon..sun)", field=field)
    days: set[int] = set()
    for index, item in enumerate(value):
        if isinstance(item, str) and item.lower()[:3] in DAY_NAMES and len(item) >= 3:
            days.add(DAY_NAMES.index(item.lower()[:3]))
        elif isinstance(item, int) and not isinstance(item, bool) and 0 <= item <= 6:
            days.add(item)
        else:
            raise InvalidInput("must be a weekday: mon..sun or 0..6", field=f"{field}[{index}]")
    return frozenset(days)


def parse_channels(value: Any, field: str) -> frozenset[Channel]:
    if not isinstance(value, list) or not value:
        raise InvalidInput("must be a non-empty list of channels", field=field)
    out: set[Channel] = set()
    for index, item in enumerate(value):
        out.add(channel(item, f"{field}[{index}]"))
    return frozenset(out)


def _parse_span(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidInput("must be a mapping with start and end", field=field)
    check_known(value, ("start", "end", "days", "channels"), field)
    for key in ("start", "end"):
        required(value, key, field)
    start = parse_clock(value["start"], f"{field}.start")
    if start == 1440:
        raise InvalidInput("a span cannot start at 24:00", field=f"{field}.start")
    end = parse_clock(value["end"], f"{field}.end")
    if start == end:
        raise InvalidInput("must differ from start", field=f"{field}.end")
    out: dict[str, Any] = {"start": start, "end": end}
    if "days" in value:
        out["days"] = parse_days(value["days"], f"{field}.days")
    if "channels" in value:
        out["channels"] = parse_channels(value["channels"], f"{field}.channels")
    return out


def parse_quiet_hours(value: Any, field: str = "quiet_hours") -> QuietHours:
    """``{start: "22:00", end: "07:00", days: [...], channels: [...]}``."""
    return QuietHours(**_parse_span(value, field))


def parse_send_window(value: Any, field: str = "send_windows") -> SendWindow:
    return SendWindow(**_parse_span(value, field))
