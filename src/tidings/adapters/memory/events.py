from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable

from tidings.errors import Conflict, IdempotencyConflict, NotFound
from tidings.ports.clock import Clock
from tidings.ports.events import SETTLED_STATES
from tidings.ports.jobs import JobQueue
from tidings.types import EventRecord, EventState, NewEvent, NewJob, Outcome


class MemoryEventStore:
    """`referenced(event_id)`: whether a run or a campaign refers to the event, asked by
    `prune` (the SQL store reads those tables instead). It must not suspend (a memory
    store's read does not), so that a prune is one step with respect to other coroutines;
    without it `prune` refuses."""

    def __init__(
        self,
        clock: Clock,
        jobs: JobQueue | None = None,
        *,
        referenced: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        self._clock = clock
        self._jobs = jobs  # where `append(..., then=job)` enqueues
        self.referenced = referenced
        self._by_id: dict[str, EventRecord] = {}
        self._by_key: dict[str, str] = {}

    async def append(
        self, event: NewEvent, *, then: NewJob | None = None
    ) -> tuple[EventRecord, bool]:
        existing_id = self._by_key.get(event.idempotency_key)
        if existing_id is not None:
            existing = self._by_id[existing_id]
            if existing.body_hash != event.body_hash:
                raise IdempotencyConflict(
                    "idempotency key was used with a different body", field="idempotency_key"
                )
            return existing, False
        if event.id in self._by_id:
            raise Conflict(f"event {event.id} exists", field="id")
        if then is not None and self._jobs is None:
            raise ValueError("this event store has no job queue for `then`")
        record = EventRecord.from_new(event, created_at=self._clock.now())
        self._by_id[event.id] = record
        self._by_key[event.idempotency_key] = event.id
        if then is not None and self._jobs is not None:
            await self._jobs.enqueue(then)  # nothing in between can fail: one step in memory
        return record, True

    async def get(self, event_id: str) -> EventRecord | None:
        return self._by_id.get(event_id)

    async def get_by_key(self, idempotency_key: str) -> EventRecord | None:
        event_id = self._by_key.get(idempotency_key)
        return self._by_id[event_id] if event_id is not None else None

    def _require(self, event_id: str) -> EventRecord:
        record = self._by_id.get(event_id)
        if record is None:
            raise NotFound(f"event {event_id} not found")
        return record

    async def add_outcome(self, event_id: str, outcome: Outcome) -> None:
        record = self._require(event_id)
        if not outcome.at:
            outcome = dataclasses.replace(outcome, at=self._clock.now())
        self._by_id[event_id] = dataclasses.replace(record, outcomes=(*record.outcomes, outcome))

    async def set_state(self, event_id: str, state: EventState) -> None:
        record = self._require(event_id)
        self._by_id[event_id] = dataclasses.replace(record, state=state)

    async def transition(self, event_id: str, from_: EventState, to: EventState) -> bool:
        record = self._require(event_id)
        if record.state != from_:
            return False
        self._by_id[event_id] = dataclasses.replace(record, state=to)
        return True

    async def list_in_state(self, state: EventState, limit: int) -> list[EventRecord]:
        found = [r for r in self._by_id.values() if r.state == state]
        found.sort(key=lambda r: r.created_at)
        return found[:limit]

    async def prune(self, before: float, limit: int) -> int:
        if self.referenced is None:
            raise ValueError("this event store has no `referenced` to ask about runs")
        due = sorted(
            (
                r
                for r in self._by_id.values()
                if r.state in SETTLED_STATES
                and r.created_at < before
                and (r.send_at is None or r.send_at < before)
            ),
            key=lambda r: r.created_at,
        )
        gone: list[EventRecord] = []
        for record in due:
            if len(gone) == limit:
                break
            if not await self.referenced(record.id):
                gone.append(record)
        for record in gone:
            del self._by_id[record.id]
            del self._by_key[record.idempotency_key]
        return len(gone)
