"""The orchestrator's state in SQL: runs, step results, messages, the trail, digests and
API-defined workflows. Batches are written with one statement per table per transaction."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from sqlalchemy import bindparam, delete, false, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tidings.adapters.sql.engine import among, is_postgres, json_text, none_due, reader, writer
from tidings.adapters.sql.jobs import insert_jobs, job_row
from tidings.adapters.sql.script import (
    MAX_ROWS,
    RowReader,
    Statement,
    Step,
    insert_rows,
    row_reader,
    run_read,
    run_script,
    run_steps,
    run_transaction,
    script,
)
from tidings.adapters.sql.tables import (
    jobs,
    notify_digest_events,
    notify_digests,
    notify_messages,
    notify_runs,
    notify_steps,
    notify_trail,
    notify_workflows,
)
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
from tidings.types import NewJob, Priority

_IN_CHUNK = 500
# what a frequency cap counts: messages on their way or gone (a queued one is sent soon)
CAPPED_STATUSES = ("queued", "sent", "delivered")
_r, _s, _m, _t = notify_runs.c, notify_steps.c, notify_messages.c, notify_trail.c
_LOCK_MANY = text(
    "SELECT count(pg_advisory_lock(k)) FROM "
    "(SELECT k FROM unnest(CAST(:ids AS bigint[])) AS k ORDER BY k OFFSET 0) AS s"
)


def lock_id(key: str) -> int:
    """A PostgreSQL advisory lock's 64-bit id for `key`: the first 8 bytes of its SHA-256."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)


class SqlRunStore:
    def __init__(self, engine: AsyncEngine, clock: Clock) -> None:
        self._engine = engine
        self._read = reader(engine)
        self._clock = clock
        ins = pg_insert if is_postgres(engine) else sqlite_insert
        upsert = ins(notify_runs)
        self._put_run = upsert.on_conflict_do_update(
            index_elements=[_r.id],
            set_={
                c: upsert.excluded[c]
                for c in ("state", "outcome", "reason", "wake_at", "updated_at")
            },
        )
        self._ins_step = ins(notify_steps).on_conflict_do_nothing(
            index_elements=[_s.run_id, _s.step_id]
        )
        self._ins_msg = ins(notify_messages).on_conflict_do_nothing(index_elements=[_m.id])
        self._ins_digest = (
            ins(notify_digests)
            .on_conflict_do_nothing(index_elements=[notify_digests.c.id])
            .returning(notify_digests.c.id)
        )
        self._ins_digest_event = ins(notify_digest_events).on_conflict_do_nothing(
            index_elements=[notify_digest_events.c.digest_id, notify_digest_events.c.run_id]
        )
        self._ins_trail = notify_trail.insert()
        self._ins_job = insert_jobs(engine)
        self._ins_job_id = self._ins_job.returning(jobs.c.id)
        self._upd_step = (
            update(notify_steps)
            .where(_s.run_id == bindparam("b_run"), _s.step_id == bindparam("b_step"))
            .values(
                outcome=bindparam("b_outcome"),
                reason=bindparam("b_reason"),
                at=bindparam("b_at"),
                result=bindparam("b_result"),
            )
        )
        self._upd_msg = (
            update(notify_messages)
            .where(_m.id == bindparam("b_id"))
            .values({c: bindparam(f"b_{c}") for c in _UPDATABLE})
        )
        # on SQLite one-call transactions and reads (script.py)
        self._pg = is_postgres(engine)
        self._script_steps = [
            Statement(s)
            for s in (
                self._ins_step,
                self._upd_step,
                self._ins_msg,
                self._ins_trail,
                self._put_run,
                self._ins_job,
                self._ins_job_id,
            )
        ]

    # -- runs ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def exclusive(self, keys: Sequence[str]) -> AsyncIterator[None]:
        if not self._pg or not keys:
            yield  # SQLite: one process runs the workers
            return
        ids = sorted({lock_id(k) for k in keys})
        async with self._engine.connect() as conn:
            # No transaction stays open while the locks are held (they belong to the session)
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            try:
                # In sorted order (the subquery keeps it: OFFSET 0 stops it being
                # flattened), so two holders of overlapping sets never wait for each other
                # in a circle.
                await conn.execute(_LOCK_MANY, {"ids": ids})
                yield
            except BaseException:
                # Cancelled or failed, perhaps while taking the locks: the session is closed
                # rather than trusted to release what it holds, and its locks end with it.
                await conn.invalidate()
                raise
            await conn.execute(text("SELECT pg_advisory_unlock_all()"))

    async def get_runs(self, run_ids: Sequence[str]) -> dict[str, Run]:
        async with self._read.connect() as conn:
            return await _runs(conn, run_ids)

    async def load_many(
        self, run_ids: Sequence[str]
    ) -> dict[str, tuple[Run, dict[str, StepRow], dict[str, Message]]]:
        out: dict[str, tuple[Run, dict[str, StepRow], dict[str, Message]]] = {}
        async with self._read.connect() as conn:
            for chunk in _chunks(run_ids):
                runs = await _runs(conn, chunk)
                for run in runs.values():
                    out[run.id] = (run, {}, {})
                for row in await conn.execute(
                    select(notify_steps).where(among(_s.run_id, chunk, self._pg))
                ):
                    step = _step(row._mapping)
                    if step.run_id in out:
                        out[step.run_id][1][step.step_id] = step
                for row in await conn.execute(
                    select(notify_messages).where(among(_m.run_id, chunk, self._pg))
                ):
                    msg = _message(row._mapping)
                    if msg.run_id in out:
                        out[msg.run_id][2][msg.step_id] = msg
        return out

    async def commit(self, writes: Sequence[RunWrite], jobs: Sequence[NewJob] = ()) -> set[str]:
        now = self._clock.now()
        steps = [
            {**_step_row(s), "workflow": w.run.workflow, "recipient": w.run.recipient}
            for w in writes
            for s in w.steps
            if not s.replace
        ]
        replaced = [
            {
                "b_run": s.run_id,
                "b_step": s.step_id,
                "b_outcome": s.outcome,
                "b_reason": s.reason,
                "b_at": s.at,
                "b_result": dict(s.result),
            }
            for w in writes
            for s in w.steps
            if s.replace
        ]
        messages = [_message_row(m) for w in writes for m in w.messages]
        trail = [_trail_row(t) for w in writes for t in w.trail]
        runs = [{**_run_row(w.run), "updated_at": now} for w in writes]
        queued = [job_row(j, now) for j in jobs if j.handoff is None]
        handing = [job_row(j, now) for j in jobs if j.handoff is not None]
        if not self._pg:  # SQLite: the transaction as one call (`run_script`)
            done = await run_script(
                self._engine,
                script(
                    self._engine.dialect,
                    (self._script_steps[0], steps),
                    (self._script_steps[1], replaced),
                    (self._script_steps[2], messages),
                    (self._script_steps[3], trail),
                    (self._script_steps[4], runs),
                    (self._script_steps[5], queued),
                    (self._script_steps[6], handing),
                ),
            )
            return {str(row[0]) for row in done[-1]}
        async with writer(self._engine) as conn:
            if steps:
                await conn.execute(self._ins_step, steps)
            if replaced:
                await conn.execute(self._upd_step, replaced)
            if messages:
                await conn.execute(self._ins_msg, messages)
            if trail:
                await conn.execute(self._ins_trail, trail)
            if runs:
                await conn.execute(self._put_run, runs)
            if queued:
                await conn.execute(self._ins_job, queued)
            if not handing:
                return set()
            # RETURNING gives the ids of the rows stored: a deduplicated job is not one
            stored = await conn.execute(self._ins_job_id, handing)
            return {str(i) for i in stored.scalars()}

    async def effects_done(self, keys: Sequence[str], exclude_run: Mapping[str, str]) -> set[str]:
        found: set[str] = set()
        async with self._read.connect() as conn:
            for chunk in _chunks(keys):
                rows = await conn.execute(
                    select(_m.id, _m.run_id).where(among(_m.id, chunk, self._pg))
                )
                found.update(key for key, run in rows if exclude_run.get(key) != run)
        return found

    async def recent_sends(
        self, recipients: Sequence[str], since: float
    ) -> dict[str, dict[str, list[float]]]:
        out: dict[str, dict[str, list[float]]] = {}
        async with self._read.connect() as conn:
            for chunk in _chunks(recipients):
                rows = await conn.execute(
                    select(_m.recipient, _m.channel, _m.release_at).where(
                        among(_m.recipient, chunk, self._pg),
                        _m.release_at > since,
                        _m.status.in_(CAPPED_STATUSES),
                    )
                )
                for recipient, channel, at in rows:
                    out.setdefault(recipient, {}).setdefault(channel, []).append(float(at))
        return out

    async def count_passed(
        self, workflow: str, step_id: str, recipient: str, key: str, since: float, until: float
    ) -> int:
        async with self._read.connect() as conn:
            count = (
                await conn.execute(
                    select(func.count()).where(
                        _s.workflow == workflow,
                        _s.step_id == step_id,
                        _s.recipient == recipient,
                        _s.outcome == "passed",
                        _s.reason == key,
                        _s.at > since,
                        _s.at <= until,
                    )
                )
            ).scalar_one()
        return int(count)

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
        d = notify_digests.c
        async with writer(self._engine) as conn:
            created = (
                await conn.execute(
                    self._ins_digest,
                    {"id": digest_id, "leader_run": run_id, "closed": False, "created_at": at},
                )
            ).scalar_one_or_none()
            row = (
                await conn.execute(
                    select(d.leader_run, d.closed).where(d.id == digest_id).with_for_update()
                    if is_postgres(self._engine)
                    else select(d.leader_run, d.closed).where(d.id == digest_id)
                )
            ).one()
            leader = created is not None or row.leader_run == run_id
            if row.closed and not leader:
                member = await conn.execute(
                    select(notify_digest_events.c.run_id).where(
                        notify_digest_events.c.digest_id == digest_id,
                        notify_digest_events.c.run_id == run_id,
                    )
                )
                if member.one_or_none() is None:
                    return DigestJoin(leader=False, closed=True)
            await conn.execute(
                self._ins_digest_event,
                {
                    "digest_id": digest_id,
                    "run_id": run_id,
                    "event_id": event_id,
                    "actor": actor,
                    "payload": dict(payload),
                    "at": at,
                },
            )
        return DigestJoin(leader=leader, closed=False)

    async def close_digest(
        self, digest_id: str
    ) -> list[tuple[str, Mapping[str, Any], float, str | None]]:
        e = notify_digest_events.c
        async with writer(self._engine) as conn:
            await conn.execute(
                update(notify_digests).where(notify_digests.c.id == digest_id).values(closed=True)
            )
            rows = await conn.execute(
                select(e.event_id, e.payload, e.at, e.actor)
                .where(e.digest_id == digest_id)
                .order_by(e.at, e.event_id)
            )
            return [(r.event_id, r.payload, float(r.at), r.actor) for r in rows]

    # -- messages --------------------------------------------------------------------------

    async def message(self, message_id: str) -> Message | None:
        async with self._read.connect() as conn:
            row = (
                await conn.execute(select(notify_messages).where(_m.id == message_id))
            ).one_or_none()
        return None if row is None else _message(row._mapping)

    async def messages(self, message_ids: Sequence[str]) -> dict[str, Message]:
        if not self._pg:  # SQLite: one call on a connection, as the settling reads
            read = row_reader(notify_messages, self._engine.dialect)
            return await run_read(
                self._engine, functools.partial(_read_messages, read, message_ids)
            )
        out: dict[str, Message] = {}
        async with self._read.connect() as conn:
            for chunk in _chunks(message_ids):
                for row in await conn.execute(
                    select(notify_messages).where(among(_m.id, chunk, self._pg))
                ):
                    msg = _message(row._mapping)
                    out[msg.id] = msg
        return out

    async def update_messages(
        self, updates: Sequence[MessageUpdate], *, at: float
    ) -> list[Message]:
        owners = [u.message_id for u in updates for _ in u.trail]
        trail = [_trail_row(t) for u in updates for t in u.trail]
        job_owners = [u.message_id for u in updates for _ in u.jobs]
        new_jobs = [job_row(j, at) for u in updates for j in u.jobs]
        if not self._pg:
            # SQLite: the reads, updates and inserts in one call (`run_transaction`)
            # (script.py): one trip holding the write lock, however many messages.
            steps = script(
                self._engine.dialect,
                (self._script_steps[3], trail),
                (self._script_steps[5], new_jobs),
            )
            return await run_transaction(
                self._engine,
                functools.partial(
                    _update_messages,
                    row_reader(notify_messages, self._engine.dialect),
                    updates,
                    at,
                    (owners, job_owners),
                    steps,
                ),
            )
        async with writer(self._engine) as conn:
            current: dict[str, Message] = {}
            # locked in id order, so two transactions over the same messages cannot deadlock
            for chunk in _chunks(sorted({u.message_id for u in updates})):
                rows = await conn.execute(
                    select(notify_messages)
                    .where(among(_m.id, chunk, self._pg))
                    .order_by(_m.id)
                    .with_for_update()
                )
                for row in rows:
                    msg = _message(row._mapping)
                    current[msg.id] = msg
            written = _merged(updates, at, current)
            if written:
                await conn.execute(
                    self._upd_msg, [_message_values(m) for m in {m.id: m for m in written}.values()]
                )
            kept = [row for row, owner in zip(trail, owners, strict=True) if owner in current]
            if kept:
                await conn.execute(self._ins_trail, kept)
            kept = [
                row for row, owner in zip(new_jobs, job_owners, strict=True) if owner in current
            ]
            if kept:
                await conn.execute(self._ins_job, kept)
        return written

    # -- reading the trail -----------------------------------------------------------------

    async def cancel_runs(self, event_id: str, at: float, reason: str, wake: WakeJob) -> int:
        async with writer(self._engine) as conn:
            ended = (
                await conn.execute(
                    update(notify_runs)
                    .where(_r.event_id == event_id, _r.state != RunState.DONE.value)
                    .values(
                        state=RunState.DONE.value,
                        outcome="cancelled",
                        reason=reason,
                        wake_at=None,
                        updated_at=at,
                    )
                    .returning(_r.id, _r.recipient, _r.workflow, _r.lane)
                )
            ).all()
            await self._leave_digests(conn, event_id, ended, at, wake)
            await conn.execute(
                update(notify_messages)
                .where(_m.event_id == event_id, _m.status == "queued")
                .values(status="not_sent", error=reason, updated_at=at)
            )
            if ended:
                await conn.execute(
                    self._ins_trail,
                    [
                        _trail_row(
                            TrailEntry(
                                row.id,
                                event_id,
                                row.recipient,
                                row.workflow,
                                None,
                                "run",
                                at,
                                {"state": "done", "outcome": "cancelled", "reason": reason},
                            )
                        )
                        for row in ended
                    ],
                )
        return len(ended)

    async def _leave_digests(
        self, conn: AsyncConnection, event_id: str, ended: Sequence[Any], at: float, wake: WakeJob
    ) -> None:
        """The cancelled event's part of `cancel_runs` in the digests not closed yet."""
        d, de = notify_digests.c, notify_digest_events.c
        await conn.execute(
            delete(notify_digest_events).where(
                de.event_id == event_id,
                de.digest_id.in_(select(d.id).where(d.closed == false())),
            )
        )
        by_id = {row.id: row for row in ended}
        led: list[Any] = []
        for chunk in _chunks(list(by_id)):
            led.extend(
                await conn.execute(
                    select(_s.run_id, _s.step_id, _s.result).where(
                        _s.run_id.in_(chunk), _s.outcome == StepOutcome.DIGEST_LEADER
                    )
                )
            )
        for old_run, step_id, result in led:
            digest = str(result.get("digest_id") or "")
            query = select(d.leader_run, d.closed).where(d.id == digest)
            if is_postgres(self._engine):
                query = query.with_for_update()
            found = (await conn.execute(query)).one_or_none()
            if found is None or found.closed or found.leader_run != old_run:
                continue  # a digest of its own (a late join), or no longer this run's
            heir = (
                await conn.execute(
                    select(de.run_id, de.event_id, de.at)
                    .where(de.digest_id == digest)
                    .order_by(de.at, de.run_id)
                    .limit(1)
                )
            ).one_or_none()
            if heir is None:
                await conn.execute(delete(notify_digests).where(d.id == digest))
                continue
            await conn.execute(
                update(notify_digests).where(d.id == digest).values(leader_run=heir.run_id)
            )
            old = by_id[old_run]
            handed = digest_handed_over(result, float(heir.at), event_id, at)
            values = {
                "outcome": StepOutcome.DIGEST_LEADER.value,
                "reason": handed.reason,
                "at": float(heir.at),
                "result": dict(handed.result),
            }
            changed = await conn.execute(
                update(notify_steps)
                .where(_s.run_id == heir.run_id, _s.step_id == step_id)
                .values(values)
            )
            if not changed.rowcount:  # the run has not stored its join yet
                await conn.execute(
                    self._ins_step,
                    {
                        "run_id": heir.run_id,
                        "step_id": step_id,
                        "workflow": old.workflow,
                        "recipient": old.recipient,
                        **values,
                    },
                )
            lane = (
                await conn.execute(
                    update(notify_runs)
                    .where(_r.id == heir.run_id)
                    .values(
                        state=RunState.WAITING.value,
                        outcome=None,
                        reason=DIGEST_WAIT,
                        wake_at=handed.window_end,
                        updated_at=at,
                    )
                    .returning(_r.lane)
                )
            ).scalar_one_or_none()
            entry = TrailEntry(
                heir.run_id,
                heir.event_id,
                old.recipient,
                old.workflow,
                step_id,
                "run",
                at,
                handed.trail(),
            )
            await conn.execute(self._ins_trail, [_trail_row(entry)])
            job = wake(heir.run_id, Priority(lane or old.lane), step_id, handed.window_end)
            await conn.execute(self._ins_job, [job_row(job, at)])

    async def runs_for_event(
        self, event_id: str, *, after: str | None = None, limit: int = 1000
    ) -> list[Run]:
        query = select(notify_runs).where(_r.event_id == event_id)
        if after is not None:
            query = query.where(_r.recipient > after)
        async with self._read.connect() as conn:
            rows = await conn.execute(query.order_by(_r.recipient, _r.id).limit(limit))
            return [_run(r._mapping) for r in rows]

    async def count_runs(self, event_id: str) -> dict[RunState, int]:
        async with self._read.connect() as conn:
            rows = await conn.execute(
                select(_r.state, func.count()).where(_r.event_id == event_id).group_by(_r.state)
            )
            return {RunState(state): int(n) for state, n in rows}

    async def messages_for_runs(self, run_ids: Sequence[str]) -> list[Message]:
        found: list[Message] = []
        async with self._read.connect() as conn:
            for chunk in _chunks(run_ids):
                rows = await conn.execute(select(notify_messages).where(_m.run_id.in_(chunk)))
                found.extend(_message(r._mapping) for r in rows)
        found.sort(key=lambda m: (m.created_at, m.id))
        return found

    async def trail_for_recipients(
        self, event_id: str, recipients: Sequence[str]
    ) -> list[TrailEntry]:
        found: list[TrailEntry] = []
        async with self._read.connect() as conn:
            for chunk in _chunks(recipients):
                rows = await conn.execute(
                    select(notify_trail).where(_t.recipient.in_(chunk), _t.event_id == event_id)
                )
                found.extend(_trail(r._mapping) for r in rows)
        found.sort(key=lambda t: t.seq)
        return found

    async def trail_for_event(self, event_id: str, *, after: int, limit: int) -> list[TrailEntry]:
        return await self._trail(_t.event_id == event_id, after, limit)

    async def trail_for_recipient(
        self, recipient: str, *, after: int, limit: int
    ) -> list[TrailEntry]:
        return await self._trail(_t.recipient == recipient, after, limit)

    async def _trail(self, where: Any, after: int, limit: int) -> list[TrailEntry]:
        async with self._read.connect() as conn:
            rows = await conn.execute(
                select(notify_trail).where(where, _t.seq > after).order_by(_t.seq).limit(limit)
            )
            return [_trail(r._mapping) for r in rows]

    async def messages_for_recipient(
        self, recipient: str, *, before: float | None, limit: int
    ) -> list[Message]:
        query = select(notify_messages).where(_m.recipient == recipient)
        if before is not None:
            query = query.where(_m.created_at < before)
        async with self._read.connect() as conn:
            rows = await conn.execute(query.order_by(_m.created_at.desc()).limit(limit))
            return [_message(r._mapping) for r in rows]

    # -- retention -------------------------------------------------------------------------

    async def prune(self, before: float, limit: int) -> int:
        """The ids first (by the (state, updated_at) index, oldest first, `limit` of them),
        then one DELETE per table by those ids, in one transaction; the digests the deleted
        rows belonged to are looked at last."""
        d, de = notify_digests.c, notify_digest_events.c
        leader = notify_runs.alias("leader")
        queued = select(_m.id).where(_m.run_id == _r.id, _m.status == "queued")
        pending_digest = (
            select(de.run_id)
            .join(notify_digests, d.id == de.digest_id)
            .join(leader, leader.c.id == d.leader_run)
            .where(
                de.run_id == _r.id,
                d.closed.is_(False),
                leader.c.state != RunState.DONE.value,
            )
        )
        due = (
            select(_r.id)
            .where(
                _r.state == RunState.DONE.value,
                _r.updated_at < before,
                ~queued.exists(),
                ~pending_digest.exists(),
            )
            .order_by(_r.updated_at, _r.id)
            .limit(limit)
        )
        if await none_due(self._engine, due):
            return 0
        if is_postgres(self._engine):  # processes pruning at once take different runs
            due = due.with_for_update(skip_locked=True)
        by_run = (
            (notify_steps, _s.run_id),
            (notify_messages, _m.run_id),
            (notify_trail, _t.run_id),
            (notify_digest_events, de.run_id),
            (notify_runs, _r.id),
        )
        async with writer(self._engine) as conn:
            ids = [str(i) for i in (await conn.execute(due)).scalars()]
            digests: set[str] = set()
            for chunk in _chunks(ids):
                found = await conn.execute(
                    select(de.digest_id).where(de.run_id.in_(chunk)).distinct()
                )
                digests.update(str(i) for i in found.scalars())
                for table, run_id in by_run:
                    await conn.execute(delete(table).where(run_id.in_(chunk)))
            # A closed digest is history once its rows or its leader are gone: the rest of
            # its rows (members kept longer) go with it.
            for chunk in _chunks(sorted(digests)):
                gone = await conn.execute(
                    delete(notify_digests)
                    .where(
                        d.id.in_(chunk),
                        d.closed.is_(True),
                        ~select(de.run_id).where(de.digest_id == d.id).exists()
                        | ~select(_r.id).where(_r.id == d.leader_run).exists(),
                    )
                    .returning(d.id)
                )
                closed = [str(i) for i in gone.scalars()]
                if closed:
                    await conn.execute(delete(notify_digest_events).where(de.digest_id.in_(closed)))
        return len(ids)


class SqlWorkflowStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._read = reader(engine)
        w = notify_workflows.c
        ins = (pg_insert if is_postgres(engine) else sqlite_insert)(notify_workflows)
        # One statement, so that concurrent puts each bump the revision.
        self._put = ins.on_conflict_do_update(
            index_elements=[w.key],
            set_={
                "definition": ins.excluded.definition,
                "revision": w.revision + 1,
                "updated_at": ins.excluded.updated_at,
            },
        ).returning(w.revision)

    async def put(self, key: str, definition: Mapping[str, Any], at: float) -> WorkflowRecord:
        values = {"key": key, "definition": dict(definition), "revision": 1, "updated_at": at}
        async with writer(self._engine) as conn:
            revision = int((await conn.execute(self._put, values)).scalar_one())
        return WorkflowRecord(key, dict(definition), revision, "api", at)

    async def get(self, key: str) -> WorkflowRecord | None:
        async with self._read.connect() as conn:
            row = (
                await conn.execute(select(notify_workflows).where(notify_workflows.c.key == key))
            ).one_or_none()
        return None if row is None else _workflow(row._mapping)

    async def all(self) -> list[WorkflowRecord]:
        async with self._read.connect() as conn:
            rows = await conn.execute(select(notify_workflows).order_by(notify_workflows.c.key))
            return [_workflow(r._mapping) for r in rows]

    async def delete(self, key: str) -> bool:
        async with writer(self._engine) as conn:
            result = await conn.execute(
                delete(notify_workflows).where(notify_workflows.c.key == key)
            )
        return bool(result.rowcount)


# -- rows ------------------------------------------------------------------------------------


def _chunks(items: Sequence[str]) -> list[list[str]]:
    return [list(items[i : i + _IN_CHUNK]) for i in range(0, len(items), _IN_CHUNK)]


async def _runs(conn: AsyncConnection, ids: Sequence[str]) -> dict[str, Run]:
    out: dict[str, Run] = {}
    for chunk in _chunks(ids):
        for row in await conn.execute(
            select(notify_runs).where(among(_r.id, chunk, is_postgres(conn)))
        ):
            run = _run(row._mapping)
            out[run.id] = run
    return out


def _run_row(run: Run) -> dict[str, Any]:
    return {
        "id": run.id,
        "event_id": run.event_id,
        "workflow": run.workflow,
        "recipient": run.recipient,
        "lane": run.lane.value,
        "state": run.state.value,
        "outcome": run.outcome,
        "reason": run.reason,
        "wake_at": run.wake_at,
        "created_at": run.created_at,
        "updated_at": run.updated_at or run.created_at,
    }


def _run(m: Any) -> Run:
    return Run(
        id=m["id"],
        event_id=m["event_id"],
        workflow=m["workflow"],
        recipient=m["recipient"],
        lane=Priority(m["lane"]),
        created_at=m["created_at"],
        state=RunState(m["state"]),
        outcome=m["outcome"],
        reason=m["reason"],
        wake_at=m["wake_at"],
        updated_at=m["updated_at"],
    )


def _step_row(s: StepRow) -> dict[str, Any]:
    return {
        "run_id": s.run_id,
        "step_id": s.step_id,
        "outcome": s.outcome,
        "reason": s.reason,
        "at": s.at,
        "result": dict(s.result),
    }


def _step(m: Any) -> StepRow:
    return StepRow(m["run_id"], m["step_id"], m["outcome"], m["at"], m["reason"], m["result"])


def _message_row(msg: Message) -> dict[str, Any]:
    return {
        "id": msg.id,
        "run_id": msg.run_id,
        "event_id": msg.event_id,
        "recipient": msg.recipient,
        "workflow": msg.workflow,
        "step_id": msg.step_id,
        "channel": msg.channel,
        "template": msg.template,
        "template_version": msg.template_version,
        "variant": msg.variant,
        "locale": msg.locale,
        "lane": msg.lane.value,
        "status": msg.status,
        "statuses": dict(msg.statuses),
        "release_at": msg.release_at,
        "attempts": msg.attempts,
        "provider": msg.provider,
        "provider_id": msg.provider_id,
        "error": msg.error,
        "created_at": msg.created_at,
        "updated_at": msg.updated_at,
    }


def _message(m: Any) -> Message:
    return Message(
        id=m["id"],
        run_id=m["run_id"],
        event_id=m["event_id"],
        recipient=m["recipient"],
        workflow=m["workflow"],
        step_id=m["step_id"],
        channel=m["channel"],
        template=m["template"],
        template_version=m["template_version"],
        lane=Priority(m["lane"]),
        status=m["status"],
        release_at=m["release_at"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        statuses={k: float(v) for k, v in (m["statuses"] or {}).items()},
        attempts=m["attempts"],
        provider=m["provider"],
        provider_id=m["provider_id"],
        error=m["error"],
        variant=m["variant"],
        locale=m["locale"],
    )


_UPDATABLE = ("statuses", "updated_at", "status", "provider", "provider_id", "error", "attempts")


@functools.cache
def _update_messages_sql(n: int) -> str:
    """One UPDATE of `n` messages, each row's values (`_UPDATABLE`, then the id) from a
    VALUES list: one step of SQLite for all of them, where `executemany` steps once per
    row and takes the GIL back after each, holding SQLite's write lock while it waits."""
    row = "(" + ", ".join("?" * (len(_UPDATABLE) + 1)) + ")"
    return (
        f"WITH v({', '.join(_UPDATABLE)}, id) AS (VALUES {', '.join([row] * n)}) "
        f"UPDATE notify_messages SET {', '.join(f'{c} = v.{c}' for c in _UPDATABLE)} "
        "FROM v WHERE notify_messages.id = v.id"
    )


def _read_messages(
    read: RowReader, ids: Sequence[str], conn: sqlite3.Connection
) -> dict[str, Message]:
    """In a SQLite connection's call: the stored messages of `ids` by id (unknown ids left
    out), decoded as SQLAlchemy decodes them (`read`)."""
    return {m.id: m for m in map(_message, read.by_id(conn, ids))}


def _merged(
    updates: Sequence[MessageUpdate], at: float, current: dict[str, Message]
) -> list[Message]:
    """Each update applied to its stored message (in `current`, which takes the result: a
    second update of one message applies to the first's), unknown ids left out."""
    written: list[Message] = []
    for u in updates:
        found = current.get(u.message_id)
        if found is None:
            continue
        found = current[u.message_id] = dataclasses.replace(found, **u.changes(found, at))
        written.append(found)
    return written


def _message_values(m: Message) -> dict[str, Any]:
    return {"b_id": m.id, **{f"b_{n}": getattr(m, n) for n in _UPDATABLE}}


def _update_messages(
    read: RowReader,
    updates: Sequence[MessageUpdate],
    at: float,
    owners: tuple[Sequence[str], Sequence[str]],
    steps: Sequence[Step],
    conn: sqlite3.Connection,
) -> list[Message]:
    """In a SQLite transaction's call: `update_messages`' reads, merges, UPDATEs and inserts
    (`steps`: the trail entries, then the jobs; `owners`: the message of each of their
    rows)."""
    ids = list(dict.fromkeys(u.message_id for u in updates))
    current = _read_messages(read, ids, conn)
    written = _merged(updates, at, current)
    last = {m.id: m for m in written}.values()
    rows = [
        (json_text(dict(m.statuses)), *(getattr(m, n) for n in _UPDATABLE[1:]), m.id) for m in last
    ]
    insert_rows(conn, _update_messages_sql, rows, MAX_ROWS)  # 8 values a row
    if len(current) < len(ids):  # unknown ids: their trail entries and jobs go too
        steps = [
            Step(step.statement, [r for r, o in zip(step.rows, own, strict=True) if o in current])
            for step, own in zip(steps, owners, strict=True)
        ]
    run_steps(steps, conn)
    return written


def _trail_row(t: TrailEntry) -> dict[str, Any]:
    return {
        "run_id": t.run_id,
        "event_id": t.event_id,
        "recipient": t.recipient,
        "workflow": t.workflow,
        "step_id": t.step_id,
        "kind": t.kind,
        "at": t.at,
        "data": dict(t.data),
    }


def _trail(m: Any) -> TrailEntry:
    return TrailEntry(
        run_id=m["run_id"],
        event_id=m["event_id"],
        recipient=m["recipient"],
        workflow=m["workflow"],
        step_id=m["step_id"],
        kind=m["kind"],
        at=m["at"],
        data=m["data"],
        seq=m["seq"],
    )


def _workflow(m: Any) -> WorkflowRecord:
    return WorkflowRecord(m["key"], m["definition"], m["revision"], "api", m["updated_at"])
