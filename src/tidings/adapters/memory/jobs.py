from __future__ import annotations

import dataclasses
import heapq
import itertools
import uuid
from collections.abc import Sequence

from tidings.errors import LeaseLost, NotFound
from tidings.ports.clock import Clock
from tidings.types import Job, JobState, NewJob, Priority, QueueDepth


class MemoryJobQueue:
    """Reference job queue. Single event loop: every method runs without awaiting, so each is
    atomic with respect to other coroutines."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._jobs: dict[str, Job] = {}
        self._seq: dict[str, int] = {}
        self._dedupe: dict[str, str] = {}
        self._counter = itertools.count()

    async def enqueue(self, job: NewJob) -> str:
        if job.dedupe_key is not None and job.dedupe_key in self._dedupe:
            return self._dedupe[job.dedupe_key]
        stored = Job.stored(job, self._clock.now(), str(uuid.uuid4()))
        job_id = stored.id
        self._jobs[job_id] = stored
        self._seq[job_id] = next(self._counter)
        if job.dedupe_key is not None:
            self._dedupe[job.dedupe_key] = job_id
        return job_id

    def _claimable(self, job: Job, now: float) -> bool:
        if job.state == JobState.QUEUED:
            return job.run_at <= now
        return (
            job.state == JobState.RUNNING
            and job.locked_until is not None
            and job.locked_until <= now
        )

    async def claim(
        self, worker: str, lanes: Sequence[Priority], limit: int, lease_seconds: float
    ) -> list[Job]:
        now = self._clock.now()
        claimed: list[Job] = []
        for lane in lanes:
            if len(claimed) >= limit:
                break
            due = [j for j in self._jobs.values() if j.lane == lane and self._claimable(j, now)]
            due.sort(key=lambda j: (j.run_at, self._seq[j.id]))
            for job in due[: limit - len(claimed)]:
                taken = dataclasses.replace(
                    job,
                    state=JobState.RUNNING,
                    attempts=job.attempts + 1,
                    lease_token=uuid.uuid4().hex,
                    locked_until=now + lease_seconds,
                )
                self._jobs[job.id] = taken
                claimed.append(taken)
        return claimed

    def _held(self, job_id: str, lease_token: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None or job.state != JobState.RUNNING or job.lease_token != lease_token:
            raise LeaseLost(f"lease on job {job_id} is not held")
        return job

    async def complete(self, job_id: str, lease_token: str) -> None:
        job = self._held(job_id, lease_token)
        self._jobs[job_id] = dataclasses.replace(
            job, state=JobState.DONE, lease_token=None, locked_until=None
        )

    async def retry(
        self,
        job_id: str,
        lease_token: str,
        run_at: float,
        error: str,
        *,
        attempts: int | None = None,
    ) -> None:
        job = self._held(job_id, lease_token)
        self._jobs[job_id] = dataclasses.replace(
            job,
            state=JobState.QUEUED,
            run_at=run_at,
            lease_token=None,
            locked_until=None,
            last_error=error,
            attempts=job.attempts if attempts is None else attempts,
        )

    async def dead_letter(self, job_id: str, lease_token: str, error: str) -> None:
        job = self._held(job_id, lease_token)
        self._jobs[job_id] = dataclasses.replace(
            job, state=JobState.DEAD, lease_token=None, locked_until=None, last_error=error
        )

    async def extend(self, job_id: str, lease_token: str, lease_seconds: float) -> None:
        job = self._held(job_id, lease_token)
        self._jobs[job_id] = dataclasses.replace(
            job, locked_until=self._clock.now() + lease_seconds
        )

    async def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    async def list_dead(self, limit: int, kind: str | None = None) -> list[Job]:
        dead = [
            j
            for j in self._jobs.values()
            if j.state == JobState.DEAD and (kind is None or j.kind == kind)
        ]
        dead.sort(key=lambda j: self._seq[j.id])
        return dead[:limit]

    def _dead(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None or job.state != JobState.DEAD:
            raise NotFound(f"dead job {job_id} not found")
        return job

    async def replay(self, job_id: str) -> None:
        job = self._dead(job_id)
        self._jobs[job_id] = dataclasses.replace(
            job, state=JobState.QUEUED, attempts=0, run_at=self._clock.now()
        )

    async def discard(self, job_id: str) -> None:
        self._dead(job_id)
        del self._jobs[job_id]

    async def prune(self, before: float, limit: int) -> int:
        # The `limit` oldest due, without sorting every done job: a queue holds many more
        # done jobs than one batch deletes.
        done = heapq.nsmallest(
            limit,
            (j for j in self._jobs.values() if j.state == JobState.DONE and j.run_at < before),
            key=lambda j: (j.run_at, self._seq[j.id]),
        )
        for job in done:
            del self._jobs[job.id]
            del self._seq[job.id]
            if job.dedupe_key is not None:
                del self._dedupe[job.dedupe_key]
        return len(done)

    async def depth(self) -> QueueDepth:
        queued: dict[str, int] = {}
        running: dict[str, int] = {}
        dead = 0
        for j in self._jobs.values():
            if j.state == JobState.QUEUED:
                queued[j.lane.value] = queued.get(j.lane.value, 0) + 1
            elif j.state == JobState.RUNNING:
                running[j.lane.value] = running.get(j.lane.value, 0) + 1
            elif j.state == JobState.DEAD:
                dead += 1
        return QueueDepth(queued=queued, running=running, dead=dead)
