from __future__ import annotations

import functools
import sqlite3
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Double,
    Select,
    String,
    and_,
    any_,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.dml import Insert

from tidings.adapters.sql.engine import is_postgres, none_due, reader, writer
from tidings.adapters.sql.script import Statement, row_reader, run_script, run_transaction, script
from tidings.adapters.sql.tables import jobs
from tidings.errors import LeaseLost, NotFound
from tidings.ports.clock import Clock
from tidings.types import Job, JobState, NewJob, Priority, QueueDepth

_RUNNING = JobState.RUNNING.value


_INSERT_JOB = insert(jobs)  # built once, see events.py
_SETTLED = frozenset({"state", "run_at", "lease_token", "locked_until", "last_error", "attempts"})


@functools.cache
def _settle_sql(names: tuple[str, ...]) -> str:
    """SQLite: the UPDATE that settles a job under its lease, setting the columns `names`."""
    assert names and set(names) <= _SETTLED, names
    columns = ", ".join(f"{n} = ?" for n in names)
    return f"UPDATE jobs SET {columns} WHERE id = ? AND state = ? AND lease_token = ?"


def _changed(sql: str, params: Sequence[Any], conn: sqlite3.Connection) -> int:
    """In `run_transaction`'s call: the rows one statement changed."""
    return int(conn.execute(sql, params).rowcount)


class SqlJobQueue:
    """The durable job queue. On PostgreSQL a claim locks its candidates with
    `FOR UPDATE SKIP LOCKED`, so concurrent workers neither wait on nor share rows; on SQLite
    the claim is one UPDATE inside an IMMEDIATE transaction (a single writer)."""

    def __init__(self, engine: AsyncEngine, clock: Clock) -> None:
        self._engine = engine
        self._read = reader(engine)
        self._clock = clock
        self._claims: dict[tuple[tuple[str, ...], int], tuple[Select[Any], Any, Statement]] = {}

    async def enqueue(self, job: NewJob) -> str:
        row = job_row(job, self._clock.now())
        try:
            async with writer(self._engine) as conn:
                await conn.execute(_INSERT_JOB, row)
            return str(row["id"])
        except IntegrityError:
            if job.dedupe_key is None:
                raise
        async with self._read.connect() as conn:
            existing = (
                await conn.execute(select(jobs.c.id).where(jobs.c.dedupe_key == job.dedupe_key))
            ).scalar_one()
        return str(existing)

    async def claim(
        self, worker: str, lanes: Sequence[Priority], limit: int, lease_seconds: float
    ) -> list[Job]:
        if not lanes or limit <= 0:
            return []
        now = self._clock.now()
        rank = {lane.value: i for i, lane in enumerate(lanes)}
        # One random part per claim, made unique per job by its sequence number.
        params = {"now": now, "until": now + lease_seconds, "token": uuid.uuid4().hex + "."}
        candidates, take, prepared = self._claim_statements(tuple(rank), limit)
        if not is_postgres(self._engine):
            # SQLite: first whether any job is there to claim, read without the write lock
            # (`none_due`): most polls during a bulk send found nothing.
            if await none_due(self._engine, candidates, params):
                return []
            # Then one UPDATE ... RETURNING in one IMMEDIATE transaction, as one call on
            # a connection (`run_script`); through SQLAlchemy it was a trip through
            # the loop for each of BEGIN, the UPDATE and COMMIT, each waiting for the loop
            # while holding SQLite's one write lock (16 ms at p99 during a bulk send).
            dialect = self._engine.dialect
            (rows,) = await run_script(self._engine, script(dialect, (prepared, [params])))
            read = row_reader(jobs, dialect)
            mappings = [read(r) for r in rows]
        else:
            async with writer(self._engine) as conn:
                # Lock the candidates, passing over rows another claimer holds, then take them.
                seqs = list((await conn.execute(candidates, params)).scalars())
                if not seqs:
                    return []
                result = await conn.execute(take, {**params, "seqs": seqs})
                mappings = [dict(r._mapping) for r in result]
        mappings.sort(key=lambda m: (rank[m["lane"]], m["run_at"], m["seq"]))
        return [_job(m) for m in mappings]

    def _claim_statements(
        self, lanes: tuple[str, ...], limit: int
    ) -> tuple[Select[Any], Any, Statement]:
        """The claim's two statements for these lanes (in order of preference) and limit,
        built once: their values are parameters (`now`, `until`, `token`; `seqs` for the
        second on PostgreSQL), and the second as a `Statement` for SQLite's one-call run
        (the lanes compared one by one: an expanding IN list would be rendered per call). A
        worker claims every poll; building them is most of that."""
        key = (lanes, limit)
        found = self._claims.get(key)
        if found is not None:
            return found
        rank = {lane: i for i, lane in enumerate(lanes)}
        now = bindparam("now", type_=Double)
        candidates = (
            select(jobs.c.seq)
            .where(
                or_(*(jobs.c.lane == lane for lane in lanes)),
                or_(
                    and_(jobs.c.state == JobState.QUEUED.value, jobs.c.run_at <= now),
                    and_(jobs.c.state == _RUNNING, jobs.c.locked_until <= now),
                ),
            )
            .order_by(case(rank, value=jobs.c.lane), jobs.c.run_at, jobs.c.seq)
            .limit(limit)
        )
        take = update(jobs).values(
            state=_RUNNING,
            attempts=jobs.c.attempts + 1,
            lease_token=bindparam("token", type_=String) + cast(jobs.c.seq, String),
            locked_until=bindparam("until", type_=Double),
        )
        if is_postgres(self._engine):
            candidates = candidates.with_for_update(skip_locked=True)
            # one array parameter: one statement whatever the number claimed (see `among`)
            take = take.where(jobs.c.seq == any_(bindparam("seqs", type_=ARRAY(BigInteger))))
        else:
            take = take.where(jobs.c.seq.in_(candidates.scalar_subquery()))
        returning = take.returning(*jobs.c)
        found = self._claims[key] = (candidates, returning, Statement(returning))
        return found

    async def _settle(self, job_id: str, token: str, **values: Any) -> None:
        if not is_postgres(self._engine):
            # One call on a connection (script.py): a worker settles every job it
            # runs, and through SQLAlchemy the UPDATE and the COMMIT were two trips, each
            # waiting for the loop while holding SQLite's one write lock.
            names = tuple(sorted(values))
            params = [values[n] for n in names] + [job_id, _RUNNING, token]
            changed = await run_transaction(
                self._engine, functools.partial(_changed, _settle_sql(names), params)
            )
        else:
            async with writer(self._engine) as conn:
                result = await conn.execute(
                    update(jobs)
                    .where(
                        jobs.c.id == job_id,
                        jobs.c.state == _RUNNING,
                        jobs.c.lease_token == token,
                    )
                    .values(**values)
                )
            changed = result.rowcount
        if changed == 0:
            raise LeaseLost(f"lease on job {job_id} is not held")

    async def complete(self, job_id: str, lease_token: str) -> None:
        await self._settle(
            job_id, lease_token, state=JobState.DONE.value, lease_token=None, locked_until=None
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
        counted = {} if attempts is None else {"attempts": attempts}
        await self._settle(
            job_id,
            lease_token,
            state=JobState.QUEUED.value,
            run_at=run_at,
            lease_token=None,
            locked_until=None,
            last_error=error,
            **counted,
        )

    async def dead_letter(self, job_id: str, lease_token: str, error: str) -> None:
        await self._settle(
            job_id,
            lease_token,
            state=JobState.DEAD.value,
            lease_token=None,
            locked_until=None,
            last_error=error,
        )

    async def extend(self, job_id: str, lease_token: str, lease_seconds: float) -> None:
        await self._settle(job_id, lease_token, locked_until=self._clock.now() + lease_seconds)

    async def get(self, job_id: str) -> Job | None:
        async with self._read.connect() as conn:
            row = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).one_or_none()
        return None if row is None else _job(row._mapping)

    async def list_dead(self, limit: int, kind: str | None = None) -> list[Job]:
        stmt = select(jobs).where(jobs.c.state == JobState.DEAD.value)
        if kind is not None:
            stmt = stmt.where(jobs.c.kind == kind)
        async with self._read.connect() as conn:
            rows = await conn.execute(stmt.order_by(jobs.c.seq).limit(limit))
            return [_job(r._mapping) for r in rows]

    async def replay(self, job_id: str) -> None:
        async with writer(self._engine) as conn:
            result = await conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.state == JobState.DEAD.value)
                .values(state=JobState.QUEUED.value, attempts=0, run_at=self._clock.now())
            )
        if result.rowcount == 0:
            raise NotFound(f"dead job {job_id} not found")

    async def discard(self, job_id: str) -> None:
        async with writer(self._engine) as conn:
            result = await conn.execute(
                delete(jobs).where(jobs.c.id == job_id, jobs.c.state == JobState.DEAD.value)
            )
        if result.rowcount == 0:
            raise NotFound(f"dead job {job_id} not found")

    async def prune(self, before: float, limit: int) -> int:
        oldest = (
            select(jobs.c.seq)
            .where(jobs.c.state == JobState.DONE.value, jobs.c.run_at < before)
            .order_by(jobs.c.run_at, jobs.c.seq)
        )
        if await none_due(self._engine, oldest):
            return 0
        due = oldest.limit(limit).scalar_subquery()
        async with writer(self._engine) as conn:
            result = await conn.execute(delete(jobs).where(jobs.c.seq.in_(due)))
        return int(result.rowcount)

    async def depth(self) -> QueueDepth:
        stmt = (
            select(jobs.c.lane, jobs.c.state, func.count())
            .where(jobs.c.state.in_([JobState.QUEUED.value, _RUNNING, JobState.DEAD.value]))
            .group_by(jobs.c.lane, jobs.c.state)
        )
        queued: dict[str, int] = {}
        running: dict[str, int] = {}
        dead = 0
        async with self._read.connect() as conn:
            for lane, state, count in await conn.execute(stmt):
                if state == JobState.QUEUED.value:
                    queued[lane] = int(count)
                elif state == _RUNNING:
                    running[lane] = int(count)
                else:
                    dead += int(count)
        return QueueDepth(queued=queued, running=running, dead=dead)


def insert_jobs(engine: AsyncEngine) -> Insert:
    """The INSERT of new job rows for stores that enqueue in their own transactions: a row
    whose dedupe key was taken before is skipped, a no-op as `NewJob` promises."""
    ins = pg_insert if is_postgres(engine) else sqlite_insert
    return ins(jobs).on_conflict_do_nothing(index_elements=[jobs.c.dedupe_key])


def job_row(job: NewJob, now: float) -> dict[str, Any]:
    """The row of a new job (also written by the event store's outbox and the run store):
    queued, or running under its hand-off's lease."""
    j = Job.stored(job, now, str(uuid.uuid4()))
    return dict(
        id=j.id,
        kind=j.kind,
        payload=j.payload,
        lane=j.lane.value,
        state=j.state.value,
        run_at=j.run_at,
        attempts=j.attempts,
        max_attempts=j.max_attempts,
        dedupe_key=j.dedupe_key,
        lease_token=j.lease_token,
        locked_until=j.locked_until,
        last_error=j.last_error,
        created_at=j.created_at,
    )


def _job(m: Any) -> Job:
    return Job(
        id=m["id"],
        kind=m["kind"],
        payload=m["payload"],
        lane=Priority(m["lane"]),
        state=JobState(m["state"]),
        run_at=m["run_at"],
        attempts=m["attempts"],
        max_attempts=m["max_attempts"],
        dedupe_key=m["dedupe_key"],
        lease_token=m["lease_token"],
        locked_until=m["locked_until"],
        last_error=m["last_error"],
        created_at=m["created_at"],
    )
