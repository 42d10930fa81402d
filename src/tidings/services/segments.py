"""Segments: named audiences for campaigns, a topic and/or a filter over subscriber profiles
(see `tidings.core.segments`), with a count and a preview of who they hold now."""

from __future__ import annotations

from typing import Any

from tidings.core import segments as rules
from tidings.core import subscribers as profile_rules
from tidings.core.paging import decode_cursor, encode_cursor
from tidings.errors import InvalidInput, NotFound
from tidings.ports.clock import Clock
from tidings.ports.segments import Audience, Audiences, Segment, SegmentStore
from tidings.ports.subscribers import TopicStore
from tidings.records import record

MAX_PAGE = 500
PREVIEW_EXAMINE = 5000  # subscribers a preview page looks at, at most


@record
class Members:
    ids: list[str]
    next_cursor: str | None  # None: no one is left


def audience_of(topic: str | None, filter: Any) -> Audience:
    """The audience of a topic and a written filter (parsed; `InvalidInput` names the part)."""
    return Audience(topic, None if filter is None else rules.parse_filter(filter))


class SegmentService:
    def __init__(
        self, store: SegmentStore, audiences: Audiences, topics: TopicStore, clock: Clock
    ) -> None:
        self.store = store
        self.audiences = audiences
        self._topics = topics
        self._clock = clock

    async def put(
        self, key: str, *, name: str | None, topic: str | None, filter: Any
    ) -> tuple[Segment, bool]:
        """Create or replace a segment; returns it and whether it was created."""
        profile_rules.subscriber_id(key, field="key")
        if topic is None and filter is None:
            raise InvalidInput("a segment needs a topic, a filter or both", field="filter")
        audience_of(topic, filter)
        if topic is not None:
            try:
                await self._topics.get(topic)
            except NotFound:
                raise InvalidInput(f"unknown topic {topic!r}", field="topic") from None
        now = self._clock.now()
        return await self.store.put(
            Segment(
                key=key,
                name=name or key,
                topic=topic,
                filter=filter,
                created_at=now,
                updated_at=now,
            )
        )

    async def get(self, key: str) -> Segment:
        return await self.store.get(key)

    async def page(self, *, after: str | None, limit: int) -> list[Segment]:
        return await self.store.page(after=after, limit=limit)

    async def delete(self, key: str) -> None:
        """Campaigns already created keep the copy they took; nothing else changes."""
        await self.store.delete(key)

    async def count(self, key: str) -> int:
        """How many subscribers the segment holds now (a filter that SQL cannot state whole
        is evaluated page by page over the candidates)."""
        return await self.audiences.count(await self._audience(key))

    async def members(self, key: str, *, cursor: str | None, limit: int) -> Members:
        """A page of the subscribers the segment holds, in id order. A page looks at no more
        than `PREVIEW_EXAMINE` candidates, so it may hold fewer than `limit` ids (even none)
        and still have a next cursor."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"must be 1..{MAX_PAGE}", field="limit")
        after = None if cursor is None else decode_cursor(cursor, {"after": str})["after"]
        step = await self.audiences.scan(
            await self._audience(key), after=after, limit=limit, examine=PREVIEW_EXAMINE
        )
        more = not step.done and step.last is not None
        return Members(step.ids, encode_cursor({"after": step.last}) if more else None)

    async def _audience(self, key: str) -> Audience:
        s = await self.store.get(key)
        return audience_of(s.topic, s.filter)
