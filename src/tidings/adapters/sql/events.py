from __future__ import annotations

import dataclasses
from typing import Any

from sqlalchemy import ColumnElement, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tidings.adapters.sql.engine import is_postgres, none_due, reader, writer
from tidings.adapters.sql.jobs import job_row
from tidings.adapters.sql.tables import campaigns, event_outcomes, events, jobs, notify_runs
from tidings.errors import Conflict, IdempotencyConflict, NotFound
from tidings.ports.clock import Clock
from tidings.ports.events import SETTLED_STATES
from tidings.types import EventRecord, EventState, NewEvent, NewJob, Outcome, Priority

# Statements built once: building `insert(...).values(...)` per call costs more than the
# INSERT itself on SQLite.
_INSERT_EVENT = insert(events)
_INSERT_OUTCOME = insert(event_outcomes)
_INSERT_JOB = insert(jobs)
_IN_CHUNK = 500  # ids per IN list


class SqlEventStore:
    def __init__(self, engine: AsyncEngine, clock: Clock) -> None:
        self._engine = engine
        self._read = reader(engine)
        self._clock = clock

    async def append(
        self, event: NewEvent, *, then: NewJob | None = None
    ) -> tuple[EventRecord, bool]:
        now = self._clock.now()
        record = EventRecord.from_new(event, created_at=now)
        try:
            async with writer(self._engine) as conn:
                await conn.execute(_INSERT_EVENT, _row(record))
                if then is not None:
                    await conn.execute(_INSERT_JOB, job_row(then, now))
            return record, True
        except IntegrityError:
            pass  # the key is taken: by the same request (replay) or another body (conflict)
        existing = await self.get_by_key(event.idempotency_key)
        if existing is None:  # the id collided, not the key: cannot happen with uuid4 ids
            raise Conflict(f"event {event.id} exists", field="id")
        if existing.body_hash != event.body_hash:
            raise IdempotencyConflict(
                "idempotency key was used with a different body", field="idempotency_key"
            )
        return existing, False

    async def get(self, event_id: str) -> EventRecord | None:
        return await self._find(events.c.id == event_id)

    async def get_by_key(self, idempotency_key: str) -> EventRecord | None:
        return await self._find(events.c.idempotency_key == idempotency_key)

    async def _find(self, where: ColumnElement[bool]) -> EventRecord | None:
        # the event and its outcomes in one round trip: a row per outcome (one row with
        # no outcome when it has none), in the order they were added
        query = (
            select(events, *_OUTCOME_COLUMNS)
            .select_from(events.outerjoin(event_outcomes, event_outcomes.c.event_id == events.c.id))
            .where(where)
            .order_by(event_outcomes.c.id)
        )
        async with self._read.connect() as conn:
            rows = (await conn.execute(query)).all()
        if not rows:
            return None
        record = _record(rows[0]._mapping)
        outcomes = tuple(
            Outcome(
                kind=m["o_kind"],
                target=m["o_target"],
                status=m["o_status"],
                detail=m["o_detail"],
                at=m["o_at"],
            )
            for m in (r._mapping for r in rows)
            if m["o_id"] is not None
        )
        return dataclasses.replace(record, outcomes=outcomes) if outcomes else record

    async def add_outcome(self, event_id: str, outcome: Outcome) -> None:
        async with writer(self._engine) as conn:
            exists = (
                await conn.execute(select(events.c.id).where(events.c.id == event_id))
            ).one_or_none()
            if exists is None:
                raise NotFound(f"event {event_id} not found")
            await conn.execute(
                _INSERT_OUTCOME,
                {
                    "event_id": event_id,
                    "kind": outcome.kind,
                    "target": outcome.target,
                    "status": outcome.status,
                    "detail": outcome.detail,
                    "at": outcome.at or self._clock.now(),
                },
            )

    async def set_state(self, event_id: str, state: EventState) -> None:
        async with writer(self._engine) as conn:
            result = await conn.execute(
                update(events).where(events.c.id == event_id).values(state=state.value)
            )
            if result.rowcount == 0:
                raise NotFound(f"event {event_id} not found")

    async def transition(self, event_id: str, from_: EventState, to: EventState) -> bool:
        async with writer(self._engine) as conn:
            result = await conn.execute(
                update(events)
                .where(events.c.id == event_id, events.c.state == from_.value)
                .values(state=to.value)
            )
            if result.rowcount:
                return True
            found = (
                await conn.execute(select(events.c.id).where(events.c.id == event_id))
            ).one_or_none()
        if found is None:
            raise NotFound(f"event {event_id} not found")
        return False

    async def list_in_state(self, state: EventState, limit: int) -> list[EventRecord]:
        async with self._read.connect() as conn:
            rows = await conn.execute(
                select(events)
                .where(events.c.state == state.value)
                .order_by(events.c.created_at, events.c.id)
                .limit(limit)
            )
            return await _with_outcomes(conn, [_record(r._mapping) for r in rows])

    async def prune(self, before: float, limit: int) -> int:
        """The ids first, by the (state, created_at) index, then the outcomes and the events
        by those ids, in one transaction. The order follows the index: without it SQLite,
        once its statistics say that nearly every event is dispatched, scans the table.
        Runs are found by their event index; the campaigns' events are few, read once."""
        e = events.c
        due = (
            select(e.id)
            .where(
                e.state.in_(sorted(s.value for s in SETTLED_STATES)),
                e.created_at < before,
                e.send_at.is_(None) | (e.send_at < before),
                ~select(notify_runs.c.id).where(notify_runs.c.event_id == e.id).exists(),
                e.id.not_in(select(campaigns.c.event_id)),
            )
            .order_by(e.state, e.created_at)
            .limit(limit)
        )
        if await none_due(self._engine, due):
            return 0
        if is_postgres(self._engine):  # processes pruning at once take different events
            due = due.with_for_update(skip_locked=True)
        async with writer(self._engine) as conn:
            ids = [str(i) for i in (await conn.execute(due)).scalars()]
            for i in range(0, len(ids), _IN_CHUNK):
                chunk = ids[i : i + _IN_CHUNK]
                await conn.execute(
                    delete(event_outcomes).where(event_outcomes.c.event_id.in_(chunk))
                )
                await conn.execute(delete(events).where(e.id.in_(chunk)))
        return len(ids)


def _row(r: EventRecord) -> dict[str, Any]:
    return {
        "id": r.id,
        "type": r.type,
        "idempotency_key": r.idempotency_key,
        "body_hash": r.body_hash,
        "actor": r.actor,
        "recipients": list(r.recipients),
        "topic": r.topic,
        "channels": list(r.channels),
        "payload": r.payload,
        "priority": r.priority.value,
        "send_at": r.send_at,
        "state": r.state.value,
        "created_at": r.created_at,
    }


_OUTCOME_COLUMNS = [
    event_outcomes.c[name].label(f"o_{name}")
    for name in ("id", "kind", "target", "status", "detail", "at")
]


def _record(m: Any) -> EventRecord:
    return EventRecord(
        id=m["id"],
        type=m["type"],
        idempotency_key=m["idempotency_key"],
        body_hash=m["body_hash"],
        actor=m["actor"],
        recipients=tuple(m["recipients"]),
        topic=m["topic"],
        channels=tuple(m["channels"]),
        payload=m["payload"],
        priority=Priority(m["priority"]),
        send_at=m["send_at"],
        state=EventState(m["state"]),
        created_at=m["created_at"],
    )


async def _with_outcomes(conn: AsyncConnection, records: list[EventRecord]) -> list[EventRecord]:
    """The records with their outcomes, in the order they were added (one query)."""
    if not records:
        return records
    rows = await conn.execute(
        select(event_outcomes)
        .where(event_outcomes.c.event_id.in_([r.id for r in records]))
        .order_by(event_outcomes.c.id)
    )
    found: dict[str, list[Outcome]] = {}
    for r in rows:
        found.setdefault(r.event_id, []).append(
            Outcome(kind=r.kind, target=r.target, status=r.status, detail=r.detail, at=r.at)
        )
    return [
        dataclasses.replace(r, outcomes=tuple(found[r.id])) if r.id in found else r for r in records
    ]
