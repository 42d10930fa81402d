"""The shared vocabulary: plain data types every layer may import."""

from __future__ import annotations

import contextvars
import enum
from dataclasses import field
from typing import Any

from tidings.records import record

JSON = dict[str, Any]


class Priority(enum.StrEnum):
    """Delivery lane. Transactional work is never delayed by bulk work."""

    TRANSACTIONAL = "transactional"
    BULK = "bulk"


# The lane of the work the current task does (a worker sets it per job; everything else is
# transactional). Stores that serialise writers let transactional writers go first.
CURRENT_LANE: contextvars.ContextVar[Priority] = contextvars.ContextVar(
    "tidings_lane", default=Priority.TRANSACTIONAL
)

# Whether the current task's SQLite reads may run on the event loop's own thread: set while
# a worker runs a job on SQLite, whose reads are bounded (a few rows by key, a slice of a
# bulk send). Such a read is a few dozen microseconds of work there, without the trip to a
# connection's thread and back (two thread wake-ups, the GIL taken back from a busy loop,
# the loop coming round), which a bulk send made long. Work that
# would overlap its reads elsewhere awaits them one by one then (`services.lanes.together`).
# API requests, whose reads can be pages of any size, keep the connections' threads. (Write
# transactions run on the loop's thread anyway: `adapters.sql.script.run_transaction`.)
INLINE_SQLITE: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "tidings_inline_sqlite", default=False
)


class EventState(enum.StrEnum):
    ACCEPTED = "accepted"  # persisted, not yet dispatched
    DISPATCHED = "dispatched"  # fanout done (channels published, workflows handed off)
    FAILED = "failed"  # dispatch failed permanently (see outcomes)
    CANCELLED = "cancelled"  # cancelled: never dispatched, or its runs still going ended


@record
class NewEvent:
    """An authoritative business event as accepted at ingest, before it is stored."""

    id: str
    type: str
    idempotency_key: str
    body_hash: str
    actor: str | None
    recipients: tuple[str, ...]
    topic: str | None
    channels: tuple[str, ...]
    payload: JSON
    priority: Priority
    send_at: float | None  # epoch seconds; None = now


@record
class Outcome:
    """One thing that happened downstream of an event (a channel publish, a job, a delivery)."""

    kind: str
    target: str
    status: str
    detail: str = ""
    at: float = 0.0


@record
class EventRecord:
    id: str
    type: str
    idempotency_key: str
    body_hash: str
    actor: str | None
    recipients: tuple[str, ...]
    topic: str | None
    channels: tuple[str, ...]
    payload: JSON
    priority: Priority
    send_at: float | None
    state: EventState
    created_at: float
    outcomes: tuple[Outcome, ...] = ()

    @classmethod
    def from_new(cls, e: NewEvent, *, created_at: float) -> EventRecord:
        return cls(
            id=e.id,
            type=e.type,
            idempotency_key=e.idempotency_key,
            body_hash=e.body_hash,
            actor=e.actor,
            recipients=e.recipients,
            topic=e.topic,
            channels=e.channels,
            payload=e.payload,
            priority=e.priority,
            send_at=e.send_at,
            state=EventState.ACCEPTED,
            created_at=created_at,
        )


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"  # claimed; lease until `locked_until`
    DONE = "done"
    DEAD = "dead"  # dead-lettered


@record
class Handoff:
    """A job written already claimed by a worker of this process, which runs it as soon as
    the transaction that stores it commits: no claim transaction and no poll in between. It is
    stored RUNNING under `lease_token` with its first attempt counted; should the process die
    before it settles, the lease expires and any worker claims it, as after any crash."""

    job_id: str
    lease_token: str
    lease_seconds: float


@record
class NewJob:
    kind: str
    payload: JSON
    lane: Priority = Priority.TRANSACTIONAL
    run_at: float | None = None  # None = now
    dedupe_key: str | None = None  # unique among all jobs ever enqueued; a repeat is a no-op
    max_attempts: int = 10
    handoff: Handoff | None = None  # store it claimed for a worker here (see `Handoff`)
    # Tries its work had before it became a job of its own (a message first sent in a
    # batch): they count against `max_attempts` and the backoff goes on from them.
    attempts: int = 0
    # Store it dead-lettered with this error: a failure settled where it happened, kept in
    # the dead-letter queue for inspection and replay like any job that died.
    dead: str | None = None


@record
class Job:
    id: str
    kind: str
    payload: JSON
    lane: Priority
    state: JobState
    run_at: float
    attempts: int  # claims so far, including the current one
    max_attempts: int
    dedupe_key: str | None
    lease_token: str | None
    locked_until: float | None
    last_error: str | None
    created_at: float

    @staticmethod
    def stored(job: NewJob, now: float, job_id: str) -> Job:
        """`job` as a queue stores it at `now`: QUEUED under `job_id`, or, with a hand-off,
        RUNNING under the hand-off's id and lease with its first attempt counted, or DEAD
        with its error (`NewJob.dead`; a hand-off is ignored then)."""
        h = job.handoff if job.dead is None else None
        state = JobState.QUEUED if h is None else JobState.RUNNING
        return Job(
            id=job_id if h is None else h.job_id,
            kind=job.kind,
            payload=job.payload,
            lane=job.lane,
            state=JobState.DEAD if job.dead is not None else state,
            run_at=now if job.run_at is None else job.run_at,
            attempts=job.attempts + (0 if h is None else 1),
            max_attempts=job.max_attempts,
            dedupe_key=job.dedupe_key,
            lease_token=None if h is None else h.lease_token,
            locked_until=None if h is None else now + h.lease_seconds,
            last_error=job.dead,
            created_at=now,
        )


@record
class QueueDepth:
    """Jobs waiting (due or not) and running, per lane; dead letters in total."""

    queued: dict[str, int] = field(default_factory=dict)
    running: dict[str, int] = field(default_factory=dict)
    dead: int = 0


class Scope(enum.StrEnum):
    PUBLISH = "publish"
    ADMIN = "admin"


@record
class ApiKey:
    id: str
    name: str
    prefix: str
    scopes: frozenset[Scope]
    created_at: float
    revoked_at: float | None = None


@record
class StreamPosition:
    """Where a channel's durable stream stands: offsets grow by one per publication; a new epoch
    means history before it is gone."""

    offset: int
    epoch: str


@record
class Publication:
    channel: str
    data: bytes  # JSON bytes, encoded once by the publisher
    offset: int  # 0 for publications that are not kept in history
    epoch: str
    info: ClientInfo | None = None
    tags: dict[str, str] | None = None
    key: str | None = None  # coalescing key for the "latest" delivery class
    time: float = 0.0


@record
class ClientInfo:
    user: str
    client: str
    conn_info: bytes | None = None  # JSON bytes
    chan_info: bytes | None = None  # JSON bytes


@record
class HistoryResult:
    position: StreamPosition
    publications: tuple[Publication, ...]


@record
class PresenceStats:
    num_clients: int
    num_users: int
