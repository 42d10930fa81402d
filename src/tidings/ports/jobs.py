from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from tidings.types import Job, NewJob, Priority, QueueDepth


class JobQueue(Protocol):
    """A durable job queue with leases (at-least-once).

    Contract:
    - `enqueue` returns the job id. With a `dedupe_key` already used by any job (in any state),
      nothing is enqueued and the existing job's id is returned.
    - `claim` hands out due jobs (`run_at <= now`) of the given lanes, lanes in the order given
      (earlier lanes first), then by `run_at`, then by enqueue order. A claimed job is RUNNING
      with a fresh `lease_token` and `locked_until = now + lease`; its `attempts` grows by one.
      A RUNNING job whose lease has expired is claimable again (its worker is presumed dead).
      Concurrent claimers never receive the same job while its lease holds.
    - `complete`, `retry`, `dead_letter` and `extend` need the current `lease_token`; with a stale
      token they raise `LeaseLost` and change nothing.
    - `retry` puts the job back to QUEUED at `run_at` with `last_error`; `attempts`, when
      given, sets its claim count (a deferral that used no attempt gives the claim back).
    - `dead_letter` moves it to DEAD; `replay` puts a DEAD job back to QUEUED (attempts reset).
    """

    async def enqueue(self, job: NewJob) -> str: ...

    async def claim(
        self, worker: str, lanes: Sequence[Priority], limit: int, lease_seconds: float
    ) -> list[Job]: ...

    async def complete(self, job_id: str, lease_token: str) -> None: ...

    async def retry(
        self,
        job_id: str,
        lease_token: str,
        run_at: float,
        error: str,
        *,
        attempts: int | None = None,
    ) -> None: ...

    async def dead_letter(self, job_id: str, lease_token: str, error: str) -> None: ...

    async def extend(self, job_id: str, lease_token: str, lease_seconds: float) -> None: ...

    async def get(self, job_id: str) -> Job | None: ...

    async def list_dead(self, limit: int, kind: str | None = None) -> list[Job]: ...

    async def replay(self, job_id: str) -> None:
        """DEAD -> QUEUED now, attempts reset. NotFound if no such dead job."""
        ...

    async def discard(self, job_id: str) -> None:
        """Remove a DEAD job. NotFound if no such dead job."""
        ...

    async def prune(self, before: float, limit: int) -> int:
        """Delete up to `limit` DONE jobs due before `before`, earliest due first; returns
        how many. Their dedupe keys are free again. Other states are never touched."""
        ...

    async def depth(self) -> QueueDepth: ...
