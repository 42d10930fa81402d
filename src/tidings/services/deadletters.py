"""The dead-letter queue beyond one job at a time: inspect, and replay or discard every dead
job that matches a filter (kind, a text in the last error)."""

from __future__ import annotations

from tidings.errors import InvalidInput, NotFound
from tidings.ports.jobs import JobQueue
from tidings.records import record
from tidings.types import Job, JobState

MAX_SCAN = 10_000  # dead jobs looked at per filtered operation


@record
class DeadFilter:
    kind: str | None = None
    error_contains: str | None = None
    limit: int = 1000

    def check(self) -> DeadFilter:
        if not 1 <= self.limit <= MAX_SCAN:
            raise InvalidInput(f"limit must be 1..{MAX_SCAN}", field="limit")
        if self.error_contains is not None and not self.error_contains.strip():
            raise InvalidInput("must not be blank", field="error_contains")
        return self

    def matches(self, job: Job) -> bool:
        if self.kind is not None and job.kind != self.kind:
            return False
        needle = self.error_contains
        return needle is None or needle.lower() in (job.last_error or "").lower()


class DeadLetters:
    def __init__(self, jobs: JobQueue) -> None:
        self.jobs = jobs

    async def get(self, job_id: str) -> Job:
        job = await self.jobs.get(job_id)
        if job is None or job.state is not JobState.DEAD:
            raise NotFound(f"dead job {job_id} not found")
        return job

    async def select(self, where: DeadFilter) -> list[Job]:
        """Matching dead jobs, oldest first, at most `where.limit`."""
        where.check()
        found = [j for j in await self.jobs.list_dead(MAX_SCAN, where.kind) if where.matches(j)]
        return found[: where.limit]

    async def replay(self, where: DeadFilter) -> list[str]:
        """Put every matching dead job back on the queue; returns their ids. A job replayed or
        discarded meanwhile by someone else is skipped."""
        done: list[str] = []
        for job in await self.select(where):
            try:
                await self.jobs.replay(job.id)
            except NotFound:
                continue
            done.append(job.id)
        return done

    async def discard(self, where: DeadFilter) -> list[str]:
        done: list[str] = []
        for job in await self.select(where):
            try:
                await self.jobs.discard(job.id)
            except NotFound:
                continue
            done.append(job.id)
        return done
