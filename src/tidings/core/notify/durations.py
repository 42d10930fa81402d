"""Strict durations for workflow definitions: ``"10m"``, ``"1h30m"``, ``"250ms"``, ISO 8601
``"PT10M"`` / ``"P1DT2H"``, or a whole number of seconds."""

from __future__ import annotations

import re
from typing import Any

from tidings.errors import InvalidInput

# Units must appear at most once each, largest first: "1h30m" is fine, "30m1h" and "1h1h" are not.
_COMPACT_RE = re.compile(
    r"(?:(?P<w>\d+)w)?(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m(?!s))?"
    r"(?:(?P<s>\d+)s)?(?:(?P<ms>\d+)ms)?"
)
_ISO_RE = re.compile(
    r"P(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?"
    r"(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?"
)
_UNITS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
MAX_DURATION = 366 * 86400.0  # a year and a day: anything longer is a definition mistake


def parse_duration(value: Any, field: str = "duration", *, positive: bool = True) -> float:
    """Seconds from a duration. Accepts a non-negative whole number of seconds, a compact string
    (units ``w d h m s ms``, each at most once, largest first, e.g. ``"1h30m"``) or an ISO 8601
    duration without years or months (``"PT10M"``, ``"P1DT2H"``; a fraction only on seconds).

    With ``positive`` (the default) zero is rejected. Anything else raises
    :class:`~tidings.errors.InvalidInput` naming ``field``.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value.strip(), field)
    else:
        raise InvalidInput(
            'must be a duration such as "10m", "1h30m", "PT10M" or whole seconds', field=field
        )
    if seconds < 0:
        raise InvalidInput("must not be negative", field=field)
    if positive and seconds == 0:
        raise InvalidInput("must be longer than zero", field=field)
    if seconds > MAX_DURATION:
        raise InvalidInput("must be at most 366 days", field=field)
    return seconds


def _parse_text(text: str, field: str) -> float:
    if text.startswith("P"):
        m = _ISO_RE.fullmatch(text)
        if m is None or not any(m.groupdict().values()) or text.endswith("T"):
            raise InvalidInput(f"{text!r} is not an ISO 8601 duration like PT10M", field=field)
        parts = {k: float(v) for k, v in m.groupdict().items() if v is not None}
    else:
        m = _COMPACT_RE.fullmatch(text)
        if m is None or not text or not any(m.groupdict().values()):
            raise InvalidInput(
                f'{text!r} is not a duration such as "30s", "10m", "1h30m", "2d"', field=field
            )
        parts = {k: float(v) for k, v in m.groupdict().items() if v is not None}
    return sum(_UNITS[unit.lower()] * amount for unit, amount in parts.items())


def format_duration(seconds: float) -> str:
    """The compact form of a duration (``5400`` -> ``"1h30m"``); the inverse of the parser for
    whole milliseconds."""
    if seconds <= 0:
        return "0s"
    millis = round(seconds * 1000)
    out = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        amount, millis = divmod(millis, size)
        if amount:
            out.append(f"{amount}{unit}")
    if millis:
        out.append(f"{millis}ms")
    return "".join(out)
