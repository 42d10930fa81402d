"""Ports of segments: named audiences (a topic and/or a filter over subscriber profiles) and
the bounded, cursor-based walk over the subscribers an audience holds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from tidings.core import segments as rules
from tidings.core.notify.conditions import Condition
from tidings.records import record
from tidings.types import JSON

COUNT_PAGE = 1000  # candidates per step of a count that walks the audience


@record
class Segment:
    """A named audience: the members of `topic` (every subscriber when None) for whom
    `filter` holds (all of them when None). `filter` is kept as written; at least one of the
    two is set."""

    key: str
    name: str
    topic: str | None
    filter: JSON | None
    created_at: float
    updated_at: float


@record
class Audience:
    """Who a bulk send reaches: the candidates (the members of `topic`, or every subscriber)
    for whom `where` holds (see `tidings.core.segments`)."""

    topic: str | None = None
    where: Condition | None = None


@record
class Scan:
    """One step of a walk: `ids` are the matching subscribers found, ascending; `last` is
    the last candidate looked at (where the next step starts; None when none was);
    `examined` how many candidates were looked at; `done` that no candidate is left after
    `last`."""

    ids: list[str]
    last: str | None
    examined: int
    done: bool


class SegmentStore(Protocol):
    """Contract:

    - `put` stores the segment whole, replacing what was there but keeping the stored
      `created_at`; returns the stored segment and whether it was created.
    - `get` and `delete` raise `NotFound` for an unknown key; `page` lists by key ascending
      after `after`.
    """

    async def put(self, segment: Segment) -> tuple[Segment, bool]: ...

    async def get(self, key: str) -> Segment: ...

    async def page(self, *, after: str | None, limit: int) -> list[Segment]: ...

    async def delete(self, key: str) -> None: ...


class Audiences(Protocol):
    """Contract:

    - `scan` walks the candidates in ascending id order after `after`, looks at most at
      `examine` of them (`examine` >= 1) and returns those the audience holds, at most
      `limit` (>= 1): it stops at the `limit`-th match, which is then `last`. An adapter may
      pass over candidates it can tell do not match inside the store (a filter in SQL)
      without counting them; so a walk that starts each step at the previous `last` meets
      every subscriber the audience holds throughout the walk exactly once, and each step
      reads at most `examine` subscribers. Subscribers whose ids sort after the cursor and
      that join the audience during the walk are met too.
    - `count` is how many subscribers the audience holds now.
    - Both raise `NotFound` for an unknown topic.
    """

    async def scan(
        self, audience: Audience, *, after: str | None, limit: int, examine: int
    ) -> Scan: ...

    async def count(self, audience: Audience) -> int: ...


async def count_by_scan(audiences: Audiences, audience: Audience, page: int = COUNT_PAGE) -> int:
    """`count` by walking the whole audience, `page` candidates a step: for an adapter that
    cannot count it inside its store."""
    n, after = 0, None
    while True:
        step = await audiences.scan(audience, after=after, limit=page, examine=page)
        n += len(step.ids)
        if step.done:
            return n
        after = step.last


def scan_candidates(
    where: Condition | None, candidates: Sequence[rules.Profile], *, limit: int, examine: int
) -> Scan:
    """`scan` over candidates read from the store (ascending, at most `examine`), the filter
    evaluated in Python: for an adapter that cannot state it whole inside its store."""
    found: list[str] = []
    for n, c in enumerate(candidates, 1):
        if rules.matches(where, c):
            found.append(c.id)
            if len(found) == limit:
                return Scan(found, c.id, n, False)
    last = candidates[-1].id if candidates else None
    return Scan(found, last, len(candidates), len(candidates) < examine)
