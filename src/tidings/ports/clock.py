from __future__ import annotations

from typing import Protocol


class Clock(Protocol):
    """Wall-clock time in epoch seconds. Tests pass a controllable clock; nothing in services or
    adapters reads `time.time()` directly, so leases, TTLs and schedules can be driven."""

    def now(self) -> float: ...

    def monotonic(self) -> float: ...
