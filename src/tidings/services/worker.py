"""Workers: claim jobs with leases, run their handlers, settle them.

At-least-once: a job runs until a worker completes it under a lease it still holds. A handler
that raises is retried with exponential backoff and full jitter until its attempts run out,
then dead-lettered; `PermanentJobError` dead-letters at once. A job whose workers keep dying
(its lease expires again and again) is dead-lettered once its attempts are spent, so a poison
message never blocks healthy traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence, Set

from tidings.core.retry import FailureClass, RetryPolicy, decide
from tidings.errors import LeaseLost
from tidings.ports.clock import Clock
from tidings.ports.jobs import JobQueue
from tidings.services.lanes import LaneGate
from tidings.types import CURRENT_LANE, INLINE_SQLITE, Handoff, Job, NewJob, Priority

log = logging.getLogger(__name__)

Handler = Callable[[Job], Awaitable[None]]
DeadHandler = Callable[[Job, str], Awaitable[None]]


class PermanentJobError(Exception):
    """The job can never succeed: dead-letter it without retrying."""


class DeferJob(Exception):
    """The job could not start its work now and used no attempt (a provider's local rate
    limit held it back): queued again `delay` seconds from now, its claim given back."""

    def __init__(self, delay: float, reason: str) -> None:
        super().__init__(reason)
        self.delay = delay


class RetryableJobError(Exception):
    def __init__(
        self,
        message: str,
        failure: FailureClass = FailureClass.TRANSIENT,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.failure = failure
        self.retry_after = retry_after


class WorkerPool:
    def __init__(
        self,
        jobs: JobQueue,
        clock: Clock,
        handlers: Mapping[str, Handler],
        *,
        lanes: Sequence[Priority],
        on_dead: Mapping[str, DeadHandler] | None = None,
        concurrency: int = 8,
        batch: int = 32,
        lease_seconds: float = 30.0,
        poll_interval: float = 0.2,
        policy: RetryPolicy | None = None,
        name: str = "worker",
        gate: LaneGate | None = None,
        inline_sqlite: bool = False,
    ) -> None:
        """`inline_sqlite`: the store is SQLite, whose statements a job may run on the event
        loop's thread (`INLINE_SQLITE`)."""
        self._jobs = jobs
        self._inline = inline_sqlite
        self._clock = clock
        self._handlers = handlers
        self._on_dead = on_dead or {}
        self._lanes = tuple(lanes)
        self._concurrency = concurrency
        self._batch = batch
        self._lease = lease_seconds
        self._poll = poll_interval
        self._policy = policy or RetryPolicy()
        self.worker_id = f"{name}-{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._gate = gate or LaneGate()
        self._reserved = 0  # slots promised to handed-off jobs not yet stored
        # The last claim found no more due jobs: a job ending needs no claim of its own.
        self._drained = False

    def notify(self) -> None:
        """Wake the claim loop now (new work was enqueued in this process)."""
        self._drained = False
        self._wake.set()

    async def start(self) -> None:
        self._stopping = False
        self._loop_task = asyncio.create_task(self._run(), name=self.worker_id)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop claiming, let running jobs finish for up to `grace` seconds. Jobs still running
        then are cancelled; their leases expire and another worker takes them."""
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            await self._loop_task
            self._loop_task = None
        if self._inflight:
            _, pending = await asyncio.wait(self._inflight, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)

    # -- hand-off: jobs stored already claimed by this pool (see `Handoff`) ---------------

    def reserve(self, lane: Priority) -> Handoff | None:
        """A slot for a job of `lane` about to be stored, or None (lane not served, pool
        stopping or full). Every reservation ends in `adopt` or `unreserve`."""
        if (
            self._loop_task is None
            or self._stopping
            or lane not in self._lanes
            or len(self._inflight) + self._reserved >= self._concurrency
        ):
            return None
        self._reserved += 1
        return Handoff(str(uuid.uuid4()), uuid.uuid4().hex, self._lease)

    def adopt(self, job: NewJob, handoff: Handoff) -> None:
        """The job was stored under `handoff`: run it now, in the reserved slot (unless the
        pool is stopping: then its lease runs out and a worker claims it, as after a crash)."""
        self._reserved -= 1
        if self._stopping:
            return
        self._spawn(Job.stored(dataclasses.replace(job, handoff=handoff), self._clock.now(), ""))

    def _spawn(self, job: Job) -> None:
        """Run a claimed job in a slot of its own."""
        task = asyncio.create_task(self.execute(job))
        self._inflight.add(task)
        task.add_done_callback(self._done)

    def unreserve(self) -> None:
        """The job was not stored (its transaction failed, or its dedupe key was taken)."""
        self._reserved -= 1
        self._wake.set()

    async def _run(self) -> None:
        while not self._stopping:
            free = self._concurrency - len(self._inflight) - self._reserved
            claimed: list[Job] = []
            if free > 0:
                try:
                    claimed = await self.claim(min(free, self._batch))
                except Exception:
                    log.exception("claim failed", extra={"worker": self.worker_id})
            # Fewer due jobs than asked for: the queue is drained until new work is
            # enqueued here (`notify`) or comes due (the next poll).
            self._drained = free > 0 and len(claimed) < min(free, self._batch)
            for job in claimed:
                self._spawn(job)
            if not claimed or free <= len(claimed):
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._poll)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if not self._drained:  # a freed slot takes queued work at once
            self._wake.set()

    async def claim(self, limit: int) -> list[Job]:
        return await self._jobs.claim(self.worker_id, self._lanes, limit, self._lease)

    async def run_once(self, limit: int = 100) -> int:
        """Claim and run one batch in the foreground (tools and tests)."""
        jobs = await self.claim(limit)
        for job in jobs:
            await self.execute(job)
        return len(jobs)

    async def execute(self, job: Job) -> None:
        assert job.lease_token is not None
        token = job.lease_token
        if job.attempts > job.max_attempts:
            await self._dead(job, token, f"attempts exhausted ({job.attempts - 1} claims)")
            return
        handler = self._handlers.get(job.kind)
        if handler is None:
            await self._dead(job, token, f"no handler for job kind {job.kind!r}")
            return
        keeper = asyncio.create_task(self._keep_lease(job.id, token))
        lane = CURRENT_LANE.set(job.lane)
        inline = INLINE_SQLITE.set(self._inline)
        urgent = (
            self._gate.urgent() if job.lane is Priority.TRANSACTIONAL else contextlib.nullcontext()
        )
        try:
            with urgent:
                await handler(job)
        except PermanentJobError as exc:
            await self._dead(job, token, f"permanent: {exc}")
        except DeferJob as exc:
            await self._settle(
                self._jobs.retry(
                    job.id,
                    token,
                    self._clock.now() + max(exc.delay, 0.0),
                    f"deferred: {exc}",
                    attempts=max(job.attempts - 1, 0),
                )
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failure = exc.failure if isinstance(exc, RetryableJobError) else FailureClass.TRANSIENT
            retry_after = exc.retry_after if isinstance(exc, RetryableJobError) else None
            policy = dataclasses.replace(self._policy, max_attempts=job.max_attempts)
            decision = decide(policy, failure, job.attempts, retry_after=retry_after)
            # a handler's classified failure reads as its class; anything else names the
            # exception's type, which is what tells an operator where to look
            error = (
                f"{exc.failure.value}: {exc}"
                if isinstance(exc, RetryableJobError)
                else f"{type(exc).__name__}: {exc}"
            )
            if decision.retry:
                log.warning(
                    "job failed, will retry",
                    extra={"job": job.id, "kind": job.kind, "error": error, "in": decision.delay},
                )
                await self._settle(
                    self._jobs.retry(job.id, token, self._clock.now() + decision.delay, error)
                )
            else:
                await self._dead(job, token, f"{decision.reason}: {error}")
        else:
            await self._settle(self._jobs.complete(job.id, token))
        finally:
            INLINE_SQLITE.reset(inline)
            CURRENT_LANE.reset(lane)
            keeper.cancel()

    async def _dead(self, job: Job, token: str, reason: str) -> None:
        log.error("job dead-lettered", extra={"job": job.id, "kind": job.kind, "reason": reason})
        if await self._settle(self._jobs.dead_letter(job.id, token, reason)):
            on_dead = self._on_dead.get(job.kind)
            if on_dead is not None:
                await on_dead(job, reason)

    async def _settle(self, op: Awaitable[None]) -> bool:
        try:
            await op
        except LeaseLost:
            log.warning("lease lost before settling job", extra={"worker": self.worker_id})
            return False
        return True

    async def _keep_lease(self, job_id: str, token: str) -> None:
        with contextlib.suppress(LeaseLost):
            while True:
                await asyncio.sleep(self._lease / 3)
                await self._jobs.extend(job_id, token, self._lease)


@dataclasses.dataclass
class Offered:
    """Jobs offered for hand-off (`Handoffs.offering`), and the ids of the hand-off jobs the
    transaction stored (a deduplicated job is not stored)."""

    jobs: list[NewJob]
    stored: Set[str] = frozenset()

    def handed(self) -> set[str]:
        """The ids of every job offered with a hand-off: all of them, once stored."""
        return {j.handoff.job_id for j in self.jobs if j.handoff is not None}

    def queued(self) -> bool:
        """Whether some job goes to the queue (no local slot took it): only then does a
        claim loop need waking."""
        return any(j.handoff is None for j in self.jobs)


class Handoffs:
    """Hands jobs enqueued in this process straight to a local worker pool with a free slot,
    skipping the claim transaction and the poll (`Handoff`). Due transactional jobs are
    handed off, and due bulk ones when offered with `bulk` (the deliveries a bulk fanout
    made, which are due first anyway: `notify.send_batch_job`); other bulk work keeps the
    queue's order and its claim loop."""

    def __init__(self, pools: Sequence[WorkerPool]) -> None:
        self._pools = pools  # read at each offer: the runtime fills it after wiring
        self._pending: dict[str, WorkerPool] = {}  # handoff job id -> pool holding its slot

    def offer(self, job: NewJob, now: float, *, bulk: bool = False) -> NewJob:
        """The job, with a hand-off if a local pool can take it now (else unchanged); a bulk
        job only with `bulk`. Follow with `settle` once the transaction storing it has ended
        (or failed)."""
        if job.lane is not Priority.TRANSACTIONAL and not bulk:
            return job
        if job.run_at is not None and job.run_at > now:
            return job
        for pool in self._pools:
            handoff = pool.reserve(job.lane)
            if handoff is not None:
                self._pending[handoff.job_id] = pool
                return dataclasses.replace(job, handoff=handoff)
        return job

    @contextlib.contextmanager
    def offering(
        self, jobs: Sequence[NewJob], now: float, *, bulk: bool = False
    ) -> Iterator[Offered]:
        """Offer `jobs` (see `offer`) for the transaction in the block, which stores
        `Offered.jobs` and sets `Offered.stored`; on leaving, however the block ends, the
        stored hand-offs run and the other slots are freed (`settle`)."""
        offered = Offered([self.offer(j, now, bulk=bulk) for j in jobs])
        try:
            yield offered
        finally:
            self.settle(offered.jobs, offered.stored)

    def settle(self, jobs: Sequence[NewJob], stored: Set[str]) -> None:
        """Run the offered jobs that were stored (ids in `stored`); free the other slots."""
        for job in jobs:
            if job.handoff is None:
                continue
            pool = self._pending.pop(job.handoff.job_id, None)
            if pool is None:
                continue
            if job.handoff.job_id in stored:
                pool.adopt(job, job.handoff)
            else:
                pool.unreserve()
