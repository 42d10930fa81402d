"""Event ingest: accept an authoritative event exactly once, persist it, then hand it on."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson

from tidings.core import subscribers as subscriber_rules
from tidings.core.idempotency import fingerprint
from tidings.errors import Conflict, InvalidInput, NotFound
from tidings.ports.clock import Clock
from tidings.ports.events import EventStore
from tidings.ports.jobs import JobQueue
from tidings.records import record
from tidings.services.lanes import LaneGate
from tidings.services.worker import Handoffs
from tidings.types import JSON, EventRecord, EventState, NewEvent, NewJob, Priority

DISPATCH_JOB = "event.dispatch"

# (type, recipients, topic, channels, payload) -> raises InvalidInput when the event could
# never be delivered to its recipients
RecipientCheck = Callable[[str, Sequence[str], str | None, Sequence[str], JSON], Awaitable[None]]


@record
class EventInput:
    """A validated ingest request (the HTTP layer and the SDK build it)."""

    type: str
    payload: JSON
    actor: str | None = None
    recipients: tuple[str, ...] = ()
    topic: str | None = None
    channels: tuple[str, ...] = ()
    priority: Priority = Priority.TRANSACTIONAL
    send_at: float | None = None
    external_id: str | None = None

    def canonical(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "payload": self.payload,
            "actor": self.actor,
            "recipients": list(self.recipients),
            "topic": self.topic,
            "channels": list(self.channels),
            "priority": self.priority.value,
            "send_at": self.send_at,
            "id": self.external_id,
        }


@record
class IngestResult:
    event: EventRecord
    created: bool


class IngestService:
    """Exactly-once ingest.

    The idempotency key is the `Idempotency-Key` given by the caller, else the event's own `id`;
    without either, every request is a new event. The body fingerprint decides between a replay
    (same body: the original event) and a conflict (different body: `IdempotencyConflict`).
    The dispatch job is written in the same transaction as the event (the event store's
    outbox), so an event is never stored without it; replays re-enqueue it with its dedupe key
    (a no-op), and `redispatch_pending` at start covers events stored by older versions.
    """

    def __init__(
        self,
        events: EventStore,
        jobs: JobQueue,
        clock: Clock,
        *,
        max_payload_bytes: int,
        on_enqueue: Callable[[], None] | None = None,
        check_channel: Callable[[str], object] | None = None,
        check_recipients: RecipientCheck | None = None,
        handoffs: Handoffs | None = None,
        gate: LaneGate | None = None,
    ) -> None:
        self._events = events
        self._jobs = jobs
        self._clock = clock
        self._max_payload = max_payload_bytes
        self._on_enqueue = on_enqueue
        self._check_channel = check_channel
        self.check_recipients = check_recipients
        self._handoffs = handoffs or Handoffs(())  # none: every job is queued for a claim
        self._gate = gate or LaneGate()
        self.on_cancel: Callable[[str], Awaitable[object]] | None = None

    async def ingest(self, data: EventInput, idempotency_key: str | None = None) -> IngestResult:
        """Validate and store the event exactly once, with its dispatch job. Accepting a
        transactional event is transactional work: bulk work waits at its yield points (and
        before its write transactions) while it is in flight (`LaneGate.urgent`)."""
        if data.priority is Priority.TRANSACTIONAL:
            with self._gate.urgent():
                return await self._ingest(data, idempotency_key)
        return await self._ingest(data, idempotency_key)

    async def _ingest(self, data: EventInput, idempotency_key: str | None) -> IngestResult:
        size = len(orjson.dumps(data.payload))
        if size > self._max_payload:
            raise InvalidInput(
                f"payload is {size} bytes; the limit is {self._max_payload}", field="payload"
            )
        for i, recipient in enumerate(data.recipients):
            # the subscriber id rule: an id no subscriber can have is refused here, not
            # found out by the dispatch
            subscriber_rules.subscriber_id(recipient, field=f"recipients.{i}")
        if self._check_channel is not None:
            for i, channel in enumerate(data.channels):
                try:
                    self._check_channel(channel)
                except InvalidInput as exc:
                    raise InvalidInput(exc.message, field=f"channels.{i}") from exc
        if self.check_recipients is not None:
            await self.check_recipients(
                data.type, data.recipients, data.topic, data.channels, data.payload
            )
        event_id = str(uuid.uuid4())
        key = idempotency_key or data.external_id or f"auto:{event_id}"
        new = NewEvent(
            id=event_id,
            type=data.type,
            idempotency_key=key,
            body_hash=fingerprint(data.canonical()),
            actor=data.actor,
            recipients=data.recipients,
            topic=data.topic,
            channels=data.channels,
            payload=data.payload,
            priority=data.priority,
            send_at=data.send_at,
        )
        # A transactional event's dispatch goes straight to a local worker once stored.
        with self._handoffs.offering([_dispatch_job(new)], self._clock.now()) as offered:
            record, created = await self._events.append(new, then=offered.jobs[0])
            if created:
                offered.stored = offered.handed()
        if created:
            # a dispatch handed to a local pool runs without a claim: no wake for it
            if self._on_enqueue is not None and offered.queued():
                self._on_enqueue()
        else:
            await self._enqueue_dispatch(record)  # a replay: repair, if it ever went missing
        return IngestResult(event=record, created=created)

    async def _enqueue_dispatch(self, record: EventRecord) -> None:
        await self._jobs.enqueue(_dispatch_job(record))
        if self._on_enqueue is not None:
            self._on_enqueue()

    async def redispatch_pending(self, limit: int = 1000) -> int:
        """Enqueue dispatch for events stored but never dispatched (e.g. after a crash between
        append and enqueue). Safe to repeat: the dispatch job's dedupe key makes it a no-op."""
        pending = await self._events.list_in_state(EventState.ACCEPTED, limit)
        for event in pending:
            await self._enqueue_dispatch(event)
        return len(pending)

    async def cancel(self, event_id: str) -> EventRecord:
        """Cancel an event: one whose dispatch has not begun (e.g. held by `send_at`) is
        never dispatched; a dispatched one keeps what went out already, and its workflow runs
        still waiting (delays, digests, escalations, held messages) end without sending
        (`on_cancel`, the orchestrator). Conflict for a failed or cancelled event."""
        if await self._events.transition(
            event_id, EventState.ACCEPTED, EventState.CANCELLED
        ) or await self._events.transition(event_id, EventState.DISPATCHED, EventState.CANCELLED):
            # Also when it was accepted: its dispatch may be running and have made runs.
            if self.on_cancel is not None:
                await self.on_cancel(event_id)
        else:
            record = await self._events.get(event_id)
            state = record.state.value if record is not None else "unknown"
            raise Conflict(
                f"event {event_id} is {state}; only accepted or dispatched events can be cancelled"
            )
        record = await self._events.get(event_id)
        assert record is not None
        return record

    async def cancel_by_key(self, idempotency_key: str) -> EventRecord:
        """`cancel` for the event stored under this idempotency key (the caller's transaction
        id: the `Idempotency-Key` header or the body `id` it was sent with). NotFound when no
        event has that key."""
        record = await self._events.get_by_key(idempotency_key)
        if record is None:
            raise NotFound(f"no event has idempotency key {idempotency_key!r}")
        return await self.cancel(record.id)

    async def get(self, event_id: str) -> EventRecord | None:
        return await self._events.get(event_id)


def _dispatch_job(event: NewEvent | EventRecord) -> NewJob:
    return NewJob(
        kind=DISPATCH_JOB,
        payload={"event_id": event.id},
        lane=event.priority,
        run_at=event.send_at,
        dedupe_key=f"dispatch:{event.id}",
    )
