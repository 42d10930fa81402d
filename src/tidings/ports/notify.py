"""Port of the notification orchestrator's state: runs (workflow x event x recipient), their
step results, the messages they produce, the per-recipient decision trail, digests and
workflows defined through the API."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import field
from typing import Any, Protocol

from tidings.records import record
from tidings.types import NewJob, Priority


class RunState(enum.StrEnum):
    ACTIVE = "active"  # being advanced, or due to be
    WAITING = "waiting"  # a delay, a digest window, an escalation deadline or a held message
    DONE = "done"


@record
class Run:
    """One workflow run for one recipient of one event. ``id`` is derived from the three, so
    creating a run twice finds the first."""

    id: str
    event_id: str
    workflow: str
    recipient: str
    lane: Priority
    created_at: float
    state: RunState = RunState.ACTIVE
    outcome: str | None = None
    reason: str = ""
    wake_at: float | None = None
    updated_at: float = 0.0


@record
class StepRow:
    """A stored step result (the runner's ``StepResult`` as JSON). ``replace``: this row takes
    the place of the stored one (a digest leader's result once the digest closed)."""

    run_id: str
    step_id: str
    outcome: str
    at: float
    reason: str
    result: Mapping[str, Any]
    replace: bool = False


@record
class Message:
    """One message a channel step hands to delivery. ``id`` is the effect's idempotency key
    (event + recipient + channel + template version). ``status`` is the delivery axis;
    ``statuses`` holds the first instant each delivery or engagement status was reported."""

    id: str
    run_id: str
    event_id: str
    recipient: str
    workflow: str
    step_id: str
    channel: str
    template: str | None  # template id, None for inline content
    template_version: str  # "<template>@<n>" or "inline-<hash>"
    lane: Priority
    status: str
    release_at: float  # when it may go out (later than created_at when held)
    created_at: float
    updated_at: float
    statuses: Mapping[str, float] = field(default_factory=dict)
    attempts: int = 0
    provider: str | None = None
    provider_id: str | None = None
    error: str | None = None
    variant: str | None = None
    locale: str | None = None


@record
class TrailEntry:
    """One line of a recipient's trail: a decision, a step result, a delivery attempt or the
    end of a run. ``seq`` is assigned by the store, increasing."""

    run_id: str
    event_id: str
    recipient: str
    workflow: str
    step_id: str | None
    kind: str  # "decision" | "step" | "delivery" | "run"
    at: float
    data: Mapping[str, Any]
    seq: int = 0


@record
class MessageUpdate:
    """What one delivery attempt or report changes in a stored message (`update_messages`):
    ``statuses`` merge into the stored ones (the first instant of each wins), the other
    fields given replace the stored ones, ``trail`` is appended and ``jobs`` enqueued."""

    message_id: str
    status: str | None = None
    statuses: Mapping[str, float] = field(default_factory=dict)
    provider: str | None = None
    provider_id: str | None = None
    error: str | None = None
    attempts: int | None = None
    trail: Sequence[TrailEntry] = ()
    jobs: Sequence[NewJob] = ()  # enqueued with the update (the message's next steps)
    clear_error: bool = False  # the stored error goes (a later attempt succeeded)

    def changes(self, current: Message, at: float) -> dict[str, Any]:
        """The new values of the stored message's fields: ``statuses`` merged, ``updated_at``
        set to `at`, each other field given, and ``error`` emptied with `clear_error`."""
        merged = dict(current.statuses)
        for name, when in self.statuses.items():
            merged[name] = min(merged.get(name, float(when)), float(when))
        values: dict[str, Any] = {"statuses": merged, "updated_at": at}
        for name in ("status", "provider", "provider_id", "error", "attempts"):
            value = getattr(self, name)
            if value is not None:
                values[name] = value
        if self.clear_error and self.error is None:
            values["error"] = None
        return values


@record
class RunWrite:
    """What one pass over a run changes, written together."""

    run: Run  # the run as it stands after the pass (state, outcome, wake_at)
    steps: Sequence[StepRow] = ()  # new step results: insert-if-absent per (run, step)
    messages: Sequence[Message] = ()  # new messages: insert-if-absent per id
    trail: Sequence[TrailEntry] = ()


WakeJob = Callable[[str, Priority, str, float], NewJob]
"""The job that wakes run `id` (lane, step id, at): the orchestrator's, given to the store."""


@record
class DigestJoin:
    leader: bool  # this run created the digest
    closed: bool  # the digest was already closed when the run arrived


@record
class WorkflowRecord:
    key: str
    definition: Mapping[str, Any]
    revision: int
    source: str  # "api" | "file"
    updated_at: float


class RunStore(Protocol):
    """Contract:
    - A run, its step rows and messages are written only by `commit`; the orchestrator
      commits a run when it moves out of ACTIVE, so a stored run is waiting or done.
    - `get_runs` returns the stored runs among the ids (by id); unknown ids are left out.
    - `load_many` returns, per existing run id, the run with its step rows (by step id) and
      its messages (by step id). Unknown ids are left out.
    - `commit` writes every `RunWrite` and enqueues `jobs` in ONE transaction: step rows
      and messages are insert-if-absent (an earlier attempt's row wins) except step rows
      marked `replace`, which overwrite the stored row of their step; trail entries are
      appended, runs are written in the given state (inserted when absent; an existing run
      keeps its `created_at` and lane). A crash before it leaves nothing of it.
    - `effects_done(keys, exclude_run)` returns the keys that some message of another run
      holds (the idempotency stage).
    - `recent_sends(recipients, since)` returns per recipient and channel the `release_at`
      of messages on their way or gone (status queued, sent or delivered) after `since`:
      what a frequency cap counts, a queued message included so that sends decided a
      moment apart see each other before the first has left.
    - `count_passed(workflow, step_id, recipient, key, since, until)` counts this throttle's
      `passed` rows with that reason (the key) and `since < at <= until`.
    - `join_digest` adds the event to the digest (insert-if-absent): the run that creates
      it is its leader; a join after the digest was closed reports `closed`.
    - `close_digest` marks the digest closed and returns its events oldest first (event id,
      payload, at, actor); closing twice returns the same events.
    - `message(id)` / `messages(ids)` return the stored message(s) (by id; unknown ids left
      out). `update_messages(updates, at=)` applies every `MessageUpdate` in ONE
      transaction: `statuses` merged (the first instant of each wins), the other fields
      given set, `updated_at` set to `at`, `trail` appended and `jobs` enqueued; it returns
      the messages as written, in the order given. An update of an unknown id writes
      nothing: no trail entry, no job.
    - `runs_for_event(event_id, after, limit)` pages the event's runs by recipient (those
      after `after`, in recipient order); `messages_for_runs` lists the runs' messages in
      creation order; `trail_for_recipients(event_id, recipients)` the event's trail entries
      of those recipients by seq. `trail_for_event` and the per-recipient pages list in
      creation order (`seq`/`created_at`), cursor = the last seq seen.
    - `count_runs(event_id)` counts the event's runs per state (states without runs are
      left out), however many runs the event has.
    - `prune(before, limit)` deletes, in ONE transaction, up to `limit` runs that are DONE
      and were last written (`updated_at`) before `before`, oldest first, with their step
      rows, messages, trail entries and digest-event rows, then the closed digests it left
      without an event row or without their leader run (with any rows left in them); it
      returns how many runs it deleted.
      A waiting or active run stays whatever its age, and so does a done run that still
      has a `queued` message (held, or being delivered) or that belongs to a digest not
      closed yet whose leader run is not done (the digest still to go out lists it).
      Nothing else is deleted: events, inbox items and jobs are not the run store's.
    - `exclusive(keys)` holds, for the block, a lock on each key that every process sharing
      the store sees (a pass over a recipient's runs that counts their earlier sends or
      throttle passes, a run advanced by a wake): taken in sorted order, released at the
      end, also when the block raises. PostgreSQL: session advisory locks on a connection
      of their own. SQLite and memory: nothing to do (one process runs the workers; the
      orchestrator's own locks order its tasks).
    """

    def exclusive(self, keys: Sequence[str]) -> AbstractAsyncContextManager[None]: ...

    async def get_runs(self, run_ids: Sequence[str]) -> dict[str, Run]: ...

    async def load_many(
        self, run_ids: Sequence[str]
    ) -> dict[str, tuple[Run, dict[str, StepRow], dict[str, Message]]]: ...

    async def commit(self, writes: Sequence[RunWrite], jobs: Sequence[NewJob] = ()) -> set[str]:
        """Store the writes and enqueue the jobs in one transaction. Returns the ids of the
        jobs with a `handoff` that were stored (a job whose dedupe key was taken is not)."""
        ...

    async def effects_done(self, keys: Sequence[str], exclude_run: Mapping[str, str]) -> set[str]:
        """`exclude_run`: key -> the run asking (its own message is not a duplicate)."""
        ...

    async def recent_sends(
        self, recipients: Sequence[str], since: float
    ) -> dict[str, dict[str, list[float]]]: ...

    async def count_passed(
        self, workflow: str, step_id: str, recipient: str, key: str, since: float, until: float
    ) -> int: ...

    async def join_digest(
        self,
        digest_id: str,
        run_id: str,
        event_id: str,
        payload: Mapping[str, Any],
        actor: str | None,
        at: float,
    ) -> DigestJoin: ...

    async def close_digest(
        self, digest_id: str
    ) -> list[tuple[str, Mapping[str, Any], float, str | None]]: ...

    async def message(self, message_id: str) -> Message | None: ...

    async def messages(self, message_ids: Sequence[str]) -> dict[str, Message]: ...

    async def update_messages(
        self, updates: Sequence[MessageUpdate], *, at: float
    ) -> list[Message]: ...

    async def cancel_runs(self, event_id: str, at: float, reason: str, wake: WakeJob) -> int:
        """End every run of the event that is not done (outcome `cancelled`, a `run` trail
        entry each) and mark its queued messages `not_sent` with `reason`, in one
        transaction; returns how many runs it ended.

        In the same transaction the event leaves the digests not closed yet: its rows go.
        A digest led by one of the runs ended passes to the run of its earliest remaining
        row (by `at`, then run id), or is deleted when no row is left (the next join of its
        window leads afresh). The new leader's step row for the digest step becomes the old
        leader's `digest_leader` result with its own join time and a reason naming the
        cancelled event (inserted when the run has not stored its row yet); the run, when
        stored, is `waiting` until the window end; a `run` trail entry tells it; and
        `wake(run id, lane, step id, window end)` is enqueued."""
        ...

    async def runs_for_event(
        self, event_id: str, *, after: str | None = None, limit: int = 1000
    ) -> list[Run]: ...

    async def count_runs(self, event_id: str) -> dict[RunState, int]: ...

    async def messages_for_runs(self, run_ids: Sequence[str]) -> list[Message]: ...

    async def trail_for_recipients(
        self, event_id: str, recipients: Sequence[str]
    ) -> list[TrailEntry]: ...

    async def trail_for_event(
        self, event_id: str, *, after: int, limit: int
    ) -> list[TrailEntry]: ...

    async def trail_for_recipient(
        self, recipient: str, *, after: int, limit: int
    ) -> list[TrailEntry]: ...

    async def messages_for_recipient(
        self, recipient: str, *, before: float | None, limit: int
    ) -> list[Message]: ...

    async def prune(self, before: float, limit: int) -> int:
        """Delete up to `limit` done runs last written before `before` with everything
        recorded about them (see the contract); returns how many runs."""
        ...


class WorkflowStore(Protocol):
    """Workflows defined through the API (files are loaded at start and kept in memory).
    `put` replaces and bumps `revision`; `delete` returns whether one existed."""

    async def put(self, key: str, definition: Mapping[str, Any], at: float) -> WorkflowRecord: ...

    async def get(self, key: str) -> WorkflowRecord | None: ...

    async def all(self) -> list[WorkflowRecord]: ...

    async def delete(self, key: str) -> bool: ...
