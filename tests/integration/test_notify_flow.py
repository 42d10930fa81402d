"""The notification orchestrator end to end on the embedded runtime (SQLite, memory broker)
with a controllable clock, a real SMTP server (aiosmtpd) and real webhook receivers: fanout,
decisions and their trail, escalation, digests, quiet hours, retries, dead letters, replay."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email
import email.policy
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.api.conftest import make_settings
from tests.integration.test_smtp_delivery import Server, Sink, free_port
from tidings.adapters.clock import ManualClock
from tidings.adapters.sql.tables import jobs
from tidings.config import (
    FrequencyCapSettings,
    NotifySettings,
    ProviderSettings,
    RateLimitSettings,
    SmtpSettings,
    WorkerSettings,
)
from tidings.core.notify import Preferences, WorkflowPreference, parse_quiet_hours
from tidings.core.notify.types import Channel
from tidings.core.subscribers import Device, Platform
from tidings.errors import Conflict, InvalidInput
from tidings.ports.inbox import Mark
from tidings.ports.notify import Run, RunState, RunWrite, StepRow
from tidings.ports.subscribers import Subscriber, Topic
from tidings.services.ingest import EventInput
from tidings.services.notify import run_id
from tidings.types import Job, JobState, Priority
from tidings.wiring import Runtime, build_runtime, migrate, notify_config

WORKFLOWS = """
workflows:
  - key: comment.created
    steps:
      - id: inapp
        type: in_app
        content:
          title: "{{ payload.author }} commented"
          body: "{{ payload.text }}"
      - id: email
        type: email
        content:
          subject: "New comment from {{ payload.author }}"
          text: "{{ payload.text }}"
        wait_for: {step: inapp, status: seen, timeout: 10m}
  - key: likes
    steps:
      - {id: batch, type: digest, window: 1h}
      - id: inapp
        type: in_app
        content:
          title: "{{ digest.count }} likes"
          body: "first: event {{ digest.events[0].payload.n }}"
  - key: news
    steps:
      - id: email
        type: email
        content: {subject: "News", text: "{{ payload.text }}"}
  - key: morning
    steps:
      - {id: wait, type: delay, at_local: "09:00"}
      - id: inapp
        type: in_app
        content: {title: "Good morning", body: "{{ payload.text }}"}
  - key: shipped
    steps:
      - {id: inapp, type: in_app, template: shipped}
  - key: ping
    steps:
      - id: push
        type: push
        content: {title: "Ping", body: "{{ payload.text }}"}
  - key: thread.reply
    steps:
      - {id: calm, type: throttle, limit: 2, window: 1h, key: payload.thread}
      - id: inapp
        type: in_app
        content: {title: "Reply", body: "{{ payload.text }}"}
  - key: alert
    critical: true
    steps:
      - id: email
        type: email
        content: {subject: "Alert", text: "now"}
"""


@dataclass
class Env:
    runtime: Runtime
    clock: ManualClock
    smtp: Sink

    async def drain(self, rounds: int = 100) -> int:
        """Run due jobs until none is left; returns how many ran."""
        total = 0
        pool = self.runtime.pools[-1]
        for _ in range(rounds):
            ran = await pool.run_once(500)
            total += ran
            if not ran:
                return total
        raise AssertionError("jobs keep coming")

    async def send(self, type_: str, **kwargs: Any) -> str:
        result = await self.runtime.services.ingest.ingest(
            EventInput(type=type_, payload=kwargs.pop("payload", {}), **kwargs)
        )
        return result.event.id

    async def subscriber(self, sid: str, **fields: Any) -> None:
        await self.runtime.services.subscribers.store.put(Subscriber(id=sid, **fields))

    @property
    def notify(self) -> Any:
        return self.runtime.services.notify

    async def report(self, event_id: str) -> dict[str, Any]:
        report: dict[str, Any] = await self.notify.event_report(event_id)
        return report

    def mails(self) -> list[email.message.EmailMessage]:
        return [
            email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[misc]
            for _, _, raw in self.smtp.messages
        ]


@contextlib.asynccontextmanager
async def open_env(tmp_path: Path, attempts: int = 3, **overrides: Any) -> AsyncIterator[Env]:
    """A runtime on SQLite with this module's workflows, a real SMTP sink, a manual clock
    and no worker loops (tests run the jobs); `overrides` go to the settings."""
    (tmp_path / "workflows.yaml").write_text(WORKFLOWS)
    sink = Sink()
    server = Server(sink, free_port())
    server.start()
    clock = ManualClock()
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path}/notify.db",
        smtp=SmtpSettings(host="127.0.0.1", port=server.port),
        notify=NotifySettings(
            workflows=[str(tmp_path / "workflows.yaml")], delivery_attempts=attempts
        ),
        **overrides,
    )
    settings.worker = WorkerSettings(enabled=False, lease_seconds=30.0)
    migrate(settings)
    runtime = build_runtime(settings, clock=clock)
    await runtime.start()
    try:
        yield Env(runtime, clock, sink)
    finally:
        await runtime.stop()
        server.stop()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with open_env(tmp_path) as found:
        yield found


def decisions(report: dict[str, Any], recipient: str, step: str) -> list[tuple[str, str, str]]:
    """The decisions recorded for `step` of `recipient`'s run, in order."""
    return [
        (d["stage"], d["kind"], d["reason"])
        for t in report["trail"]
        if t["type"] == "step" and t["recipient"] == recipient and t["step"] == step
        for d in t.get("decisions", ())
    ]


async def test_topic_and_ids_fan_out_once_each_with_a_trail(env: Env) -> None:
    for sid in ("ann", "bob", "cy"):
        await env.subscriber(sid, email=f"{sid}@example.com")
    await env.runtime.services.subscribers.topics.create(Topic("team", "Team"))
    await env.runtime.services.subscribers.topics.add_members("team", ["bob", "cy"], 0.0)
    event_id = await env.send(
        "comment.created",
        recipients=("ann", "bob"),
        topic="team",
        payload={"author": "Dee", "text": "Nice <b>work</b>"},
    )
    await env.drain()
    inbox = env.runtime.services.inbox.store
    for sid in ("ann", "bob", "cy"):
        [item] = await inbox.feed(sid, limit=10)
        assert item.title == "Dee commented"
        assert item.body == "Nice <b>work</b>"  # in-app text is not HTML-escaped
        assert item.event_id == event_id and item.step == "inapp"
    report = await env.report(event_id)
    assert sorted(r["recipient"] for r in report["runs"]) == ["ann", "bob", "cy"]
    assert decisions(report, "ann", "inapp") == [
        ("preferences", "send", "allowed"),
        ("address", "send", "reachable"),
        ("schedule", "send", "in_send_time"),
        ("frequency_cap", "send", "under_cap"),
        ("suppression", "send", "not_suppressed"),
        ("idempotency", "send", "first_effect"),
    ]
    inapp = [m for m in report["messages"] if m["channel"] == "in_app"]
    assert {m["status"] for m in inapp} == {"delivered"}
    # every run now waits for its in-app message to be seen before the email
    assert {r["state"] for r in report["runs"]} == {"waiting"}
    assert env.smtp.messages == []
    record = await env.runtime.services.ingest.get(event_id)
    assert record is not None
    assert any(o.kind == "notify" and o.status == "fanned_out" for o in record.outcomes)


async def test_escalation_sends_email_only_to_whom_did_not_see_in_app(env: Env) -> None:
    await env.subscriber("ann", email="ann@example.com")
    await env.subscriber("bob", email="bob@example.com")
    event_id = await env.send(
        "comment.created", recipients=("ann", "bob"), payload={"author": "Dee", "text": "hi"}
    )
    await env.drain()
    env.clock.advance(120)
    [item] = await env.runtime.services.inbox.store.feed("ann", limit=1)
    await env.runtime.services.inbox.mark_one("ann", item.id, Mark.SEEN)
    assert await env.drain() == 1  # the mark woke ann's run: it ends without the email
    env.clock.advance(7 * 60)
    assert await env.drain() == 0  # nothing is due before the deadline (10 min after send)
    env.clock.advance(61)
    await env.drain()
    mails = env.mails()
    assert [m["To"] for m in mails] == ["bob@example.com"]
    assert mails[0]["Subject"] == "New comment from Dee"
    report = await env.report(event_id)
    [ann_email] = [
        t
        for t in report["trail"]
        if t["recipient"] == "ann" and t["step"] == "email" and t["type"] == "step"
    ]
    assert ann_email["outcome"] == "not_needed"
    assert ann_email["reason"] == "inapp_seen"
    bob_mail = [
        m for m in report["messages"] if m["recipient"] == "bob" and m["channel"] == "email"
    ]
    assert bob_mail[0]["status"] == "sent"
    assert bob_mail[0]["template_version"].startswith("inline-")
    assert {r["state"] for r in report["runs"]} == {"done"}


async def test_two_wakes_of_one_run_at_once_advance_it_once(env: Env) -> None:
    """Seen, then read at once: two wake jobs, claimed together and run at the same time;
    the second advances the run as the first left it (one trail entry for the email step)."""
    await env.subscriber("ann", email="ann@example.com")
    event_id = await env.send(
        "comment.created", recipients=("ann",), payload={"author": "Dee", "text": "hi"}
    )
    await env.drain()
    [item] = await env.runtime.services.inbox.store.feed("ann", limit=1)
    await env.notify.report(item.id, "seen")
    await env.notify.report(item.id, "read")
    pool = env.runtime.pools[-1]
    wakes = [j for j in await pool.claim(10) if j.kind == "notify.run"]
    assert len(wakes) == 2
    # statements on the connections' threads, as on PostgreSQL: each read lets the other
    # job in (on the loop's thread they would not interleave)
    pool._inline = False
    await asyncio.gather(*(pool.execute(j) for j in wakes))
    report = await env.report(event_id)
    emails = [t for t in report["trail"] if t["step"] == "email" and t["type"] == "step"]
    assert [(t["outcome"], t["reason"]) for t in emails] == [("not_needed", "inapp_seen")]
    assert {r["state"] for r in report["runs"]} == {"done"}
    assert len(env.notify._run_locks) == 0  # none kept once released


async def test_preferences_quiet_hours_and_missing_address_are_recorded(env: Env) -> None:
    await env.subscriber("optout", email="o@example.com")
    await env.subscriber("night", email="n@example.com", timezone="Asia/Tokyo")
    await env.subscriber("noaddr")
    prefs = env.notify.preferences
    await prefs.put(
        "optout",
        Preferences(workflows={"news": WorkflowPreference(channels={Channel.EMAIL: False})}),
        0.0,
    )
    # 1_700_000_000 is 07:13 on a Wednesday in Tokyo: quiet until 09:00 local
    await prefs.put(
        "night",
        Preferences(
            quiet_hours=(
                parse_quiet_hours({"start": "22:00", "end": "09:00", "channels": ["email"]}),
            )
        ),
        0.0,
    )
    event_id = await env.send(
        "news", recipients=("optout", "night", "noaddr"), payload={"text": "t"}
    )
    await env.drain()
    report = await env.report(event_id)
    assert decisions(report, "optout", "email")[-1] == (
        "preferences",
        "suppress",
        "channel_opt_out",
    )
    assert decisions(report, "noaddr", "email")[-1] == ("address", "fail", "no_address")
    held = decisions(report, "night", "email")[-1]
    assert held == ("schedule", "hold", "quiet_hours")
    assert env.smtp.messages == []  # held, never dropped
    env.clock.advance(106 * 60)  # 08:59 Tokyo
    await env.drain()
    assert env.smtp.messages == []
    env.clock.advance(2 * 60)
    await env.drain()
    assert [m["To"] for m in env.mails()] == ["n@example.com"]


async def test_critical_workflow_overrides_opt_out(env: Env) -> None:
    await env.subscriber("ann", email="ann@example.com")
    await env.notify.preferences.put("ann", Preferences(enabled=False), 0.0)
    await env.send("alert", recipients=("ann",))
    await env.drain()
    assert [m["To"] for m in env.mails()] == ["ann@example.com"]


async def test_digest_window_gives_exactly_one_digest_under_concurrent_events(env: Env) -> None:
    await env.subscriber("ann")
    ids = await asyncio.gather(
        *(env.send("likes", recipients=("ann",), payload={"n": i}) for i in range(8))
    )
    pool = env.runtime.pools[-1]
    # run the batch jobs concurrently: every run races for the digest
    jobs = await pool.claim(100)
    await asyncio.gather(*(pool.execute(j) for j in jobs))
    await env.drain()
    assert await env.runtime.services.inbox.store.feed("ann", limit=10) == []
    env.clock.advance(3600)
    await env.drain()
    items = await env.runtime.services.inbox.store.feed("ann", limit=10)
    assert [i.title for i in items] == ["8 likes"]
    assert items[0].body.startswith("first: event ")
    outcomes = []
    for event_id in ids:
        report = await env.report(event_id)
        outcomes.extend(r["outcome"] for r in report["runs"])
    assert sorted(outcomes) == ["completed"] + ["merged"] * 7


async def likes(env: Env, *ns: int, step: float = 60.0) -> list[str]:
    """One `likes` event for ann per number, each run to its digest join, `step` s apart."""
    ids = []
    for n in ns:
        ids.append(await env.send("likes", recipients=("ann",), payload={"n": n}))
        await env.drain()
        env.clock.advance(step)
    return ids


async def digest_titles(env: Env) -> list[tuple[str, str]]:
    items = await env.runtime.services.inbox.store.feed("ann", limit=10)
    return [(i.title, i.body) for i in items]


async def run_outcomes(env: Env, event_ids: list[str]) -> list[tuple[str, str]]:
    found = []
    for event_id in event_ids:
        [r] = (await env.report(event_id))["runs"]
        found.append((r["state"], r["outcome"]))
    return found


async def test_cancelling_the_digest_leaders_event_hands_the_digest_to_the_next_event(
    env: Env,
) -> None:
    await env.subscriber("ann")
    ids = await likes(env, 0, 1, 2)
    await env.runtime.services.ingest.cancel(ids[0])
    # the next event's run leads now, waiting for the same window end
    assert await run_outcomes(env, ids) == [
        ("done", "cancelled"),
        ("waiting", None),
        ("done", "merged"),
    ]
    trail = (await env.report(ids[1]))["trail"]
    handover = [t for t in trail if t["type"] == "run" and t.get("state") == "waiting"]
    assert len(handover) == 1 and ids[0] in handover[0]["reason"]
    env.clock.advance(3600)
    await env.drain()
    assert await digest_titles(env) == [("2 likes", "first: event 1")]
    assert await run_outcomes(env, ids) == [
        ("done", "cancelled"),
        ("done", "completed"),
        ("done", "merged"),
    ]


async def test_a_cancelled_members_event_leaves_the_digest(env: Env) -> None:
    await env.subscriber("ann")
    ids = await likes(env, 0, 1, 2)
    await env.runtime.services.ingest.cancel(ids[1])
    env.clock.advance(3600)
    await env.drain()
    assert await digest_titles(env) == [("2 likes", "first: event 0")]
    [leader] = (await env.report(ids[0]))["runs"]
    stored = await env.notify.runs.load_many([leader["id"]])
    digest = stored[leader["id"]][1]["batch"].result["digest"]
    assert [e["event_id"] for e in digest["events"]] == [ids[0], ids[2]]


async def test_a_digest_whose_events_are_all_cancelled_sends_nothing_and_starts_afresh(
    env: Env,
) -> None:
    await env.subscriber("ann")
    ids = await likes(env, 0, 1)
    for event_id in ids:
        await env.runtime.services.ingest.cancel(event_id)
    env.clock.advance(600)
    await env.drain()
    assert await digest_titles(env) == []
    # a later event of the same window leads a digest of its own
    [later] = await likes(env, 5)
    assert await run_outcomes(env, [later]) == [("waiting", None)]
    env.clock.advance(3600)
    await env.drain()
    assert await digest_titles(env) == [("1 likes", "first: event 5")]


async def test_a_digest_handed_over_while_its_heir_was_written_as_merged_still_goes_out(
    env: Env,
) -> None:
    """The cancel hands the digest to a run whose join is stored but whose write (as a
    member) lands after the cancel: its wake job finds it merged yet leading, and leads."""
    await env.subscriber("ann")
    [first] = await likes(env, 0)
    [leader] = (await env.report(first))["runs"]
    [(_, steps, _)] = (await env.notify.runs.load_many([leader["id"]])).values()
    digest, end = steps["batch"].result["digest_id"], steps["batch"].result["window_end"]
    second = await env.send("likes", recipients=("ann",), payload={"n": 1})
    heir, at = run_id(second, "likes", "ann"), env.clock.now()
    await env.notify.runs.join_digest(digest, heir, second, {"n": 1}, None, at)
    await env.runtime.services.ingest.cancel(first)
    member = {"step_id": "batch", "outcome": "digest_member", "at": at, "reason": ""}
    member |= {"digest_id": digest, "window_end": end}
    run = Run(heir, second, "likes", "ann", Priority.TRANSACTIONAL, at, RunState.DONE, "merged")
    await env.notify.runs.commit(
        [RunWrite(run, steps=[StepRow(heir, "batch", "digest_member", at, "", member)])]
    )
    await env.drain()  # the second event's dispatch finds its run done
    assert await digest_titles(env) == []
    env.clock.advance(3600)
    await env.drain()
    assert await digest_titles(env) == [("1 likes", "first: event 1")]
    assert await run_outcomes(env, [second]) == [("done", "completed")]


async def test_an_event_that_arrives_after_its_digest_closed_is_told_alone(env: Env) -> None:
    await env.subscriber("ann")
    first = await likes(env, 0)
    pool = env.runtime.pools[-1]
    late = await env.send("likes", recipients=("ann",), payload={"n": 1})
    env.clock.advance(3600)
    # the leader closes the window before the second event's runs are made
    jobs = sorted(await pool.claim(100), key=lambda j: j.kind != "notify.run")
    assert [j.kind for j in jobs] == ["notify.run", "event.dispatch"]
    for job in jobs:
        await pool.execute(job)
    await env.drain()
    assert await digest_titles(env) == [
        ("1 likes", "first: event 1"),
        ("1 likes", "first: event 0"),
    ]
    assert await run_outcomes(env, [*first, late]) == [("done", "completed"), ("done", "completed")]


async def test_a_push_step_sees_the_recipients_devices(env: Env) -> None:
    """Subscribers are read without their devices unless a step pushes: this one does."""
    await env.subscriber("ann", devices=(Device(Platform.FCM, "fcm-token-ann-1"),))
    await env.subscriber("bob")
    event_id = await env.send("ping", recipients=("ann", "bob"), payload={"text": "hi"})
    await env.drain()
    report = await env.report(event_id)
    steps = {t["recipient"]: t for t in report["trail"] if t["type"] == "step"}
    # ann has a device: the push is decided and finds no provider; bob has none
    assert steps["ann"]["reason"] == "no_provider: no provider configured for push"
    assert steps["bob"]["reason"].startswith("no_address")


async def test_trigger_refuses_an_unknown_topic_and_records_a_missing_workflow(env: Env) -> None:
    with pytest.raises(InvalidInput) as topic:
        await env.send("news", topic="nobody")
    assert topic.value.field == "topic"
    event_id = await env.send("no.such.workflow", recipients=("ann",))
    await env.drain()
    record = await env.runtime.services.ingest.get(event_id)
    assert record is not None
    assert [(o.kind, o.status, o.detail) for o in record.outcomes] == [
        ("notify", "not_sent", "no workflow for event type 'no.such.workflow'")
    ]


async def test_transient_failures_retry_then_dead_letter_then_replay(env: Env) -> None:
    await env.subscriber("ann", email="later@example.com")  # the sink answers 451
    event_id = await env.send("news", recipients=("ann",), payload={"text": "t"})
    for _ in range(5):
        await env.drain()
        env.clock.advance(3600)
    dead = await env.runtime.services.jobs.list_dead(10, kind="notify.deliver")
    assert len(dead) == 1
    # the dead letter's reason names the failure's class, not the exception type
    assert dead[0].last_error is not None
    assert dead[0].last_error.startswith("gave up after 3 attempts: transient: ")
    assert "JobError" not in dead[0].last_error
    report = await env.report(event_id)
    [message] = report["messages"]
    assert message["status"] == "failed"
    assert message["error"]
    attempts = [t for t in report["trail"] if t["type"] == "delivery"]
    assert [a["status"] for a in attempts] == ["retrying", "retrying", "failed", "dead_lettered"]
    assert all(a.get("class") in (None, "transient") for a in attempts)
    # the address is fixed; replaying the dead letter sends it
    await env.subscriber("ann", email="ann@example.com")
    await env.runtime.services.jobs.replay(dead[0].id)
    await env.drain()
    assert [m["To"] for m in env.mails()] == ["ann@example.com"]
    message = (await env.report(event_id))["messages"][0]
    assert message["status"] == "sent"
    assert message["error"] is None  # the failures before the replay no longer hold


async def test_a_refused_message_is_dead_lettered_with_its_reason_once(env: Env) -> None:
    await env.subscriber("ann", email="rejected@example.com")  # the sink answers 554 5.7.1
    event_id = await env.send("news", recipients=("ann",), payload={"text": "t"})
    await env.drain()
    [dead] = await env.runtime.services.jobs.list_dead(10, kind="notify.deliver")
    assert dead.last_error is not None and dead.last_error.startswith("permanent: 554 5.7.1")
    assert "permanent: permanent" not in dead.last_error
    [message] = (await env.report(event_id))["messages"]
    assert message["status"] == "failed" and message["error"] == dead.last_error
    # what an operator inspecting the dead letter sees of it (API and `tidings dlq show`)
    [shown] = await env.notify.job_messages(dead.payload)
    assert (shown["id"], shown["recipient"], shown["channel"], shown["status"]) == (
        message["id"],
        "ann",
        "email",
        "failed",
    )


async def test_hard_bounce_suppresses_the_address_for_later_messages(env: Env) -> None:
    await env.subscriber("ann", email="unknown@example.com")  # the sink answers 550 5.1.1
    first = await env.send("news", recipients=("ann",), payload={"text": "1"})
    await env.drain()
    assert (await env.report(first))["messages"][0]["status"] == "bounced"
    second = await env.send("news", recipients=("ann",), payload={"text": "2"})
    await env.drain()
    assert decisions(await env.report(second), "ann", "email")[-1] == (
        "suppression",
        "suppress",
        "hard_bounced",
    )
    assert await env.runtime.services.jobs.list_dead(10) == []


async def test_a_worker_dying_mid_delivery_sends_once(env: Env) -> None:
    await env.subscriber("ann", email="ann@example.com")
    await env.send("news", recipients=("ann",), payload={"text": "t"})
    pool = env.runtime.pools[-1]
    while True:  # run dispatch and the batch, leave the delivery job claimed and abandoned
        jobs = await pool.claim(10)
        deliver = [j for j in jobs if j.kind == "notify.deliver"]
        for job in jobs:
            if job.kind != "notify.deliver":
                await pool.execute(job)
        if deliver:
            break
    assert env.smtp.messages == []
    env.clock.advance(31)  # the lease ran out: the worker is presumed dead
    await env.drain()
    assert len(env.smtp.messages) == 1
    job = await env.runtime.services.jobs.get(deliver[0].id)
    assert job is not None and job.state is JobState.DONE


async def test_bulk_lane_runs_carry_the_events_priority(env: Env) -> None:
    await env.subscriber("ann", email="ann@example.com")
    event_id = await env.send(
        "news", recipients=("ann",), payload={"text": "t"}, priority=Priority.BULK
    )
    await env.drain()
    report = await env.report(event_id)
    assert {r["lane"] for r in report["runs"]} == {"bulk"}
    assert {m["lane"] for m in report["messages"]} == {"bulk"}


async def test_send_at_local_time_uses_the_recipients_zone_when_the_step_runs(env: Env) -> None:
    # 1_700_000_000 is 07:13 in Tokyo and 22:13 (the day before) in Lisbon
    await env.subscriber("tokyo", timezone="Asia/Tokyo")
    await env.subscriber("mover", timezone="Asia/Tokyo")
    await env.send("morning", recipients=("tokyo", "mover"), payload={"text": "hi"})
    await env.drain()
    # the second recipient moves to Lisbon before 09:00 Tokyo time
    await env.subscriber("mover", timezone="Europe/Lisbon")
    env.clock.advance(106 * 60 + 41)  # 09:00 Tokyo
    await env.drain()
    inbox = env.runtime.services.inbox.store
    assert [i.title for i in await inbox.feed("tokyo", limit=5)] == ["Good morning"]
    # the woken run re-reads the zone: Lisbon's 09:00 is still hours away
    assert await inbox.feed("mover", limit=5) == []
    env.clock.advance(10 * 3600)  # 09:00 in Lisbon (UTC+0 in November) is 19:00 Tokyo
    await env.drain()
    assert [i.title for i in await inbox.feed("mover", limit=5)] == ["Good morning"]


async def test_cancelling_a_dispatched_event_stops_its_waiting_runs(env: Env) -> None:
    await env.subscriber("ann", timezone="Asia/Tokyo")
    event_id = await env.send("morning", recipients=("ann",), payload={"text": "hi"})
    await env.drain()
    record = await env.runtime.services.ingest.cancel(event_id)
    assert record.state.value == "cancelled"
    env.clock.advance(3 * 3600)  # past 09:00 in Tokyo: the wake job runs and does nothing
    await env.drain()
    assert await env.runtime.services.inbox.store.feed("ann", limit=5) == []
    report = await env.report(event_id)
    assert [(r["state"], r["outcome"]) for r in report["runs"]] == [("done", "cancelled")]
    with pytest.raises(Conflict):
        await env.runtime.services.ingest.cancel(event_id)


async def crowd(env: Env, n: int) -> list[str]:
    """Subscribers m000.. in topic `crowd`."""
    members = [f"m{i:03d}" for i in range(n)]
    for m in members:
        await env.subscriber(m)
    topics = env.runtime.services.subscribers.topics
    await topics.create(Topic("crowd", "Crowd"))
    await topics.add_members("crowd", members, env.clock.now())
    return members


async def comment_to_crowd(env: Env) -> str:
    """A bulk `comment.created` event to topic `crowd`; its id."""
    return await env.send(
        "comment.created",
        topic="crowd",
        payload={"author": "a", "text": "t"},
        priority=Priority.BULK,
    )


async def test_bulk_batches_run_one_at_a_time_and_commit_in_slices(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite one bulk batch runs at a time (a second would only queue in front of
    transactional work); a batch is written in transactions of `bulk_commit_size` runs."""
    await crowd(env, 250)
    assert env.notify.config.bulk_concurrency == 1
    assert env.notify.config.bulk_commit_size == 50
    monkeypatch.setattr(
        env.notify, "config", dataclasses.replace(env.notify.config, bulk_batch_size=125)
    )
    running, most, commits = 0, 0, []
    run_batch, commit = env.notify._run_batch, env.notify.runs.commit

    async def tracked_batch(*args: Any) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            await asyncio.sleep(0.01)
            await run_batch(*args)
        finally:
            running -= 1

    async def tracked_commit(writes: Any, jobs: Any = ()) -> set[str]:
        commits.append(len(writes))
        return await commit(writes, jobs)

    monkeypatch.setattr(env.notify, "_run_batch", tracked_batch)
    monkeypatch.setattr(env.notify.runs, "commit", tracked_commit)
    event_id = await env.send("news", topic="crowd", payload={"text": "t"}, priority=Priority.BULK)
    pool = env.runtime.pools[-1]
    assert await pool.run_once(1) == 1  # the dispatch: two batch jobs of 125
    batches = await pool.claim(10)
    assert len(batches) == 2
    await asyncio.gather(*(pool.execute(job) for job in batches))  # both at once
    assert most == 1
    assert sorted(commits) == [25, 25, 50, 50, 50, 50]
    report = await env.report(event_id)
    assert len(report["runs"]) == 250
    assert {r["state"] for r in report["runs"]} == {"done"}


async def test_a_bulk_batch_retried_after_a_failed_slice_makes_each_effect_once(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bulk batch commits in slices; when one slice's commit fails, the job is retried
    and goes on where the committed slices left off: every recipient ends with one run,
    one inbox item and one step entry in the trail."""
    members = await crowd(env, 120)
    commit, calls = env.notify.runs.commit, 0

    async def second_fails(writes: Any, jobs: Any = ()) -> set[str]:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ConnectionError("database went away")
        return await commit(writes, jobs)

    monkeypatch.setattr(env.notify.runs, "commit", second_fails)
    event_id = await comment_to_crowd(env)
    await env.drain()  # dispatch; the batch fails at its second slice and is retried later
    assert calls == 2
    env.clock.advance(300)  # past the retry's backoff, short of the 10 min wait_for timeout
    await env.drain()
    report = await env.notify.event_report(event_id, limit=1000)
    assert report["counts"] == {"waiting": 120}  # each waits for its in-app item to be seen
    inbox = env.runtime.services.inbox.store
    for m in members:
        assert len(await inbox.feed(m, limit=10)) == 1
    steps = [t["recipient"] for t in report["trail"] if t["type"] == "step"]
    assert sorted(steps) == members


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_a_slice_is_written_while_the_next_is_worked_out_one_write_at_a_time(
    env: Env, monkeypatch: pytest.MonkeyPatch, concurrency: int
) -> None:
    """With one bulk batch at a time, a slice is committed while the next slice's runs are
    advanced (with several, batches overlap each other and each writes in turn), never two
    writes in flight; when advancing a run fails, the write in flight still ends before the
    batch does (its runs are stored), and the retry makes the rest once."""
    monkeypatch.setattr(
        env.notify, "config", dataclasses.replace(env.notify.config, bulk_concurrency=concurrency)
    )
    members = await crowd(env, 120)
    flush, advance_run = env.notify._flush, env.notify._advance_run
    in_flight, most, advanced_during_write = 0, 0, 0
    finished: list[int] = []
    fail_at: str | None = "m070"

    async def slow_flush(p: Any, inbox: Any, writes: Any, jobs: Any, sends: Any) -> None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        try:
            await asyncio.sleep(0.02)
            await flush(p, inbox, writes, jobs, sends)
        finally:
            in_flight -= 1
            finished.append(len(writes))

    async def tracked_advance(p: Any, run: Any, steps: Any, messages: Any) -> Any:
        nonlocal advanced_during_write
        advanced_during_write += in_flight
        if run.recipient == fail_at:
            raise ConnectionError("subscriber store went away")
        return await advance_run(p, run, steps, messages)

    monkeypatch.setattr(env.notify, "_flush", slow_flush)
    monkeypatch.setattr(env.notify, "_advance_run", tracked_advance)
    event_id = await comment_to_crowd(env)
    await env.drain()  # the batch fails at m070, after its first slice was handed to a write
    assert most == 1
    # runs were advanced while a slice was being written, with one batch at a time only
    assert (advanced_during_write > 0) is (concurrency == 1)
    assert finished == [50]  # the slice in flight ended before the batch did
    report = await env.notify.event_report(event_id, limit=1000)
    assert report["counts"] == {"waiting": 50}
    fail_at = None
    env.clock.advance(300)  # past the retry's backoff
    await env.drain()
    report = await env.notify.event_report(event_id, limit=1000)
    assert report["counts"] == {"waiting": 120}
    inbox = env.runtime.services.inbox.store
    for m in members:
        assert len(await inbox.feed(m, limit=10)) == 1
    steps = [t["recipient"] for t in report["trail"] if t["type"] == "step"]
    assert sorted(steps) == members


@pytest.mark.parametrize("recent", [False, True])
async def test_bulk_batches_take_turns_while_transactional_work_is_recent(
    env: Env, monkeypatch: pytest.MonkeyPatch, recent: bool
) -> None:
    """Several bulk batches run at once (PostgreSQL's default); while transactional work is
    recent, only the oldest goes on and the others wait their turn."""
    members = await crowd(env, 120)
    config = dataclasses.replace(env.notify.config, bulk_concurrency=4, bulk_batch_size=40)
    monkeypatch.setattr(env.notify, "config", config)
    monkeypatch.setattr(env.notify, "_bulk_slots", asyncio.Semaphore(4))
    batch_of = {m: i // 40 for i, m in enumerate(members)}
    order: list[int] = []
    advance_run = env.notify._advance_run

    async def tracked(p: Any, run: Any, steps: Any, messages: Any) -> Any:
        order.append(batch_of[run.recipient])
        return await advance_run(p, run, steps, messages)

    monkeypatch.setattr(env.notify, "_advance_run", tracked)
    event_id = await comment_to_crowd(env)
    pool = env.runtime.pools[-1]
    assert await pool.run_once(10) == 1  # the dispatch enqueues three batches
    batches = await pool.claim(10)
    assert len(batches) == 3
    if recent:
        with env.notify._gate.urgent():  # a transactional job just ended
            pass
    await asyncio.gather(*(pool.execute(job) for job in batches))
    assert sorted(order) == [0] * 40 + [1] * 40 + [2] * 40
    if recent:  # each batch's runs in one stretch: the others waited for their turn
        assert sum(1 for a, b in itertools.pairwise(order) if a != b) == 2
        assert env.notify._turns.waits >= 1
    else:  # nothing held any batch back
        assert env.notify._turns.waits == 0
    report = await env.notify.event_report(event_id, limit=1000)
    assert report["counts"] == {"waiting": 120}


async def test_a_payload_breaking_a_contract_published_after_ingest_fails_the_step(
    env: Env,
) -> None:
    """The template is published (with a contract) after the event was accepted: the step
    fails for each recipient with the path that breaks it, checked once per batch; the
    batch job itself completes and nothing reaches the inbox."""
    for sid in ("ann", "bob"):
        await env.subscriber(sid)
    event_id = await env.send("shipped", recipients=("ann", "bob"), payload={"order": {}})
    templates = env.runtime.services.templates
    await templates.create("shipped", "Shipped", "in_app")
    await templates.add_version(
        "shipped",
        {
            "locales": {"en": {"title": "Order {{ payload.order.id }}", "body": "Shipped"}},
            "variables": {
                "type": "object",
                "properties": {"order": {"type": "object", "required": ["id"]}},
            },
        },
    )
    await templates.publish("shipped", 1)
    await env.drain()
    report = await env.report(event_id)
    assert {r["recipient"]: r["state"] for r in report["runs"]} == {"ann": "done", "bob": "done"}
    steps = [t for t in report["trail"] if t["type"] == "step"]
    assert sorted(t["recipient"] for t in steps) == ["ann", "bob"]
    for entry in steps:
        assert entry["outcome"] == "failed"
        assert entry["reason"] == "payload_invalid: payload.order: 'id' is a required property"
    assert report["messages"] == []
    assert (await env.runtime.services.inbox.store.counts("ann")).unread == 0
    assert await env.runtime.services.jobs.list_dead(10) == []


async def test_a_cancel_that_comes_in_mid_dispatch_sends_nothing(env: Env) -> None:
    """The dispatch has run the workflow (one email step: the run is done, the email queued)
    but not yet marked the event dispatched when the cancel comes in: the email never
    reaches the SMTP server, the message says why, and the dispatch then stops."""
    await env.subscriber("ann", email="ann@example.com")
    event_id = await env.send("news", recipients=("ann",), payload={"text": "t"})
    event = await env.runtime.services.ingest.get(event_id)
    assert event is not None and event.state.value == "accepted"
    await env.notify.start(event)  # what the running dispatch job has done so far
    [queued] = (await env.report(event_id))["messages"]
    assert queued["status"] == "queued"
    cancelled = await env.runtime.services.ingest.cancel(event_id)
    assert cancelled.state.value == "cancelled"
    await env.drain()
    assert env.smtp.messages == []
    [message] = (await env.report(event_id))["messages"]
    assert (message["status"], message["error"]) == ("not_sent", "event cancelled")
    assert await env.runtime.services.jobs.list_dead(10) == []


async def test_a_few_explicit_recipients_run_in_the_dispatch_job_without_batch_jobs(
    env: Env,
) -> None:
    for sid in ("ann", "bob"):
        await env.subscriber(sid, email=f"{sid}@example.com")
    event_id = await env.send("news", recipients=("ann", "bob"), payload={"text": "t"})
    pool = env.runtime.pools[-1]
    assert await pool.run_once(1) == 1  # the dispatch job
    report = await env.report(event_id)
    assert report["counts"] == {"done": 2}  # both runs ran in it
    left = await pool.claim(10)
    assert sorted(j.kind for j in left) == ["notify.deliver", "notify.deliver"]


def cap_email(env: Env, monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    """The orchestrator's settings with a cap of `limit` emails an hour, over suppress."""
    cap = FrequencyCapSettings(limit=limit, window=3600, channel="email", on_exceed="suppress")
    settings = env.runtime.settings.model_copy(
        update={"notify": NotifySettings(frequency_caps=[cap])}
    )
    monkeypatch.setattr(env.notify, "config", notify_config(settings))


async def test_frequency_caps_from_the_settings_reach_the_decisions(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    cap_email(env, monkeypatch, 1)
    await env.subscriber("ann", email="ann@example.com")
    first = await env.send("news", recipients=("ann",), payload={"text": "one"})
    await env.drain()
    env.clock.advance(60)
    second = await env.send("news", recipients=("ann",), payload={"text": "two"})
    await env.drain()
    assert len(env.smtp.messages) == 1
    assert ("frequency_cap", "send", "under_cap") in decisions(
        await env.report(first), "ann", "email"
    )
    assert decisions(await env.report(second), "ann", "email")[-1] == (
        "frequency_cap",
        "suppress",
        "frequency_cap",
    )
    assert (await env.report(second))["messages"] == []


async def drain_at_once(env: Env) -> None:
    """Run the due jobs in rounds, each round's jobs at the same time, their statements on
    the connections' threads (as on PostgreSQL: each read lets the others in)."""
    pool = env.runtime.pools[-1]
    pool._inline = False
    for _ in range(20):
        jobs = await pool.claim(100)
        if not jobs:
            return
        await asyncio.gather(*(pool.execute(j) for j in jobs))
    raise AssertionError("jobs keep coming")


async def test_a_throttle_holds_for_events_handled_at_the_same_time(env: Env) -> None:
    """Six replies in one thread at once, one more in another: the throttle lets two per
    thread through, each pass counting what the one before committed."""
    events = [
        await env.send("thread.reply", recipients=("ann",), payload={"thread": "t1", "text": n})
        for n in "abcdef"
    ]
    other = await env.send(
        "thread.reply", recipients=("ann",), payload={"thread": "t2", "text": "g"}
    )
    await drain_at_once(env)
    outcomes = sorted([(await env.report(e))["runs"][0]["outcome"] for e in events])
    assert outcomes == ["completed"] * 2 + ["throttled"] * 4
    assert (await env.report(other))["runs"][0]["outcome"] == "completed"
    assert (await env.runtime.services.inbox.store.counts("ann")).unread == 3
    assert len(env.notify._recipient_locks) == 0


async def test_a_frequency_cap_holds_for_events_handled_at_the_same_time(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five emails to one recipient at once under a cap of two an hour: two are sent, the
    others suppressed (a queued message counts: it is on its way)."""
    cap_email(env, monkeypatch, 2)
    await env.subscriber("ann", email="ann@example.com")
    events = [
        await env.send("news", recipients=("ann",), payload={"text": str(n)}) for n in range(5)
    ]
    await drain_at_once(env)
    assert len(env.smtp.messages) == 2
    last = [decisions(await env.report(e), "ann", "email")[-1] for e in events]
    capped = ("frequency_cap", "suppress", "frequency_cap")
    assert sorted(d == capped for d in last) == [False, False, True, True, True]


async def test_a_transactional_email_is_handed_to_local_workers_without_a_claim(
    tmp_path: Path,
) -> None:
    """With workers running here, the event's dispatch job and its message's delivery job
    are stored already claimed and run at once: the claim loops (polling once a minute)
    never hand either out, and the email arrives."""
    (tmp_path / "workflows.yaml").write_text(WORKFLOWS)
    sink = Sink()
    server = Server(sink, free_port())
    server.start()
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path}/notify.db",
        smtp=SmtpSettings(host="127.0.0.1", port=server.port),
        notify=NotifySettings(workflows=[str(tmp_path / "workflows.yaml")]),
    )
    settings.worker = WorkerSettings(poll_interval=60.0)
    migrate(settings)
    runtime = build_runtime(settings)
    jobs = runtime.services.jobs
    claimed: list[str] = []
    claim = jobs.claim

    async def logged(*args: Any, **kwargs: Any) -> Any:
        found = await claim(*args, **kwargs)
        claimed.extend(job.kind for job in found)
        return found

    jobs.claim = logged  # type: ignore[method-assign]
    await runtime.start()
    try:
        await runtime.services.subscribers.store.put(Subscriber(id="ann", email="ann@example.org"))
        event_id = (
            await runtime.services.ingest.ingest(
                EventInput(type="alert", payload={}, recipients=("ann",))
            )
        ).event.id
        for _ in range(250):
            if sink.messages:
                break
            await asyncio.sleep(0.02)
        assert [to for _, to, _ in sink.messages] == [["ann@example.org"]]
        report = await runtime.services.notify.event_report(event_id)
        for _ in range(100):  # the delivery settles just after the hand-off to SMTP
            if [m["status"] for m in report["messages"]] == ["sent"]:
                break
            await asyncio.sleep(0.02)
            report = await runtime.services.notify.event_report(event_id)
        assert [m["status"] for m in report["messages"]] == ["sent"]
        assert claimed == []  # neither job went through a claim
        depth = await jobs.depth()
        assert depth.queued == {} and depth.running == {}
    finally:
        await runtime.stop()
        server.stop()


# -- bulk delivery in batches ----------------------------------------------------------------


async def mailing(env: Env, addresses: dict[str, str]) -> str:
    """Subscribers (id -> email) in topic `list`, and a bulk `news` email to it; its id."""
    for sid, address in addresses.items():
        await env.subscriber(sid, email=address)
    topics = env.runtime.services.subscribers.topics
    await topics.create(Topic("list", "List"))
    await topics.add_members("list", list(addresses), env.clock.now())
    return await env.send("news", topic="list", payload={"text": "t"}, priority=Priority.BULK)


async def test_a_providers_rate_limit_paces_a_send_without_using_attempts(
    tmp_path: Path,
) -> None:
    """Five emails a second, five at once: a bulk send to 30 and 10 transactional emails
    all go out, paced, none dead-lettered, each message on its first attempt (held-back
    messages wait for a slot kept for them and use no attempt)."""
    limit = ProviderSettings(rate_limits={"email": RateLimitSettings(rate=5, burst=5)})
    async with open_env(tmp_path, attempts=2, providers=limit) as env:
        clock, sink, runtime = env.clock, env.smtp, env.runtime
        start = clock.now()
        bulk = await mailing(env, {f"m{i:02d}": f"m{i:02d}@example.com" for i in range(30)})
        tx = [
            await env.send("news", recipients=(f"m{i:02d}",), payload={"text": "tx"})
            for i in range(10)
        ]
        for _ in range(200):
            await env.drain()
            if len(sink.messages) == 40:
                break
            clock.advance(0.1)
        assert len(sink.messages) == 40
        assert clock.now() - start >= (40 - 5) / 5 - 0.5  # paced: five a second after five
        assert await runtime.services.jobs.list_dead(100) == []
        for event_id in [bulk, *tx]:
            for message in (await env.report(event_id))["messages"]:
                assert (message["status"], message["attempts"]) == ("sent", 1), message
        report = await env.report(bulk)
        deferred = [t for t in report["trail"] if t.get("status") == "deferred"]
        assert deferred and all(t["reason"] == "smtp: local rate limit" for t in deferred)


async def jobs_of(env: Env, kind: str) -> list[dict[str, Any]]:
    async with env.runtime.engine.connect() as conn:
        rows = await conn.execute(select(jobs).where(jobs.c.kind == kind).order_by(jobs.c.run_at))
        return [dict(r._mapping) for r in rows]


async def fan_out(env: Env) -> Job:
    """Run the jobs before delivery (dispatch, fanout) and claim the batch delivery job."""
    pool = env.runtime.pools[-1]
    while True:
        for job in await pool.claim(10):
            if job.kind == "notify.deliver_batch":
                return job
            await pool.execute(job)


def message_ids(env: Env) -> list[str]:
    return [str(m["Message-ID"]) for m in env.mails()]


async def test_a_bulk_email_goes_out_in_batches_each_settled_in_one_write(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Due bulk messages are delivered a slice at a time: one job per `send_batch`
    messages (50 by default), whose messages are all settled by one `update_messages`."""
    assert env.notify.config.send_batch == 50
    addresses = {f"m{i:03d}": f"m{i:03d}@example.com" for i in range(120)}
    written: list[int] = []
    update_messages = env.notify.runs.update_messages

    async def tracked(updates: Any, *, at: float) -> Any:
        written.append(len(updates))
        return await update_messages(updates, at=at)

    monkeypatch.setattr(env.notify.runs, "update_messages", tracked)
    event_id = await mailing(env, addresses)
    await env.drain()
    batches = await jobs_of(env, "notify.deliver_batch")
    assert sorted(len(j["payload"]["message_ids"]) for j in batches) == [20, 50, 50]
    assert {j["state"] for j in batches} == {"done"} and {j["lane"] for j in batches} == {"bulk"}
    assert await jobs_of(env, "notify.deliver") == []
    assert sorted(written) == [20, 50, 50]
    assert sorted(m["To"] for m in env.mails()) == sorted(addresses.values())
    assert len(set(message_ids(env))) == 120
    report = await env.notify.event_report(event_id, limit=1000)
    assert {(m["status"], m["attempts"]) for m in report["messages"]} == {("sent", 1)}
    sent = [t for t in report["trail"] if t["type"] == "delivery"]
    assert len(sent) == 120 and {t["status"] for t in sent} == {"sent"}


async def test_a_bulk_sends_workers_deliver_what_the_fanout_made_before_making_more(
    env: Env,
) -> None:
    """A bulk send's delivery jobs are due since its event's accept, ahead of its batch
    jobs still queued: one job at a time, the workers alternate between a batch and the
    deliveries it made, and the queue never holds more than one batch's deliveries."""
    env.notify.config = dataclasses.replace(env.notify.config, bulk_batch_size=50)
    addresses = {f"m{i:03d}": f"m{i:03d}@example.com" for i in range(150)}
    event_id = await mailing(env, addresses)
    env.clock.advance(1.0)  # the fanout enqueues its batches after the accept
    pool = env.runtime.pools[-1]
    ran: list[str] = []
    while claimed := await pool.claim(1):
        ran.append(claimed[0].kind)
        await pool.execute(claimed[0])
    assert ran == ["event.dispatch"] + ["notify.batch", "notify.deliver_batch"] * 3
    event = await env.notify.events.get(event_id)
    assert event is not None
    assert {j["run_at"] for j in await jobs_of(env, "notify.deliver_batch")} == {event.created_at}
    assert len(env.mails()) == 150


async def test_a_message_failing_in_a_batch_goes_on_alone(env: Env) -> None:
    """The others of its batch are sent; a transient failure becomes the message's own
    delivery job, due after its backoff, with the batch's attempt counted (3 attempts in
    all); a permanent one is dead-lettered as its own job, replayable like any."""
    addresses = {f"m{i}": f"m{i}@example.com" for i in range(5)}
    addresses |= {"slow": "later@example.com", "spam": "rejected@example.com"}
    event_id = await mailing(env, addresses)
    await env.drain()
    assert sorted(m["To"] for m in env.mails()) == [f"m{i}@example.com" for i in range(5)]
    by_recipient = {m["recipient"]: m for m in (await env.report(event_id))["messages"]}
    assert (by_recipient["slow"]["status"], by_recipient["slow"]["attempts"]) == ("queued", 1)
    assert (by_recipient["spam"]["status"], by_recipient["spam"]["attempts"]) == ("failed", 1)
    [retry] = [j for j in await jobs_of(env, "notify.deliver") if j["state"] == "queued"]
    assert retry["payload"] == {"message_id": by_recipient["slow"]["id"]}
    assert retry["attempts"] == 1 and retry["lane"] == "bulk"
    assert env.clock.now() <= retry["run_at"] <= env.clock.now() + 1.0  # full jitter, base 1 s
    [dead] = await env.runtime.services.jobs.list_dead(10, kind="notify.deliver")
    assert dead.payload == {"message_id": by_recipient["spam"]["id"]}
    assert dead.last_error is not None and dead.last_error.startswith("permanent: 554 5.7.1")
    for _ in range(4):
        env.clock.advance(3600)
        await env.drain()
    report = await env.report(event_id)
    trail = [t for t in report["trail"] if t["type"] == "delivery"]
    slow = [
        (t["attempt"], t["status"]) for t in trail if t["recipient"] == "slow" and "attempt" in t
    ]
    assert slow == [(1, "retrying"), (2, "retrying"), (3, "failed")]
    spam = [t["status"] for t in trail if t["recipient"] == "spam"]
    assert spam == ["failed", "dead_lettered"]
    # the address is fixed; replaying the dead letter sends the message
    await env.subscriber("spam", email="spam@example.com")
    await env.runtime.services.jobs.replay(dead.id)
    await env.drain()
    assert "spam@example.com" in [m["To"] for m in env.mails()]
    spam_message = next(
        m for m in (await env.report(event_id))["messages"] if m["recipient"] == "spam"
    )
    assert (spam_message["status"], spam_message["attempts"]) == ("sent", 2)


async def test_a_batch_run_again_sends_only_what_it_had_not_settled(env: Env) -> None:
    """A worker dying mid-batch (its lease runs out) leaves its messages unsettled: the
    next worker sends them again under the same Message-ID (receivers deduplicate); once
    settled, running the job again sends nothing."""
    addresses = {f"m{i}": f"m{i}@example.com" for i in range(6)}
    event_id = await mailing(env, addresses)
    batch = await fan_out(env)  # claimed by a worker that dies
    update_messages = env.notify.runs.update_messages

    async def dies(updates: Any, *, at: float) -> Any:
        raise asyncio.CancelledError  # killed after the sends, before the settle

    env.notify.runs.update_messages = dies
    with pytest.raises(asyncio.CancelledError):
        await env.notify.handle_deliver_batch(batch)
    env.notify.runs.update_messages = update_messages
    first = message_ids(env)
    assert len(first) == 6
    assert {m["status"] for m in (await env.report(event_id))["messages"]} == {"queued"}
    env.clock.advance(31)  # the lease ran out: another worker claims the batch
    assert await env.drain() == 1
    assert sorted(message_ids(env)) == sorted(first * 2)  # the same six, once more
    assert {m["status"] for m in (await env.report(event_id))["messages"]} == {"sent"}
    await env.notify.handle_deliver_batch(batch)  # settled: nothing is sent again
    assert len(env.mails()) == 12


async def test_a_cancelled_events_batch_sends_nothing(env: Env) -> None:
    event_id = await mailing(env, {f"m{i}": f"m{i}@example.com" for i in range(3)})
    batch = await fan_out(env)
    # cancelled between fanout and delivery: the runs are done, their messages not sent
    await env.runtime.services.ingest.cancel(event_id)
    await env.runtime.pools[-1].execute(batch)
    assert env.smtp.messages == []
    messages = (await env.report(event_id))["messages"]
    assert {(m["status"], m["error"]) for m in messages} == {("not_sent", "event cancelled")}


async def test_a_dead_lettered_batch_fails_its_unsent_messages_and_replays(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    event_id = await mailing(env, {f"m{i}": f"m{i}@example.com" for i in range(3)})
    batch = await fan_out(env)
    get_many = env.notify.subscribers.get_many

    async def broken(ids: Any, *, devices: bool = True) -> Any:
        raise ConnectionError("subscriber store went away")

    monkeypatch.setattr(env.notify.subscribers, "get_many", broken)
    await env.runtime.pools[-1].execute(batch)  # fails: retried later, then dead-lettered
    for _ in range(5):
        env.clock.advance(3600)
        await env.drain()
    [dead] = await env.runtime.services.jobs.list_dead(10, kind="notify.deliver_batch")
    assert dead.id == batch.id
    messages = (await env.report(event_id))["messages"]
    assert {(m["status"], m["attempts"]) for m in messages} == {("failed", 0)}
    monkeypatch.setattr(env.notify.subscribers, "get_many", get_many)
    await env.runtime.services.jobs.replay(dead.id)
    await env.drain()
    assert len(env.mails()) == 3
    messages = (await env.report(event_id))["messages"]
    assert {(m["status"], m["attempts"]) for m in messages} == {("sent", 1)}


async def test_a_batch_counts_its_attempt_against_the_messages_attempts(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one delivery attempt, a transient failure in a batch is the message's last: it
    is dead-lettered at once, replayable."""
    monkeypatch.setattr(
        env.notify, "config", dataclasses.replace(env.notify.config, delivery_attempts=1)
    )
    event_id = await mailing(env, {"ok": "ok@example.com", "slow": "later@example.com"})
    await env.drain()
    [dead] = await env.runtime.services.jobs.list_dead(10, kind="notify.deliver")
    assert dead.last_error is not None
    assert dead.last_error.startswith("gave up after 1 attempts: transient: 451")
    slow = next(m for m in (await env.report(event_id))["messages"] if m["recipient"] == "slow")
    assert (slow["status"], slow["attempts"]) == ("failed", 1)
    assert [m["To"] for m in env.mails()] == ["ok@example.com"]


async def test_transactional_reads_wait_together_bulk_reads_one_after_another(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transactional event's fanout waits for its runs, subscribers and preferences at
    once, then for its effects and suppressed addresses at once; a bulk event's reads go one
    after another (each behind the lane gate), and so do a transactional event's when its
    SQLite statements run on the loop's thread (they would not overlap: `together`). Each
    read is slowed by 50 ms to show it."""
    loop = asyncio.get_running_loop()
    spans: dict[str, list[tuple[float, float]]] = {}

    def slowed(name: str, read: Any) -> Any:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = loop.time()
            await asyncio.sleep(0.05)
            try:
                return await read(*args, **kwargs)
            finally:
                spans.setdefault(name, []).append((start, loop.time()))

        return wrapper

    n = env.notify
    for target, method, name in [
        (n.runs, "get_runs", "runs"),
        (n.subscribers, "get_many", "subscribers"),
        (n.preferences, "get_many", "preferences"),
        (n.runs, "effects_done", "effects"),
        (n.suppressions, "check_many", "suppressed"),
    ]:
        monkeypatch.setattr(target, method, slowed(name, getattr(target, method)))

    def together(*names: str) -> bool:
        found = [spans[name][0] for name in names]
        return max(start for start, _ in found) < min(end for _, end in found)

    await env.subscriber("u1", email="u1@example.com")
    pools = env.runtime.pools
    assert all(pool._inline for pool in pools)  # SQLite
    for pool in pools:
        monkeypatch.setattr(pool, "_inline", False)  # as on a store with reads elsewhere
    await env.send("news", recipients=["u1"], payload={"text": "now"})
    await env.drain()
    assert sorted(spans) == ["effects", "preferences", "runs", "subscribers", "suppressed"]
    assert together("runs", "subscribers", "preferences")
    assert together("effects", "suppressed")
    assert not together("preferences", "effects")  # the second pair needs the first's rows

    spans.clear()
    for pool in pools:
        monkeypatch.setattr(pool, "_inline", True)
    await env.send("news", recipients=["u1"], payload={"text": "inline"})
    await env.drain()
    names = sorted(spans, key=lambda name: spans[name][0][0])
    for first, second in itertools.pairwise(names):
        assert spans[first][0][1] <= spans[second][0][0]  # one after another

    spans.clear()
    await env.send("news", recipients=["u1"], payload={"text": "later"}, priority=Priority.BULK)
    await env.drain()
    names = sorted(spans, key=lambda name: spans[name][0][0])
    assert names == ["runs", "subscribers", "preferences", "suppressed", "effects"]
    for first, second in itertools.pairwise(names):
        assert spans[first][0][1] <= spans[second][0][0]  # one after another
    assert [m["Subject"] for m in env.mails()] == ["News", "News", "News"]
