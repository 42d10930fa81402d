"""Contract of RunStore and WorkflowStore, on memory, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from typing import Any

import pytest
from sqlalchemy.exc import StatementError

from tests.contract.conftest import Stores
from tidings.adapters.sql.notify import SqlRunStore
from tidings.ports.notify import (
    Message,
    MessageUpdate,
    Run,
    RunState,
    RunStore,
    RunWrite,
    StepRow,
    TrailEntry,
)
from tidings.types import NewJob, Priority

TX = Priority.TRANSACTIONAL
BOTH = [TX, Priority.BULK]
# Writing a value no JSON column takes: memory raises it as is, SQLAlchemy wraps it.
FAILED_WRITE = (TypeError, StatementError)


async def update(runs: RunStore, message_id: str, *, at: float, **fields: Any) -> Message | None:
    """One message's update (`update_messages`): the message as written, or None."""
    written = await runs.update_messages([MessageUpdate(message_id, **fields)], at=at)
    return written[0] if written else None


def run(event: str = "e1", recipient: str = "alice", workflow: str = "wf", at: float = 1.0) -> Run:
    return Run(
        id=f"r:{event}:{recipient}:{workflow}",
        event_id=event,
        workflow=workflow,
        recipient=recipient,
        lane=TX,
        created_at=at,
    )


def step(
    r: Run,
    step_id: str,
    *,
    outcome: str = "passed",
    at: float = 1.0,
    reason: str = "",
    result: dict[str, Any] | None = None,
) -> StepRow:
    return StepRow(r.id, step_id, outcome, at, reason, result or {"outcome": outcome})


def message(
    r: Run,
    step_id: str = "email",
    *,
    channel: str = "email",
    status: str = "queued",
    at: float = 1.0,
    release_at: float | None = None,
    **kw: Any,
) -> Message:
    return Message(
        id=kw.pop("id", f"m:{r.id}:{step_id}"),
        run_id=r.id,
        event_id=r.event_id,
        recipient=r.recipient,
        workflow=r.workflow,
        step_id=step_id,
        channel=channel,
        template="welcome",
        template_version="welcome@1",
        lane=r.lane,
        status=status,
        release_at=at if release_at is None else release_at,
        created_at=at,
        updated_at=at,
        **kw,
    )


def entry(r: Run, kind: str = "decision", at: float = 1.0, **data: Any) -> TrailEntry:
    return TrailEntry(r.id, r.event_id, r.recipient, r.workflow, None, kind, at, data)


# -- runs ------------------------------------------------------------------------------------


async def store(stores: Stores, runs: list[Run]) -> None:
    """Runs as a batch's commit stores them (still ACTIVE here: the tests move them on)."""
    await stores.runs.commit([RunWrite(r) for r in runs])


async def test_a_commit_keeps_the_first_creation_and_runs_list_by_recipient(
    stores: Stores,
) -> None:
    a, b = run("e1", "bob", at=10.0), run("e1", "alice", at=5.0)
    await store(stores, [a])
    again = dataclasses.replace(a, created_at=20.0, lane=Priority.BULK)
    await store(stores, [b, again])
    listed = await stores.runs.runs_for_event("e1")
    assert [(r.recipient, r.created_at, r.lane) for r in listed] == [
        ("alice", 5.0, TX),
        ("bob", 10.0, TX),  # created_at and lane stay as first stored
    ]
    assert await stores.runs.runs_for_event("e2") == []


async def test_an_events_runs_page_by_recipient_with_their_messages_and_trail(
    stores: Stores,
) -> None:
    runs = [run("e1", f"u{i:02d}") for i in range(7)] + [run("e2", "u00")]
    await stores.runs.commit(
        [
            RunWrite(r, messages=[message(r)], trail=[entry(r, n=i), entry(r, n=i + 100)])
            for i, r in enumerate(runs)
        ]
    )
    pages: list[list[str]] = []
    after: str | None = None
    while True:
        page = await stores.runs.runs_for_event("e1", after=after, limit=3)
        pages.append([r.recipient for r in page])
        if len(page) < 3:
            break
        after = page[-1].recipient
    assert pages == [["u00", "u01", "u02"], ["u03", "u04", "u05"], ["u06"]]
    second = [r for r in runs if r.recipient in ("u03", "u04") and r.event_id == "e1"]
    messages = await stores.runs.messages_for_runs([r.id for r in second])
    assert sorted(m.recipient for m in messages) == ["u03", "u04"]
    trail = await stores.runs.trail_for_recipients("e1", ["u03", "u04"])
    assert [(t.recipient, t.data["n"]) for t in trail] == [
        ("u03", 3),
        ("u03", 103),
        ("u04", 4),
        ("u04", 104),
    ]  # by seq, only this event's entries (e2 has u00 too)
    assert [t.event_id for t in await stores.runs.trail_for_recipients("e2", ["u00"])] == [
        "e2",
        "e2",
    ]
    assert await stores.runs.messages_for_runs([]) == []


async def test_concurrent_commits_of_the_same_new_runs_store_each_once(stores: Stores) -> None:
    runs = [run("e1", f"u{i}") for i in range(5)]
    await asyncio.gather(*(store(stores, runs) for _ in range(6)))
    assert len(await stores.runs.runs_for_event("e1")) == 5
    assert (await stores.runs.count_runs("e1")) == {RunState.ACTIVE: 5}


async def test_load_many_returns_steps_and_messages_by_step_id(stores: Stores) -> None:
    a, b = run("e1", "alice"), run("e1", "bob")
    many = [run("bulk", f"u{i}") for i in range(600)]  # more than one IN list
    await store(stores, [a, b, *many])
    email = message(a, "email", statuses={"queued": 1.0}, variant="B", locale="de")
    result = {"outcome": "passed", "detail": {"list": [1, "x"], "none": None}}
    await stores.runs.commit(
        [
            RunWrite(
                run=a,
                steps=[step(a, "filter", result=result), step(a, "email", reason="sent")],
                messages=[email],
            ),
            RunWrite(run=b, steps=[step(b, "filter", outcome="skipped", reason="muted")]),
        ]
    )
    loaded = await stores.runs.load_many([a.id, "missing", b.id])
    assert set(loaded) == {a.id, b.id}
    run_a, steps_a, messages_a = loaded[a.id]
    assert run_a.id == a.id and run_a.recipient == "alice"
    assert steps_a == {
        "filter": step(a, "filter", result=result),
        "email": step(a, "email", reason="sent"),
    }
    assert messages_a == {"email": email}
    assert loaded[b.id][1] == {"filter": step(b, "filter", outcome="skipped", reason="muted")}
    assert loaded[b.id][2] == {}
    assert await stores.runs.load_many([]) == {}
    assert set(await stores.runs.load_many([r.id for r in many])) == {r.id for r in many}


async def test_commit_updates_the_run_state(stores: Stores) -> None:
    a = run("e1", "alice", at=1.0)
    await store(stores, [a])
    stores.clock.advance(30)
    waiting = dataclasses.replace(
        a, state=RunState.WAITING, wake_at=99.0, reason="delay", lane=Priority.BULK
    )
    await stores.runs.commit([RunWrite(run=waiting)])
    [stored] = await stores.runs.runs_for_event("e1")
    assert (stored.state, stored.wake_at, stored.reason, stored.outcome) == (
        RunState.WAITING,
        99.0,
        "delay",
        None,
    )
    assert stored.updated_at == stores.clock.now()
    assert (stored.lane, stored.created_at) == (TX, 1.0)  # fixed at creation
    done = dataclasses.replace(a, state=RunState.DONE, outcome="sent", reason="")
    await stores.runs.commit([RunWrite(run=done)])
    final, _, _ = (await stores.runs.load_many([a.id]))[a.id]
    assert (final.state, final.outcome, final.wake_at) == (RunState.DONE, "sent", None)


async def test_get_runs_and_a_commit_inserting_one_run_and_updating_another(
    stores: Stores,
) -> None:
    a, b = run("e1", "alice", at=1.0), run("e1", "bob", at=2.0)
    await store(stores, [b])
    assert await stores.runs.get_runs([a.id, b.id, "nope"]) == {
        b.id: dataclasses.replace(b, updated_at=stores.clock.now())
    }
    stores.clock.advance(30)
    done = dataclasses.replace(a, state=RunState.DONE, outcome="completed", lane=Priority.BULK)
    still = dataclasses.replace(b, state=RunState.WAITING, wake_at=50.0, reason="delay")
    await stores.runs.commit([RunWrite(done, steps=[step(a, "inapp")]), RunWrite(still)])
    got = await stores.runs.get_runs([a.id, b.id])
    assert got[a.id] == dataclasses.replace(done, updated_at=stores.clock.now())
    assert (got[b.id].state, got[b.id].wake_at, got[b.id].created_at) == (
        RunState.WAITING,
        50.0,
        2.0,
    )
    assert [r.id for r in await stores.runs.runs_for_event("e1")] == [a.id, b.id]
    _, steps, _ = (await stores.runs.load_many([a.id]))[a.id]
    assert list(steps) == ["inapp"]
    assert await stores.runs.count_runs("e1") == {RunState.DONE: 1, RunState.WAITING: 1}


async def test_count_runs_counts_an_events_runs_per_state(stores: Stores) -> None:
    assert await stores.runs.count_runs("e1") == {}
    runs = [run("e1", f"u{i}") for i in range(5)] + [run("e2", "u0")]
    await store(stores, runs)
    writes = [
        RunWrite(run=dataclasses.replace(runs[0], state=RunState.DONE, outcome="sent")),
        RunWrite(run=dataclasses.replace(runs[1], state=RunState.DONE, outcome="not_sent")),
        RunWrite(run=dataclasses.replace(runs[2], state=RunState.WAITING, wake_at=9.0)),
    ]
    await stores.runs.commit(writes)
    assert await stores.runs.count_runs("e1") == {
        RunState.DONE: 2,
        RunState.WAITING: 1,
        RunState.ACTIVE: 2,
    }
    assert await stores.runs.count_runs("e2") == {RunState.ACTIVE: 1}


async def test_cancel_runs_ends_what_is_still_going_and_its_queued_messages(
    stores: Stores,
) -> None:
    done, waiting, fresh, other = run("e1", "a"), run("e1", "b"), run("e1", "c"), run("e2", "a")
    await store(stores, [done, waiting, fresh, other])
    await stores.runs.commit(
        [
            RunWrite(
                run=dataclasses.replace(done, state=RunState.DONE, outcome="completed"),
                messages=[message(done, status="sent")],
            ),
            RunWrite(
                run=dataclasses.replace(waiting, state=RunState.WAITING, wake_at=9.0),
                messages=[message(waiting, status="queued", release_at=9.0)],
            ),
            RunWrite(run=dataclasses.replace(other, state=RunState.WAITING, wake_at=9.0)),
        ]
    )
    assert await stores.runs.cancel_runs("e1", 5.0, "event cancelled", wake) == 2
    assert await stores.runs.cancel_runs("e1", 6.0, "event cancelled", wake) == 0  # nothing left
    runs = {r.recipient: r for r in await stores.runs.runs_for_event("e1")}
    assert runs["a"].outcome == "completed"
    assert {runs["b"].outcome, runs["c"].outcome} == {"cancelled"}
    assert runs["b"].state is RunState.DONE and runs["b"].wake_at is None
    messages = {
        m.recipient: m for m in await stores.runs.messages_for_runs([a.id for a in (done, waiting)])
    }
    assert messages["a"].status == "sent"
    assert (messages["b"].status, messages["b"].error) == ("not_sent", "event cancelled")
    trail = await stores.runs.trail_for_event("e1", after=0, limit=10)
    assert sorted(t.recipient for t in trail if t.data.get("outcome") == "cancelled") == ["b", "c"]
    assert (await stores.runs.runs_for_event("e2"))[0].state is RunState.WAITING


async def test_commit_keeps_the_earlier_step_and_message(stores: Stores) -> None:
    a = run()
    await store(stores, [a])
    first_step = step(a, "email", reason="first", at=1.0)
    first_message = message(a, "email", status="queued", at=1.0)
    await stores.runs.commit(
        [RunWrite(a, steps=[first_step], messages=[first_message], trail=[entry(a, n=1)])]
    )
    retry_step = step(a, "email", outcome="failed", reason="second", at=2.0)
    retry_message = dataclasses.replace(first_message, status="sent", channel="sms")
    await stores.runs.commit(
        [
            RunWrite(
                a,
                steps=[retry_step, step(a, "push", at=2.0)],
                messages=[retry_message],
                trail=[entry(a, n=2)],
            )
        ]
    )
    _, steps, messages = (await stores.runs.load_many([a.id]))[a.id]
    assert steps == {"email": first_step, "push": step(a, "push", at=2.0)}
    assert messages == {"email": first_message}
    assert await stores.runs.message(first_message.id) == first_message
    trail = await stores.runs.trail_for_event("e1", after=0, limit=10)
    assert [t.data for t in trail] == [{"n": 1}, {"n": 2}]  # the trail is appended


async def test_commit_enqueues_jobs_and_a_repeated_dedupe_key_is_a_no_op(stores: Stores) -> None:
    a = run()
    await store(stores, [a])
    deliver = NewJob("notify.deliver", {"message": "m1", "n": [1, 2]}, dedupe_key="deliver:m1")
    await stores.runs.commit([RunWrite(a, steps=[step(a, "one")])], [deliver])
    [job] = await stores.jobs.claim("w", BOTH, 10, 30.0)
    assert (job.kind, job.payload, job.dedupe_key) == (
        "notify.deliver",
        {"message": "m1", "n": [1, 2]},
        "deliver:m1",
    )
    await stores.jobs.complete(job.id, job.lease_token)
    # A pass repeated after its jobs went out enqueues the same key again: nothing new.
    later = NewJob("notify.run", {"run": a.id}, run_at=stores.clock.now() + 60)
    await stores.runs.commit([RunWrite(a, steps=[step(a, "two")])], [deliver, later])
    _, steps, _ = (await stores.runs.load_many([a.id]))[a.id]
    assert set(steps) == {"one", "two"}
    assert await stores.jobs.claim("w", BOTH, 10, 30.0) == []
    stores.clock.advance(60)
    assert [j.kind for j in await stores.jobs.claim("w", BOTH, 10, 30.0)] == ["notify.run"]


async def test_commit_is_all_or_nothing(stores: Stores) -> None:
    a = run()
    await store(stores, [a])
    good = NewJob("notify.deliver", {"message": "m1"})
    bad = NewJob("notify.deliver", {"not json": object()})
    with pytest.raises(FAILED_WRITE):
        await stores.runs.commit(
            [
                RunWrite(
                    dataclasses.replace(a, state=RunState.DONE, outcome="sent"),
                    steps=[step(a, "email")],
                    messages=[message(a, "email")],
                    trail=[entry(a)],
                )
            ],
            [good, bad],
        )
    stored, steps, messages = (await stores.runs.load_many([a.id]))[a.id]
    assert (stored.state, steps, messages) == (RunState.ACTIVE, {}, {})
    assert await stores.runs.trail_for_event("e1", after=0, limit=10) == []
    assert await stores.runs.effects_done([message(a).id], {}) == set()
    assert await stores.jobs.claim("w", BOTH, 10, 30.0) == []


# -- the trail -------------------------------------------------------------------------------


async def test_trail_is_in_order_and_pages_by_cursor(stores: Stores) -> None:
    alice, bob, alice2 = run("e1", "alice"), run("e1", "bob"), run("e2", "alice")
    await store(stores, [alice, bob, alice2])
    m = message(alice)
    await stores.runs.commit(
        [
            RunWrite(alice, messages=[m], trail=[entry(alice, n=1), entry(alice, "step", n=2)]),
            RunWrite(bob, trail=[entry(bob, n=3)]),
        ]
    )
    await stores.runs.commit([RunWrite(alice2, trail=[entry(alice2, n=4)])])
    await update(
        stores.runs,
        m.id,
        status="sent",
        at=2.0,
        trail=[entry(alice, "delivery", 2.0, n=5, ok=True)],
    )
    await stores.runs.commit([RunWrite(bob, trail=[entry(bob, "run", n=6, why=["a", 1])])])

    event = await stores.runs.trail_for_event("e1", after=0, limit=100)
    assert [t.data["n"] for t in event] == [1, 2, 3, 5, 6]
    assert [t.kind for t in event] == ["decision", "step", "decision", "delivery", "run"]
    assert event[3].data == {"n": 5, "ok": True} and event[4].data == {"n": 6, "why": ["a", 1]}
    assert all(0 < x.seq < y.seq for x, y in itertools.pairwise(event))
    assert event[0] == dataclasses.replace(entry(alice, n=1), seq=event[0].seq)
    recipient = await stores.runs.trail_for_recipient("alice", after=0, limit=100)
    assert [t.data["n"] for t in recipient] == [1, 2, 4, 5]

    async def pages(read: Any, key: str) -> list[list[int]]:
        out: list[list[int]] = []
        after = 0
        while page := await read(key, after=after, limit=2):
            out.append([t.data["n"] for t in page])
            after = page[-1].seq
        return out

    assert await pages(stores.runs.trail_for_event, "e1") == [[1, 2], [3, 5], [6]]
    assert await pages(stores.runs.trail_for_recipient, "alice") == [[1, 2], [4, 5]]
    assert await pages(stores.runs.trail_for_recipient, "bob") == [[3, 6]]
    assert await stores.runs.trail_for_event("e3", after=0, limit=10) == []


# -- stages: idempotency, frequency caps, throttles ------------------------------------------


async def test_effects_done_excludes_the_asking_run(stores: Stores) -> None:
    a, b = run("e1", "alice"), run("e1", "bob")
    await store(stores, [a, b])
    await stores.runs.commit(
        [
            RunWrite(a, messages=[message(a, id="k1")]),
            RunWrite(b, messages=[message(b, id="k2")]),
        ]
    )
    keys = ["k1", "k2", "k3"]
    assert await stores.runs.effects_done(keys, {}) == {"k1", "k2"}
    assert await stores.runs.effects_done(keys, {"k1": a.id}) == {"k2"}
    assert await stores.runs.effects_done(keys, {"k1": b.id, "k2": b.id}) == {"k1"}
    assert await stores.runs.effects_done([], {}) == set()


async def test_recent_sends_counts_what_is_on_its_way_or_went_out_after_since(
    stores: Stores,
) -> None:
    t = stores.clock.now()
    runs = [run(f"e{i}", "alice") for i in range(6)] + [run("e9", "bob")]
    await store(stores, runs)
    r0, r1, r2, r3, r4, r5, rb = runs
    queued = message(r4, channel="push", status="queued", release_at=t + 4)
    await stores.runs.commit(
        [
            RunWrite(r0, messages=[message(r0, status="sent", release_at=t + 1)]),
            RunWrite(r1, messages=[message(r1, status="delivered", release_at=t + 2)]),
            RunWrite(r2, messages=[message(r2, status="sent", release_at=t)]),  # not after
            RunWrite(r3, messages=[message(r3, channel="sms", status="failed", release_at=t + 3)]),
            RunWrite(r4, messages=[queued]),
            RunWrite(r5, messages=[message(r5, channel="sms", status="sent", release_at=t + 5)]),
            RunWrite(rb, messages=[message(rb, status="delivered", release_at=t + 6)]),
        ]
    )

    def normal(found: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, list[float]]]:
        return {r: {c: sorted(ts) for c, ts in chans.items()} for r, chans in found.items()}

    found = await stores.runs.recent_sends(["alice", "bob", "carol"], t)
    assert normal(found) == {  # a queued message counts (it is on its way); a failed not
        "alice": {"email": [t + 1, t + 2], "sms": [t + 5], "push": [t + 4]},
        "bob": {"email": [t + 6]},
    }
    found = await stores.runs.recent_sends(["alice"], t + 2)
    assert normal(found) == {"alice": {"sms": [t + 5], "push": [t + 4]}}
    await update(stores.runs, queued.id, status="sent", at=t + 4)
    await update(stores.runs, queued.id, statuses={"read": t + 7}, at=t + 7)
    found = await stores.runs.recent_sends(["alice"], t + 2)
    assert normal(found) == {"alice": {"sms": [t + 5], "push": [t + 4]}}
    assert await stores.runs.recent_sends([], t) == {}


async def test_count_passed_counts_one_throttle_in_since_until(stores: Stores) -> None:
    t = stores.clock.now()
    rows: list[tuple[Run, StepRow]] = []

    def add(event: str, outcome: str, at: float, reason: str = "k1", **kw: Any) -> None:
        r = run(event, kw.pop("recipient", "alice"), kw.pop("workflow", "wf"))
        rows.append(
            (r, step(r, kw.pop("step_id", "throttle"), outcome=outcome, at=at, reason=reason))
        )

    add("e1", "passed", t + 10)
    add("e2", "passed", t + 20)
    add("e3", "passed", t + 30)
    add("e4", "throttled", t + 15)
    add("e5", "passed", t + 20, reason="k2")
    add("e6", "passed", t + 20, recipient="bob")
    add("e7", "passed", t + 20, workflow="other")
    add("e8", "passed", t + 20, step_id="throttle-2")
    await store(stores, [r for r, _ in rows])
    await stores.runs.commit([RunWrite(r, steps=[s]) for r, s in rows])

    async def count(since: float, until: float, key: str = "k1") -> int:
        n: int = await stores.runs.count_passed("wf", "throttle", "alice", key, since, until)
        return n

    assert await count(t, t + 100) == 3
    assert await count(t + 10, t + 30) == 2  # since is excluded, until included
    assert await count(t + 9.5, t + 29.5) == 2
    assert await count(t + 10, t + 20) == 1
    assert await count(t + 30, t + 100) == 0
    assert await count(t, t + 100, key="k2") == 1
    assert await count(t, t + 100, key="k3") == 0


# -- digests ---------------------------------------------------------------------------------


async def test_first_join_leads_and_close_returns_events_oldest_first(stores: Stores) -> None:
    r1, r2, r3 = run("e1"), run("e2"), run("e3")
    join = stores.runs.join_digest
    first = await join("d1", r1.id, "e1", {"n": 1, "tags": ("a", "b")}, "ann", 20.0)
    assert (first.leader, first.closed) == (True, False)
    second = await join("d1", r2.id, "e2", {"n": 2}, None, 10.0)
    assert (second.leader, second.closed) == (False, False)
    again = await join("d1", r1.id, "e1", {"n": "changed"}, "ann", 30.0)  # a retry
    assert (again.leader, again.closed) == (True, False)
    other = await join("d2", r2.id, "e2", {}, None, 10.0)  # digests are independent
    assert other.leader

    events = await stores.runs.close_digest("d1")
    assert events == [
        ("e2", {"n": 2}, 10.0, None),
        ("e1", {"n": 1, "tags": ["a", "b"]}, 20.0, "ann"),
    ]
    assert await stores.runs.close_digest("d1") == events  # closing twice
    late = await join("d1", r3.id, "e3", {"n": 3}, None, 40.0)
    assert (late.leader, late.closed) == (False, True)
    member = await join("d1", r2.id, "e2", {"n": 2}, None, 10.0)  # a member's retried join
    assert (member.leader, member.closed) == (False, False)
    assert await stores.runs.close_digest("d1") == events  # the late run was not added
    assert await stores.runs.close_digest("unknown") == []


async def test_concurrent_joins_elect_one_leader(stores: Stores) -> None:
    joins = await asyncio.gather(
        *(
            stores.runs.join_digest("d", f"r{i}", f"e{i}", {"i": i}, None, float(i))
            for i in range(20)
        )
    )
    assert sum(j.leader for j in joins) == 1
    assert not any(j.closed for j in joins)
    events = await stores.runs.close_digest("d")
    assert [e[0] for e in events] == [f"e{i}" for i in range(20)]


async def test_a_replacing_step_row_takes_the_stored_ones_place(stores: Stores) -> None:
    r = run("e1", workflow="dg")
    await stores.runs.commit([leading(r, "d", 1.0, 60.0)])
    closed = StepRow(r.id, "batch", "digested", 60.0, "2 events", {"n": 2}, replace=True)
    again = StepRow(r.id, "batch", "digest_leader", 1.0, "", {"n": 0})  # a retried first write
    await stores.runs.commit([RunWrite(done(r), steps=[closed])])
    await stores.runs.commit([RunWrite(done(r), steps=[again])])
    [(_, steps, _)] = (await stores.runs.load_many([r.id])).values()
    row = steps["batch"]
    assert (row.outcome, row.at, row.reason, row.result) == ("digested", 60.0, "2 events", {"n": 2})


def wake(run_id: str, lane: Priority, step_id: str, until: float) -> NewJob:
    return NewJob("notify.run", {"run_id": run_id}, lane=lane, run_at=until)


def leading(r: Run, digest: str, at: float, end: float) -> RunWrite:
    """A leader's write: waiting for the window end, its digest step stored."""
    result = {"step_id": "batch", "outcome": "digest_leader", "at": at, "reason": ""}
    result |= {"digest_id": digest, "window_end": end}
    return RunWrite(
        dataclasses.replace(r, state=RunState.WAITING, wake_at=end),
        steps=[StepRow(r.id, "batch", "digest_leader", at, "", result)],
    )


def merged(r: Run, digest: str, at: float, end: float) -> RunWrite:
    result = {"step_id": "batch", "outcome": "digest_member", "at": at, "reason": ""}
    result |= {"digest_id": digest, "window_end": end}
    return RunWrite(
        done(r, "merged"), steps=[StepRow(r.id, "batch", "digest_member", at, "", result)]
    )


async def test_cancelling_a_digest_leaders_event_hands_the_digest_to_the_earliest_member(
    stores: Stores,
) -> None:
    t = stores.clock.now()
    end = t + 3600
    leader, first, second = (run(e, workflow="dg") for e in ("e1", "e2", "e3"))
    await stores.runs.join_digest("d", leader.id, "e1", {"n": 1}, None, t)
    await stores.runs.join_digest("d", second.id, "e3", {"n": 3}, None, t + 2)
    await stores.runs.join_digest("d", first.id, "e2", {"n": 2}, "bob", t + 1)
    # the second member's run is still being written: its join is all that is stored
    await stores.runs.commit([leading(leader, "d", t, end), merged(first, "d", t + 1, end)])
    assert await stores.runs.cancel_runs("e1", t + 5, "event cancelled", wake) == 1

    heir = (await stores.runs.get_runs([first.id]))[first.id]
    assert (heir.state, heir.outcome, heir.wake_at) == (RunState.WAITING, None, end)
    [(_, steps, _)] = (await stores.runs.load_many([first.id])).values()
    row = steps["batch"]
    assert (row.outcome, row.at, row.result["outcome"]) == ("digest_leader", t + 1, "digest_leader")
    assert row.result["window_end"] == end and "e1" in row.reason
    [entry] = await stores.runs.trail_for_recipients("e2", ["alice"])
    assert (entry.run_id, entry.kind, entry.step_id) == (first.id, "run", "batch")
    assert entry.data["until"] == end
    stores.clock.advance(3600)
    [job] = await stores.jobs.claim("w", BOTH, 10, 30.0)
    assert (job.kind, job.payload) == ("notify.run", {"run_id": first.id})

    again = await stores.runs.join_digest("d", first.id, "e2", {"n": 2}, "bob", t + 1)
    assert (again.leader, again.closed) == (True, False)  # its retried join leads
    assert await stores.runs.close_digest("d") == [
        ("e2", {"n": 2}, t + 1, "bob"),
        ("e3", {"n": 3}, t + 2, None),
    ]


async def test_a_digest_handed_to_a_run_not_written_yet_is_found_in_its_step_row(
    stores: Stores,
) -> None:
    t = stores.clock.now()
    leader, member = run("e1", workflow="dg"), run("e2", workflow="dg")
    await stores.runs.join_digest("d", leader.id, "e1", {}, None, t)
    await stores.runs.join_digest("d", member.id, "e2", {}, None, t + 1)
    await stores.runs.commit([leading(leader, "d", t, t + 60)])
    assert await stores.runs.cancel_runs("e1", t + 5, "event cancelled", wake) == 1
    assert await stores.runs.get_runs([member.id]) == {}  # nothing to move
    # its write lands now, as a member: the step row the cancel stored stays
    await stores.runs.commit([merged(member, "d", t + 1, t + 60)])
    [(stored, steps, _)] = (await stores.runs.load_many([member.id])).values()
    assert (stored.state, stored.outcome) == (RunState.DONE, "merged")
    assert steps["batch"].outcome == "digest_leader"


async def test_a_cancelled_event_leaves_open_digests_only_and_an_emptied_one_goes(
    stores: Stores,
) -> None:
    t = stores.clock.now()
    a, b, c = (run(e, workflow="dg") for e in ("e1", "e2", "e3"))
    await stores.runs.join_digest("open", a.id, "e1", {}, None, t)
    await stores.runs.join_digest("open", b.id, "e2", {}, None, t + 1)
    await stores.runs.join_digest("shut", c.id, "e3", {}, None, t)
    await stores.runs.join_digest("shut", b.id, "e2", {}, None, t + 1)
    await stores.runs.commit([leading(a, "open", t, t + 60), merged(b, "open", t + 1, t + 60)])
    assert len(await stores.runs.close_digest("shut")) == 2
    assert await stores.runs.cancel_runs("e2", t + 5, "event cancelled", wake) == 0
    assert [e[0] for e in await stores.runs.close_digest("shut")] == ["e3", "e2"]  # history
    assert await stores.runs.cancel_runs("e1", t + 6, "event cancelled", wake) == 1
    # no row left: the digest is gone, and the window's next join leads afresh
    fresh = await stores.runs.join_digest("open", c.id, "e3", {}, None, t + 7)
    assert (fresh.leader, fresh.closed) == (True, False)
    assert [e[0] for e in await stores.runs.close_digest("open")] == ["e3"]
    assert await stores.jobs.claim("w", BOTH, 10, 30.0) == []


# -- messages --------------------------------------------------------------------------------


async def test_updating_a_message_merges_statuses_and_writes_together(stores: Stores) -> None:
    t = stores.clock.now()
    a = run()
    await store(stores, [a])
    m = message(a, at=t, statuses={"queued": t})
    await stores.runs.commit([RunWrite(a, messages=[m])])
    wake = NewJob("notify.run", {"run": a.id}, dedupe_key="wake:a:sent")
    sent = await update(
        stores.runs,
        m.id,
        status="sent",
        statuses={"sent": t + 5},
        provider="smtp",
        provider_id="p-1",
        attempts=1,
        at=t + 5,
        trail=[entry(a, "delivery", t + 5, status="sent")],
        jobs=[wake],
    )
    assert sent == dataclasses.replace(
        m,
        status="sent",
        statuses={"queued": t, "sent": t + 5},
        provider="smtp",
        provider_id="p-1",
        attempts=1,
        updated_at=t + 5,
    )
    later = await update(
        stores.runs, m.id, statuses={"sent": t + 9, "delivered": t + 3, "read": t + 9}, at=t + 9
    )
    assert later is not None
    assert later.statuses == {"queued": t, "sent": t + 5, "delivered": t + 3, "read": t + 9}
    assert (later.status, later.provider, later.attempts, later.error) == ("sent", "smtp", 1, None)
    assert later.updated_at == t + 9
    failed = await update(stores.runs, m.id, status="failed", error="bounce", at=t + 10)
    assert failed is not None and (failed.status, failed.error) == ("failed", "bounce")
    assert await stores.runs.message(m.id) == failed
    trail = await stores.runs.trail_for_event("e1", after=0, limit=10)
    assert [x.data for x in trail] == [{"status": "sent"}]
    stores.clock.advance(5)  # the job is due from the report's instant
    [job] = await stores.jobs.claim("w", BOTH, 10, 30.0)
    assert (job.kind, job.payload) == ("notify.run", {"run": a.id})
    # The same report again: its job's key is taken, the rest is written.
    await update(stores.runs, m.id, statuses={"sent": t + 20}, at=t + 20, jobs=[wake])
    assert await stores.jobs.claim("w", BOTH, 10, 30.0) == []


async def test_updating_a_message_of_an_unknown_message_writes_nothing(stores: Stores) -> None:
    a = run()
    found = await update(
        stores.runs,
        "missing",
        status="sent",
        at=1.0,
        trail=[entry(a)],
        jobs=[NewJob("notify.run", {})],
    )
    assert found is None
    assert await stores.runs.message("missing") is None
    assert await stores.runs.trail_for_event("e1", after=0, limit=10) == []
    assert await stores.jobs.claim("w", BOTH, 10, 30.0) == []


async def test_updating_a_message_is_all_or_nothing(stores: Stores) -> None:
    a = run()
    await store(stores, [a])
    m = message(a, statuses={"queued": 1.0})
    await stores.runs.commit([RunWrite(a, messages=[m])])
    with pytest.raises(FAILED_WRITE):
        await update(
            stores.runs,
            m.id,
            status="sent",
            statuses={"sent": 2.0},
            at=2.0,
            trail=[entry(a)],
            jobs=[NewJob("notify.run", {}), NewJob("notify.run", {"x": object()})],
        )
    assert await stores.runs.message(m.id) == m
    assert await stores.runs.trail_for_event("e1", after=0, limit=10) == []
    assert await stores.jobs.claim("w", BOTH, 10, 30.0) == []


async def test_update_messages_applies_each_update_in_one_write(stores: Stores) -> None:
    t = stores.clock.now()
    a, b = run("e1", "alice"), run("e1", "bob")
    await store(stores, [a, b])
    ma, mb = message(a, at=t, statuses={"queued": t}), message(b, at=t, statuses={"queued": t})
    await stores.runs.commit([RunWrite(a, messages=[ma]), RunWrite(b, messages=[mb])])
    assert await stores.runs.messages([mb.id, "missing", ma.id]) == {ma.id: ma, mb.id: mb}
    retry = NewJob("notify.deliver", {"message_id": mb.id}, run_at=t + 30, attempts=1)
    written = await stores.runs.update_messages(
        [
            MessageUpdate(
                ma.id,
                status="sent",
                statuses={"sent": t + 5},
                provider="smtp",
                provider_id="p-1",
                attempts=1,
                trail=[entry(a, "delivery", t + 5, status="sent")],
            ),
            MessageUpdate(
                "missing",
                status="sent",
                trail=[entry(a, "delivery", t + 5, status="lost")],
                jobs=[NewJob("notify.run", {"lost": True})],
            ),
            MessageUpdate(
                mb.id,
                error="451 later",
                attempts=1,
                trail=[entry(b, "delivery", t + 5, status="retrying")],
                jobs=[retry],
            ),
            # a second update of one message applies to the first's result
            MessageUpdate(ma.id, statuses={"sent": t + 9, "read": t + 9}),
        ],
        at=t + 5,
    )
    sent = dataclasses.replace(
        ma,
        status="sent",
        statuses={"queued": t, "sent": t + 5},
        provider="smtp",
        provider_id="p-1",
        attempts=1,
        updated_at=t + 5,
    )
    read = dataclasses.replace(sent, statuses={"queued": t, "sent": t + 5, "read": t + 9})
    later = dataclasses.replace(mb, error="451 later", attempts=1, updated_at=t + 5)
    assert written == [sent, later, read]
    assert await stores.runs.messages([ma.id, mb.id]) == {ma.id: read, mb.id: later}
    trail = await stores.runs.trail_for_event("e1", after=0, limit=10)
    assert [(x.recipient, x.data) for x in trail] == [
        ("alice", {"status": "sent"}),
        ("bob", {"status": "retrying"}),
    ]
    stores.clock.advance(30)
    [job] = await stores.jobs.claim("w", BOTH, 10, 30.0)  # the unknown message's job is not
    assert (job.kind, job.payload, job.attempts) == ("notify.deliver", {"message_id": mb.id}, 2)


async def test_update_messages_is_all_or_nothing(stores: Stores) -> None:
    a, b = run("e1", "alice"), run("e1", "bob")
    await store(stores, [a, b])
    ma, mb = message(a), message(b)
    await stores.runs.commit([RunWrite(a, messages=[ma]), RunWrite(b, messages=[mb])])
    with pytest.raises(FAILED_WRITE):
        await stores.runs.update_messages(
            [
                MessageUpdate(ma.id, status="sent", trail=[entry(a)]),
                MessageUpdate(mb.id, status="sent", jobs=[NewJob("notify.run", {"x": object()})]),
            ],
            at=2.0,
        )
    assert await stores.runs.messages([ma.id, mb.id]) == {ma.id: ma, mb.id: mb}
    assert await stores.runs.trail_for_event("e1", after=0, limit=10) == []


async def test_messages_list_by_run_and_newest_first_by_recipient(stores: Stores) -> None:
    runs = [run(f"e{i}", "alice", at=float(i)) for i in (1, 2, 3)]
    bob = run("e1", "bob", at=1.0)
    await store(stores, [*runs, bob])
    mine = [message(r, at=r.created_at) for r in runs]
    sms = message(runs[0], "sms", channel="sms", at=5.0)
    theirs = message(bob, at=0.5)
    await stores.runs.commit(
        [RunWrite(r, messages=[m]) for r, m in zip(runs, mine, strict=True)]
        + [RunWrite(runs[0], messages=[sms]), RunWrite(bob, messages=[theirs])]
    )
    newest = await stores.runs.messages_for_recipient("alice", before=None, limit=10)
    assert newest == [sms, mine[2], mine[1], mine[0]]
    assert await stores.runs.messages_for_recipient("alice", before=None, limit=2) == [
        sms,
        mine[2],
    ]
    assert await stores.runs.messages_for_recipient("alice", before=3.0, limit=10) == [
        mine[1],
        mine[0],
    ]
    assert await stores.runs.messages_for_recipient("alice", before=1.0, limit=10) == []
    assert await stores.runs.messages_for_recipient("carol", before=None, limit=10) == []
    assert await stores.runs.messages_for_runs([runs[0].id, bob.id]) == [theirs, mine[0], sms]
    assert await stores.runs.messages_for_runs(["nope"]) == []


# -- workflows -------------------------------------------------------------------------------


async def test_workflow_put_bumps_the_revision(stores: Stores) -> None:
    store = stores.workflows
    definition = {"steps": [{"id": "email", "channel": "email"}], "critical": False}
    first = await store.put("welcome", definition, 10.0)
    assert (first.key, first.definition, first.revision, first.source, first.updated_at) == (
        "welcome",
        definition,
        1,
        "api",
        10.0,
    )
    changed = {"steps": [], "critical": True}
    second = await store.put("welcome", changed, 20.0)
    assert (second.revision, second.definition, second.updated_at) == (2, changed, 20.0)
    assert await store.get("welcome") == second
    assert await store.get("missing") is None


async def test_workflows_list_by_key_and_delete(stores: Stores) -> None:
    store = stores.workflows
    assert await store.all() == []
    b = await store.put("b-flow", {"steps": []}, 1.0)
    a = await store.put("a-flow", {"steps": [{"id": "x"}]}, 2.0)
    assert await store.all() == [a, b]
    assert await store.delete("a-flow") is True
    assert await store.delete("a-flow") is False
    assert await store.get("a-flow") is None
    assert await store.all() == [b]
    again = await store.put("a-flow", {"steps": []}, 3.0)
    assert again.revision == 1  # a new workflow under an old key


async def test_concurrent_puts_each_bump_the_revision(stores: Stores) -> None:
    store = stores.workflows
    records = await asyncio.gather(*(store.put("w", {"n": i}, float(i)) for i in range(5)))
    assert sorted(r.revision for r in records) == [1, 2, 3, 4, 5]
    stored = await store.get("w")
    assert stored is not None and stored.revision == 5


# -- retention -------------------------------------------------------------------------------

DAY = 86400.0


def done(r: Run, outcome: str = "completed") -> Run:
    return dataclasses.replace(r, state=RunState.DONE, outcome=outcome)


async def test_prune_deletes_old_done_runs_with_everything_recorded_about_them(
    stores: Stores,
) -> None:
    t = stores.clock.now()
    old, waiting, recent = run("e1", "alice"), run("e1", "bob"), run("e2", "alice")
    old_message = message(old, status="sent", at=t)
    assert (await stores.runs.join_digest("d1", old.id, "e1", {"n": 1}, None, t)).leader
    await stores.runs.close_digest("d1")
    await stores.runs.commit(
        [
            RunWrite(
                done(old),
                steps=[step(old, "throttle", at=t, reason="k"), step(old, "email", at=t)],
                messages=[old_message],
                trail=[entry(old, n=1), entry(old, "run", n=2)],
            ),
            RunWrite(
                dataclasses.replace(waiting, state=RunState.WAITING, wake_at=t + 99 * DAY),
                steps=[step(waiting, "throttle", at=t, reason="k")],
                messages=[message(waiting, status="sent", at=t)],
                trail=[entry(waiting, n=3)],
            ),
        ]
    )
    stores.clock.advance(10 * DAY)
    now = stores.clock.now()
    await stores.runs.commit(
        [
            RunWrite(
                done(recent),
                steps=[step(recent, "email", at=now)],
                messages=[message(recent, status="sent", at=now)],
                trail=[entry(recent, n=4)],
            )
        ]
    )

    assert await stores.runs.prune(t + 5 * DAY, 100) == 1
    assert await stores.runs.prune(t + 5 * DAY, 100) == 0
    runs = stores.runs
    assert set(await runs.get_runs([old.id, waiting.id, recent.id])) == {waiting.id, recent.id}
    assert await runs.load_many([old.id]) == {}
    assert await runs.count_runs("e1") == {RunState.WAITING: 1}
    # Its messages, step rows and trail went with it ...
    assert await runs.message(old_message.id) is None
    assert await runs.messages_for_runs([old.id]) == []
    assert await runs.effects_done([old_message.id], {}) == set()
    alice = await runs.messages_for_recipient("alice", before=None, limit=10)
    assert [m.run_id for m in alice] == [recent.id]
    assert await runs.count_passed("wf", "throttle", "alice", "k", t - 1, t + 1) == 0
    assert [x.data["n"] for x in await runs.trail_for_event("e1", after=0, limit=10)] == [3]
    assert [x.data["n"] for x in await runs.trail_for_recipient("alice", after=0, limit=10)] == [4]
    assert await runs.trail_for_recipients("e1", ["alice"]) == []
    # ... and so did its closed digest: a join to that id leads a new one.
    again = await runs.join_digest("d1", "r-late", "e9", {}, None, now)
    assert (again.leader, again.closed) == (True, False)
    # The waiting run and the recent one keep everything.
    _, steps, messages = (await runs.load_many([waiting.id]))[waiting.id]
    assert (set(steps), set(messages)) == ({"throttle"}, {"email"})
    assert await runs.count_passed("wf", "throttle", "bob", "k", t - 1, t + 1) == 1
    _, steps, messages = (await runs.load_many([recent.id]))[recent.id]
    assert (set(steps), set(messages)) == ({"email"}, {"email"})
    # However old a waiting run grows, it stays.
    stores.clock.advance(365 * DAY)
    assert await runs.prune(stores.clock.now(), 100) == 1  # the recent one, now old
    assert set(await runs.get_runs([waiting.id, recent.id])) == {waiting.id}


async def test_prune_deletes_at_most_limit_runs_oldest_first(stores: Stores) -> None:
    runs = [run(f"e{i}", "alice") for i in range(5)]
    for r in reversed(runs):  # e4 is written first: the oldest
        await stores.runs.commit(
            [RunWrite(done(r), messages=[message(r, status="sent")], trail=[entry(r)])]
        )
        stores.clock.advance(60)
    before = stores.clock.now()
    ids = [r.id for r in runs]
    assert await stores.runs.prune(before, 2) == 2
    assert set(await stores.runs.get_runs(ids)) == set(ids[:3])
    assert await stores.runs.prune(before, 2) == 2
    assert set(await stores.runs.get_runs(ids)) == {ids[0]}
    assert await stores.runs.prune(before, 2) == 1
    assert await stores.runs.prune(before, 2) == 0
    assert await stores.runs.messages_for_runs(ids) == []
    assert await stores.runs.trail_for_recipient("alice", after=0, limit=10) == []


async def test_prune_keeps_done_runs_with_a_message_or_a_digest_still_to_go(
    stores: Stores,
) -> None:
    t = stores.clock.now()
    runs = stores.runs
    leader, member, held = run("e1", workflow="dg"), run("e2", workflow="dg"), run("e3")
    assert (await runs.join_digest("d", leader.id, "e1", {"n": 1}, None, t)).leader
    assert not (await runs.join_digest("d", member.id, "e2", {"n": 2}, None, t)).leader
    held_message = message(held, status="queued", release_at=t + 20 * DAY)
    await runs.commit(
        [
            RunWrite(dataclasses.replace(leader, state=RunState.WAITING, wake_at=t + 20 * DAY)),
            RunWrite(done(member, "merged")),
            RunWrite(done(held), messages=[held_message]),
        ]
    )
    stores.clock.advance(10 * DAY)
    cutoff = stores.clock.now()
    assert await runs.prune(cutoff, 100) == 0
    # The window ends: the digest closes and its leader is done (recently). The member goes.
    assert [e[0] for e in await runs.close_digest("d")] == ["e1", "e2"]
    await runs.commit([RunWrite(done(leader))])
    assert await runs.prune(cutoff, 100) == 1
    assert set(await runs.get_runs([leader.id, member.id, held.id])) == {leader.id, held.id}
    assert [e[0] for e in await runs.close_digest("d")] == ["e1"]
    # The held message went out: its run goes.
    await update(runs, held_message.id, status="sent", at=cutoff)
    assert await runs.prune(cutoff, 100) == 1
    assert await runs.message(held_message.id) is None
    # The leader grows old: it goes, and the digest with it.
    stores.clock.advance(10 * DAY)
    assert await runs.prune(stores.clock.now(), 100) == 1
    assert await runs.get_runs([leader.id]) == {}
    assert (await runs.join_digest("d", "r-late", "e9", {}, None, t)).leader


async def test_an_open_digest_whose_leader_ended_keeps_no_member(stores: Stores) -> None:
    t = stores.clock.now()
    leader, member = run("e1", workflow="dg"), run("e2", workflow="dg")
    await stores.runs.join_digest("d", leader.id, "e1", {}, None, t)
    await stores.runs.join_digest("d", member.id, "e2", {}, None, t)
    await stores.runs.commit(
        [
            RunWrite(dataclasses.replace(leader, state=RunState.WAITING, wake_at=t + DAY)),
            RunWrite(done(member, "merged")),
        ]
    )
    assert await stores.runs.cancel_runs("e1", t, "event cancelled", wake) == 1  # never closes
    stores.clock.advance(10 * DAY)
    assert await stores.runs.prune(stores.clock.now(), 100) == 2
    assert await stores.runs.get_runs([leader.id, member.id]) == {}


async def test_exclusive_keys_are_held_across_stores_on_postgresql(stores: Stores) -> None:
    """Two stores on one database (two processes): a key held by one waits the other until
    released; other keys go on; a block that raises releases its keys. SQLite and memory
    lock nothing (one process runs the workers)."""
    if stores.backend != "postgres":
        async with stores.runs.exclusive(["a"]), stores.runs.exclusive(["a"]):
            return  # re-entrant: nothing is held
    other = SqlRunStore(stores.engine(), stores.clock)
    order: list[str] = []

    async def second(keys: list[str], name: str) -> None:
        async with other.exclusive(keys):
            order.append(name)

    async with stores.runs.exclusive(["recipient:a", "recipient:b"]):
        blocked = asyncio.create_task(second(["recipient:b", "recipient:z"], "b"))
        await second(["recipient:c"], "c")  # not held: goes on at once
        await asyncio.sleep(0.2)
        assert order == ["c"] and not blocked.done()
        order.append("released")
    await asyncio.wait_for(blocked, 5)
    assert order == ["c", "released", "b"]
    with pytest.raises(RuntimeError):
        async with stores.runs.exclusive(["run:r1"]):
            raise RuntimeError("the block failed")
    await asyncio.wait_for(second(["run:r1"], "after"), 5)  # released all the same
    # a holder cancelled while it waits for a lock leaves none behind
    async with stores.runs.exclusive(["recipient:q"]):
        waiting = asyncio.create_task(second(["recipient:p", "recipient:q"], "cancelled"))
        await asyncio.sleep(0.2)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    await asyncio.wait_for(second(["recipient:p", "recipient:q"], "free"), 5)
    assert order[-1] == "free" and "cancelled" not in order
