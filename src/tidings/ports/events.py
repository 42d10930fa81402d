from __future__ import annotations

from typing import Protocol

from tidings.types import EventRecord, EventState, NewEvent, NewJob, Outcome

# The states in which an event's dispatch has run or never will: an ACCEPTED event's dispatch
# job is still to run (perhaps at its `send_at`), so only these events are ever pruned.
SETTLED_STATES = frozenset({EventState.DISPATCHED, EventState.FAILED, EventState.CANCELLED})


class EventStore(Protocol):
    """Authoritative events, stored exactly once per idempotency key.

    Contract:
    - `append` is atomic. For a new idempotency key it stores the event and returns
      `(record, True)`. For a key already stored with the same `body_hash` it stores nothing and
      returns `(original, False)`. For a key stored with a different `body_hash` it raises
      `IdempotencyConflict`. Concurrent appends with one key store exactly one event.
    - `then`: a job enqueued in the same transaction as a new event (an outbox), so an event
      is never stored without its dispatch job; nothing is enqueued for a replay or conflict.
    - Outcomes are appended in order and returned in that order with the event.
    - `prune(before, limit)` deletes, in ONE transaction, up to `limit` events with their
      outcomes and returns how many: events in a settled state (`SETTLED_STATES`) created
      before `before`, not scheduled (`send_at`) at or after it, that no notification run
      and no campaign refers to. An accepted event stays whatever its age. A deleted event
      is gone for `get` and `get_by_key`, and its idempotency key is free again: the next
      append with it stores a new event.
    """

    async def append(
        self, event: NewEvent, *, then: NewJob | None = None
    ) -> tuple[EventRecord, bool]: ...

    async def get(self, event_id: str) -> EventRecord | None:
        """The event with its outcomes, or None."""
        ...

    async def get_by_key(self, idempotency_key: str) -> EventRecord | None:
        """The event stored under this idempotency key, with its outcomes, or None. Keys are
        global: one event per key across all API keys."""
        ...

    async def add_outcome(self, event_id: str, outcome: Outcome) -> None: ...

    async def set_state(self, event_id: str, state: EventState) -> None: ...

    async def transition(self, event_id: str, from_: EventState, to: EventState) -> bool:
        """Move the event from `from_` to `to` atomically; False (and no change) when it is in
        another state. Raises `NotFound` for an unknown event."""
        ...

    async def list_in_state(self, state: EventState, limit: int) -> list[EventRecord]:
        """Oldest first; used to re-dispatch events accepted before a crash."""
        ...

    async def prune(self, before: float, limit: int) -> int:
        """Delete up to `limit` old settled events nothing refers to any more, with their
        outcomes (see the contract); returns how many."""
        ...
