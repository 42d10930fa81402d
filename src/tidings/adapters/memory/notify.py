"""In-process orchestrator state: runs, step results, messages, the trail, digests and
API-defined workflows (reference for the contract suite)."""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import heapq
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tidings.adapters.memory.columns import json_copy
from tidings.adapters.memory.jobs import MemoryJobQueue
from tidings.core.notify.runner import DIGEST_WAIT, StepOutcome, digest_handed_over
from tidings.ports.clock import Clock
from tidings.ports.notify import (
    DigestJoin,
    Message,
    MessageUpdate,
    Run,
    RunState,
    RunWrite,
    StepRow,
    TrailEntry,
    WakeJob,
    WorkflowRecord,
)
from tidings.types import NewJob

# what a frequency cap counts: messages on their way or gone (a queued one is sent soon)
CAPPED_STATUSES = ("queued", "sent", "delivered")


@dataclass(slots=True)
class _Digest:
    leader_run: str
    closed: bool = False
    events: dict[str, tuple[str, dict[str, Any], float, str | None]] = field(
        default_factory=dict
    )  # run id -> (event id, payload, at, actor)


class MemoryRunStore:
    """Reference run store. No method suspends between its first write and its last (the job
    queue it enqueues into is a memory one), so each is one transaction with respect to other
    coroutines; what it writes is checked first (JSON values, like the SQL columns), so a
    write that fails leaves nothing behind."""

    def __init__(self, clock: Clock, jobs: MemoryJobQueue | None = None) -> None:
        self._clock = clock
        self._jobs = jobs  # where `commit` and `update_messages` enqueue
        self._runs: dict[str, Run] = {}
        self._runs_by_event: dict[str, list[str]] = {}
        # run id -> step id -> (row, workflow, recipient)
        self._steps: dict[str, dict[str, tuple[StepRow, str, str]]] = {}
        self._passed: dict[tuple[str, str, str], list[StepRow]] = {}
        self._messages: dict[str, Message] = {}  # insertion order = creation order
        self._messages_by_run: dict[str, list[str]] = {}
        self._messages_by_event: dict[str, list[str]] = {}
        self._messages_by_recipient: dict[str, list[str]] = {}
        self._trail_by_event: dict[str, list[TrailEntry]] = {}
        self._trail_by_recipient: dict[str, list[TrailEntry]] = {}
        self._seq = 0
        self._digests: dict[str, _Digest] = {}

    # -- runs ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def exclusive(self, keys: Sequence[str]) -> AsyncIterator[None]:
        """Nothing to lock: the store lives in one process."""
        yield

    async def get_runs(self, run_ids: Sequence[str]) -> dict[str, Run]:
        return {i: self._runs[i] for i in run_ids if i in self._runs}

    async def load_many(
        self, run_ids: Sequence[str]
    ) -> dict[str, tuple[Run, dict[str, StepRow], dict[str, Message]]]:
        out: dict[str, tuple[Run, dict[str, StepRow], dict[str, Message]]] = {}
        for run_id in run_ids:
            run = self._runs.get(run_id)
            if run is None:
                continue
            steps = {sid: row for sid, (row, _, _) in self._steps.get(run_id, {}).items()}
            messages = {
                m.step_id: m
                for m in (self._messages[i] for i in self._messages_by_run.get(run_id, ()))
            }
            out[run_id] = (run, steps, messages)
        return out

    async def commit(self, writes: Sequence[RunWrite], jobs: Sequence[NewJob] = ()) -> set[str]:
        now = self._clock.now()
        queue = self._queue(jobs)
        steps = [
            (dataclasses.replace(s, result=json_copy(s.result)), w.run.workflow, w.run.recipient)
            for w in writes
            for s in w.steps
        ]
        messages = [_stored_message(m) for w in writes for m in w.messages]
        trail = [_stored_trail(t) for w in writes for t in w.trail]
        new_jobs = [_stored_job(j, None) for j in jobs]
        # Everything is checked: from here on nothing fails.
        for row, workflow, recipient in steps:
            self._add_step(row, workflow, recipient)
        for message in messages:
            self._add_message(message)
        self._append(trail)
        for w in writes:
            current = self._runs.get(w.run.id)
            if current is None:
                self._runs_by_event.setdefault(w.run.event_id, []).append(w.run.id)
            self._runs[w.run.id] = dataclasses.replace(
                current or w.run,
                state=w.run.state,
                outcome=w.run.outcome,
                reason=w.run.reason,
                wake_at=w.run.wake_at,
                updated_at=now,
            )
        return await _enqueue(queue, new_jobs)

    async def effects_done(self, keys: Sequence[str], exclude_run: Mapping[str, str]) -> set[str]:
        found: set[str] = set()
        for key in keys:
            message = self._messages.get(key)
            if message is not None and exclude_run.get(key) != message.run_id:
                found.add(key)
        return found

    async def recent_sends(
        self, recipients: Sequence[str], since: float
    ) -> dict[str, dict[str, list[float]]]:
        out: dict[str, dict[str, list[float]]] = {}
        for recipient in dict.fromkeys(recipients):
            for message_id in self._messages_by_recipient.get(recipient, ()):
                m = self._messages[message_id]
                if m.release_at > since and m.status in CAPPED_STATUSES:
                    out.setdefault(recipient, {}).setdefault(m.channel, []).append(m.release_at)
        return out

    async def count_passed(
        self, workflow: str, step_id: str, recipient: str, key: str, since: float, until: float
    ) -> int:
        rows = self._passed.get((workflow, step_id, recipient), ())
        return sum(1 for s in rows if s.reason == key and since < s.at <= until)

    # -- digests ---------------------------------------------------------------------------

    async def join_digest(
        self,
        digest_id: str,
        run_id: str,
        event_id: str,
        payload: Mapping[str, Any],
        actor: str | None,
        at: float,
    ) -> DigestJoin:
        data = json_copy(payload)
        digest = self._digests.get(digest_id)
        created = digest is None
        if digest is None:
            digest = self._digests[digest_id] = _Digest(leader_run=run_id)
        leader = created or digest.leader_run == run_id
        if digest.closed and not leader and run_id not in digest.events:
            return DigestJoin(leader=False, closed=True)
        digest.events.setdefault(run_id, (event_id, data, at, actor))
        return DigestJoin(leader=leader, closed=False)

    async def close_digest(
        self, digest_id: str
    ) -> list[tuple[str, Mapping[str, Any], float, str | None]]:
        digest = self._digests.get(digest_id)
        if digest is None:
            return []
        digest.closed = True
        events = sorted(digest.events.values(), key=lambda e: (e[2], e[0]))
        return [(event_id, json_copy(data), at, actor) for event_id, data, at, actor in events]

    # -- messages --------------------------------------------------------------------------

    async def message(self, message_id: str) -> Message | None:
        return self._messages.get(message_id)

    async def messages(self, message_ids: Sequence[str]) -> dict[str, Message]:
        return {i: self._messages[i] for i in message_ids if i in self._messages}

    async def update_messages(
        self, updates: Sequence[MessageUpdate], *, at: float
    ) -> list[Message]:
        known = [u for u in updates if u.message_id in self._messages]
        queue = self._queue([j for u in known for j in u.jobs])
        new_jobs = [_stored_job(j, at) for u in known for j in u.jobs]
        entries = [_stored_trail(t) for u in known for t in u.trail]
        written: list[Message] = []
        for update in known:
            current = self._messages[update.message_id]
            updated = dataclasses.replace(current, **update.changes(current, at))
            self._messages[update.message_id] = updated
            written.append(updated)
        self._append(entries)
        await _enqueue(queue, new_jobs)
        return written

    # -- reading the trail -----------------------------------------------------------------

    async def runs_for_event(
        self, event_id: str, *, after: str | None = None, limit: int = 1000
    ) -> list[Run]:
        runs = [self._runs[i] for i in self._runs_by_event.get(event_id, ())]
        runs = [r for r in runs if after is None or r.recipient > after]
        runs.sort(key=lambda r: (r.recipient, r.id))
        return runs[:limit]

    async def cancel_runs(self, event_id: str, at: float, reason: str, wake: WakeJob) -> int:
        ended: list[Run] = []
        for run_id in self._runs_by_event.get(event_id, ()):
            run = self._runs[run_id]
            if run.state is not RunState.DONE:
                ended.append(run)
                self._runs[run_id] = dataclasses.replace(
                    run,
                    state=RunState.DONE,
                    outcome="cancelled",
                    reason=reason,
                    wake_at=None,
                    updated_at=at,
                )
        for message_id in self._messages_by_event.get(event_id, ()):
            m = self._messages[message_id]
            if m.status == "queued":
                self._messages[message_id] = dataclasses.replace(
                    m, status="not_sent", error=reason, updated_at=at
                )
        self._append(
            [
                TrailEntry(
                    r.id,
                    r.event_id,
                    r.recipient,
                    r.workflow,
                    None,
                    "run",
                    at,
                    {"state": "done", "outcome": "cancelled", "reason": reason},
                )
                for r in ended
            ]
        )
        await self._leave_digests(event_id, ended, at, wake)
        return len(ended)

    async def _leave_digests(
        self, event_id: str, ended: Sequence[Run], at: float, wake: WakeJob
    ) -> None:
        """The cancelled event's part of `cancel_runs` in the digests not closed yet."""
        for open_digest in self._digests.values():
            if not open_digest.closed:
                events = open_digest.events
                for run_id in [r for r, e in events.items() if e[0] == event_id]:
                    del events[run_id]
        jobs: list[NewJob] = []
        for old in ended:
            for row, _, _ in list(self._steps.get(old.id, {}).values()):
                if row.outcome != StepOutcome.DIGEST_LEADER:
                    continue
                digest_id = str(row.result.get("digest_id") or "")
                digest = self._digests.get(digest_id)
                if digest is None or digest.closed or digest.leader_run != old.id:
                    continue  # a digest of its own (a late join), or no longer this run's
                if not digest.events:
                    del self._digests[digest_id]
                    continue
                heir, (heir_event, _, joined, _) = min(
                    digest.events.items(), key=lambda e: (e[1][2], e[0])
                )
                digest.leader_run = heir
                handed = digest_handed_over(json_copy(row.result), joined, event_id, at)
                promoted = StepRow(
                    heir,
                    row.step_id,
                    StepOutcome.DIGEST_LEADER,
                    joined,
                    handed.reason,
                    handed.result,
                )
                self._steps.setdefault(heir, {})[row.step_id] = (
                    promoted,
                    old.workflow,
                    old.recipient,
                )
                run = self._runs.get(heir)
                if run is not None:
                    self._runs[heir] = dataclasses.replace(
                        run,
                        state=RunState.WAITING,
                        outcome=None,
                        reason=DIGEST_WAIT,
                        wake_at=handed.window_end,
                        updated_at=at,
                    )
                self._append(
                    [
                        TrailEntry(
                            heir,
                            heir_event,
                            old.recipient,
                            old.workflow,
                            row.step_id,
                            "run",
                            at,
                            handed.trail(),
                        )
                    ]
                )
                lane = run.lane if run is not None else old.lane
                jobs.append(_stored_job(wake(heir, lane, row.step_id, handed.window_end), at))
        if jobs:
            await _enqueue(self._queue(jobs), jobs)

    async def count_runs(self, event_id: str) -> dict[RunState, int]:
        counts: dict[RunState, int] = {}
        for run_id in self._runs_by_event.get(event_id, ()):
            state = self._runs[run_id].state
            counts[state] = counts.get(state, 0) + 1
        return counts

    async def messages_for_runs(self, run_ids: Sequence[str]) -> list[Message]:
        wanted = set(run_ids)
        messages = [m for m in self._messages.values() if m.run_id in wanted]
        messages.sort(key=lambda m: (m.created_at, m.id))
        return messages

    async def trail_for_recipients(
        self, event_id: str, recipients: Sequence[str]
    ) -> list[TrailEntry]:
        wanted = set(recipients)
        return [t for t in self._trail_by_event.get(event_id, []) if t.recipient in wanted]

    async def trail_for_event(self, event_id: str, *, after: int, limit: int) -> list[TrailEntry]:
        return _page(self._trail_by_event.get(event_id, []), after, limit)

    async def trail_for_recipient(
        self, recipient: str, *, after: int, limit: int
    ) -> list[TrailEntry]:
        return _page(self._trail_by_recipient.get(recipient, []), after, limit)

    async def messages_for_recipient(
        self, recipient: str, *, before: float | None, limit: int
    ) -> list[Message]:
        newest_first = [
            self._messages[i] for i in reversed(self._messages_by_recipient.get(recipient, []))
        ]
        found = [m for m in newest_first if before is None or m.created_at < before]
        found.sort(key=lambda m: m.created_at, reverse=True)
        return found[:limit]

    # -- retention -------------------------------------------------------------------------

    async def prune(self, before: float, limit: int) -> int:
        pending = self._pending_digest_members()
        due = heapq.nsmallest(
            limit,
            (
                r
                for r in self._runs.values()
                if r.state is RunState.DONE
                and r.updated_at < before
                and r.id not in pending
                and not any(
                    self._messages[i].status == "queued"
                    for i in self._messages_by_run.get(r.id, ())
                )
            ),
            key=lambda r: (r.updated_at, r.id),
        )
        gone = {r.id for r in due}
        for run in due:
            self._drop_run(run)
        for key in {r.event_id for r in due}:
            self._trail_by_event[key] = [
                t for t in self._trail_by_event.get(key, ()) if t.run_id not in gone
            ]
            if not self._trail_by_event[key]:
                del self._trail_by_event[key]
        for key in {r.recipient for r in due}:
            self._trail_by_recipient[key] = [
                t for t in self._trail_by_recipient.get(key, ()) if t.run_id not in gone
            ]
            if not self._trail_by_recipient[key]:
                del self._trail_by_recipient[key]
        for digest_id, digest in list(self._digests.items()):
            left = gone.intersection(digest.events)
            if not left:
                continue
            for run_id in left:
                del digest.events[run_id]
            if digest.closed and (not digest.events or digest.leader_run not in self._runs):
                del self._digests[digest_id]
        return len(due)

    def _pending_digest_members(self) -> set[str]:
        """Runs in a digest not closed yet whose leader run is stored and not done."""
        held: set[str] = set()
        for digest in self._digests.values():
            leader = self._runs.get(digest.leader_run)
            if not digest.closed and leader is not None and leader.state is not RunState.DONE:
                held.update(digest.events)
        return held

    def _drop_run(self, run: Run) -> None:
        """Forget the run, its step rows and its messages (the trail and digests are the
        caller's)."""
        del self._runs[run.id]
        _discard(self._runs_by_event, run.event_id, run.id)
        for row, workflow, recipient in self._steps.pop(run.id, {}).values():
            if row.outcome == "passed":
                key = (workflow, row.step_id, recipient)
                self._passed[key] = [s for s in self._passed[key] if s.run_id != run.id]
                if not self._passed[key]:
                    del self._passed[key]
        for message_id in self._messages_by_run.pop(run.id, ()):
            message = self._messages.pop(message_id)
            _discard(self._messages_by_event, message.event_id, message_id)
            _discard(self._messages_by_recipient, message.recipient, message_id)

    # -- writing ---------------------------------------------------------------------------

    def _queue(self, jobs: Sequence[NewJob]) -> MemoryJobQueue | None:
        if jobs and self._jobs is None:
            raise ValueError("this run store has no job queue to enqueue into")
        return self._jobs

    def _add_step(self, row: StepRow, workflow: str, recipient: str) -> None:
        steps = self._steps.setdefault(row.run_id, {})
        if row.step_id in steps and not row.replace:
            return  # an earlier attempt's row wins
        steps[row.step_id] = (row, workflow, recipient)
        if row.outcome == "passed":
            self._passed.setdefault((workflow, row.step_id, recipient), []).append(row)

    def _add_message(self, message: Message) -> None:
        if message.id in self._messages:
            return  # an earlier attempt's message wins
        self._messages[message.id] = message
        self._messages_by_run.setdefault(message.run_id, []).append(message.id)
        self._messages_by_event.setdefault(message.event_id, []).append(message.id)
        self._messages_by_recipient.setdefault(message.recipient, []).append(message.id)

    def _append(self, entries: Sequence[TrailEntry]) -> None:
        for entry in entries:
            self._seq += 1
            stored = dataclasses.replace(entry, seq=self._seq)
            self._trail_by_event.setdefault(entry.event_id, []).append(stored)
            self._trail_by_recipient.setdefault(entry.recipient, []).append(stored)


class MemoryWorkflowStore:
    def __init__(self) -> None:
        self._workflows: dict[str, WorkflowRecord] = {}

    async def put(self, key: str, definition: Mapping[str, Any], at: float) -> WorkflowRecord:
        current = self._workflows.get(key)
        revision = 1 if current is None else current.revision + 1
        record = WorkflowRecord(key, json_copy(definition), revision, "api", at)
        self._workflows[key] = record
        return record

    async def get(self, key: str) -> WorkflowRecord | None:
        return self._workflows.get(key)

    async def all(self) -> list[WorkflowRecord]:
        return [self._workflows[k] for k in sorted(self._workflows)]

    async def delete(self, key: str) -> bool:
        return self._workflows.pop(key, None) is not None


def _stored_message(m: Message) -> Message:
    return dataclasses.replace(m, statuses={k: float(v) for k, v in json_copy(m.statuses).items()})


def _stored_trail(t: TrailEntry) -> TrailEntry:
    return dataclasses.replace(t, data=json_copy(t.data))


def _stored_job(job: NewJob, run_at: float | None) -> NewJob:
    payload = json_copy(job.payload)
    return dataclasses.replace(
        job, payload=payload, run_at=job.run_at if job.run_at is not None else run_at
    )


async def _enqueue(queue: MemoryJobQueue | None, jobs: Sequence[NewJob]) -> set[str]:
    """Enqueue; the ids of the handed-off jobs stored (not deduplicated away)."""
    handed: set[str] = set()
    if queue is None:
        return handed
    for job in jobs:
        job_id = await queue.enqueue(job)  # does not suspend: nothing else runs in between
        if job.handoff is not None and job_id == job.handoff.job_id:
            handed.add(job_id)
    return handed


def _discard(index: dict[str, list[str]], key: str, value: str) -> None:
    """Take `value` out of the list under `key`, and the key once its list is empty."""
    values = index[key]
    values.remove(value)
    if not values:
        del index[key]


def _page(entries: list[TrailEntry], after: int, limit: int) -> list[TrailEntry]:
    start = bisect.bisect_right(entries, after, key=lambda t: t.seq)
    return entries[start : start + limit]
