"""The step runner driven the way a service drives it: results stored per step, actions
answered, a controllable clock (plain floats)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.core.notify import (
    Channel,
    CheckThrottle,
    CloseDigest,
    DecisionKind,
    DeliveryContext,
    DigestEvent,
    Done,
    JoinDigest,
    Preferences,
    QuietHours,
    Recipient,
    Record,
    RunChannelStep,
    RunOutcome,
    StepOutcome,
    StepResult,
    Trigger,
    WaitForStatus,
    WaitUntil,
    Workflow,
    channel_result,
    decide,
    digest_closed,
    digest_joined,
    next_action,
    parse_workflow,
    throttle_result,
)
from tidings.core.notify.runner import Action, next_local, parse_instant
from tidings.core.notify.types import DeliveryStatus

T0 = 1_717_408_800.0  # 2024-06-03 10:00 UTC, a Monday
ALICE = Recipient("alice", email="a@example.com", push_tokens=1, data={"plan": "pro"})

CHAIN = parse_workflow(
    {
        "key": "comment.created",
        "steps": [
            {"id": "inapp", "type": "in_app", "template": "c"},
            {
                "id": "push",
                "type": "push",
                "template": "c",
                "wait_for": {"step": "inapp", "status": "seen", "timeout": "10m"},
            },
            {
                "id": "email",
                "type": "email",
                "template": "c",
                "wait_for": {"step": "push", "status": "read", "timeout": "1h"},
            },
        ],
    }
)


def trigger(event_id: str = "e1", at: float = T0, **payload: Any) -> Trigger:
    return Trigger(event_id, "comment.created", payload, at, actor="bob")


@dataclass
class Service:
    """A minimal in-memory stand-in for the orchestrator: stores results, answers actions."""

    workflow: Workflow
    recipient: Recipient = ALICE
    prefs: Preferences = field(default_factory=Preferences)
    results: dict[str, StepResult] = field(default_factory=dict)
    sent: list[tuple[str, float]] = field(default_factory=list)
    throttle_passes: list[tuple[str, float]] = field(default_factory=list)

    def run(self, trig: Trigger, now: float) -> Action:
        """Act until the runner asks to wait or is done; return that action."""
        for _ in range(50):
            action = next_action(self.workflow, trig, self.recipient, self.results, now)
            if isinstance(action, Record):
                self.results[action.result.step_id] = action.result
            elif isinstance(action, RunChannelStep):
                ctx = DeliveryContext(trig.event_id, "v1", now, preferences=self.prefs)
                verdict = decide(self.workflow, action.step, self.recipient, ctx)
                if verdict.kind is DecisionKind.SEND:
                    self.sent.append((action.step.id, now))
                self.results[action.step.id] = channel_result(action.step, verdict, now)
            elif isinstance(action, CheckThrottle):
                count = sum(
                    1
                    for key, at in self.throttle_passes
                    if key == action.key and action.since < at <= action.until
                )
                result = throttle_result(action, count)
                if result.outcome is StepOutcome.PASSED:
                    self.throttle_passes.append((action.key, action.until))
                self.results[action.step_id] = result
            else:
                return action
        raise AssertionError("runner did not settle")

    def engage(self, step_id: str, status: str, at: float) -> None:
        r = self.results[step_id]
        self.results[step_id] = replace(r, statuses={**r.statuses, status: at})


def test_escalation_chain_all_the_way() -> None:
    svc = Service(CHAIN)
    wait = svc.run(trigger(), T0)
    assert svc.sent == [("inapp", T0)]
    assert wait == WaitForStatus("push", "inapp", "seen", T0 + 600)
    assert svc.run(trigger(), T0 + 599) == wait  # woken early: same answer
    wait2 = svc.run(trigger(), T0 + 600)
    assert svc.sent[-1] == ("push", T0 + 600)
    assert wait2 == WaitForStatus("email", "push", "read", T0 + 600 + 3600)
    done = svc.run(trigger(), T0 + 4200)
    assert done == Done(RunOutcome.COMPLETED)
    assert [s for s, _ in svc.sent] == ["inapp", "push", "email"]


def test_escalation_stops_when_in_app_seen_in_time() -> None:
    svc = Service(CHAIN)
    svc.run(trigger(), T0)
    svc.engage("inapp", "seen", T0 + 120)
    assert svc.run(trigger(), T0 + 120) == Done(RunOutcome.COMPLETED)
    assert svc.results["push"].outcome is StepOutcome.NOT_NEEDED
    assert svc.results["push"].at == T0 + 120
    assert svc.results["email"].outcome is StepOutcome.NOT_NEEDED  # nothing further down
    assert [s for s, _ in svc.sent] == ["inapp"]


def test_engagement_implied_by_a_stronger_one() -> None:
    svc = Service(CHAIN)
    svc.run(trigger(), T0)
    svc.engage("inapp", "clicked", T0 + 60)  # a click means it was seen
    svc.run(trigger(), T0 + 60)
    assert svc.results["push"].outcome is StepOutcome.NOT_NEEDED


def test_status_after_deadline_still_escalates_even_if_stored_before_rerun() -> None:
    svc = Service(CHAIN)
    svc.run(trigger(), T0)
    svc.engage("inapp", "seen", T0 + 700)  # too late
    svc.run(trigger(), T0 + 800)
    assert ("push", T0 + 800) in svc.sent


def test_push_read_in_time_stops_email() -> None:
    svc = Service(CHAIN)
    svc.run(trigger(), T0)
    svc.run(trigger(), T0 + 600)
    svc.engage("push", "read", T0 + 1000)
    assert svc.run(trigger(), T0 + 1000) == Done(RunOutcome.COMPLETED)
    assert svc.results["email"].reason == "push_read"
    assert [s for s, _ in svc.sent] == ["inapp", "push"]


def test_escalates_at_once_when_awaited_step_sent_nothing() -> None:
    svc = Service(CHAIN, recipient=Recipient("alice", email="a@example.com"))  # no push token
    svc.run(trigger(), T0)
    svc.run(trigger(), T0 + 600)
    assert svc.results["push"].outcome is StepOutcome.FAILED
    assert svc.results["push"].delivery is DeliveryStatus.NOT_SENT
    assert svc.sent[-1] == ("email", T0 + 600)


def test_held_push_moves_the_escalation_deadline() -> None:
    berlin_night = 1_717_452_000.0  # 2024-06-04 00:00 Europe/Berlin
    svc = Service(
        CHAIN,
        recipient=replace(ALICE, timezone="Europe/Berlin"),
        prefs=Preferences(quiet_hours=(QuietHours(22 * 60, 7 * 60),)),
    )
    svc.run(trigger(at=berlin_night), berlin_night)
    wait = svc.run(trigger(at=berlin_night), berlin_night + 600)
    push = svc.results["push"]
    assert push.outcome is StepOutcome.HELD
    release = berlin_night + 7 * 3600
    assert push.sent_at == release
    assert wait == WaitForStatus("email", "push", "read", release + 3600)


def test_rerun_after_crash_reaches_the_same_decision() -> None:
    wf = parse_workflow(
        {
            "key": "k",
            "steps": [
                {"id": "a", "type": "in_app", "template": "t"},
                {"id": "d", "type": "delay", "duration": "5m"},
                {
                    "id": "b",
                    "type": "email",
                    "template": "t",
                    "if": {"subscriber.data.plan": "pro"},
                },
            ],
        }
    )
    results = {"a": StepResult("a", StepOutcome.SENT, T0, sent_at=T0)}
    first = next_action(wf, trigger(), ALICE, results, T0 + 400)
    again = next_action(wf, trigger(), ALICE, results, T0 + 9000)  # the retry runs much later
    assert first == again == Record(StepResult("d", StepOutcome.DELAYED, T0 + 300))
    assert isinstance(first, Record)
    results["d"] = first.result
    action = next_action(wf, trigger(), ALICE, results, T0 + 400)
    assert isinstance(action, RunChannelStep) and action.step.id == "b"
    assert action.context["steps"]["a"]["sent"] is True
    assert next_action(wf, trigger(), ALICE, results, T0 + 400) == action


def test_condition_false_is_recorded_as_skip_at_the_anchor() -> None:
    wf = Workflow("k").in_app("t").email("t", if_={"payload.urgent": True})
    svc = Service(wf)
    assert svc.run(trigger(urgent=False), T0 + 5) == Done(RunOutcome.COMPLETED)
    assert svc.results["email"] == StepResult(
        "email", StepOutcome.SKIPPED, T0 + 5, "condition_false"
    )


def test_conditions_on_earlier_steps() -> None:
    wf = Workflow("k").in_app("t", id="inapp").email("t", if_={"not": {"steps.inapp.seen": True}})
    results = {
        "inapp": StepResult("inapp", StepOutcome.SENT, T0, sent_at=T0, statuses={"seen": T0 + 1})
    }
    action = next_action(wf, trigger(), ALICE, results, T0 + 2)
    assert action == Record(StepResult("email", StepOutcome.SKIPPED, T0, "condition_false"))


def test_delay_until_payload_field() -> None:
    wf = Workflow("reminder").delay(until="payload.remind_at").email("t")
    when = "2024-06-03T12:00:00+02:00"  # 10:00 UTC + 0 -> T0
    svc = Service(wf)
    assert svc.run(trigger(remind_at=when, at=T0 - 3600), T0 - 3600) == WaitUntil(
        "delay", T0, "delay"
    )
    assert svc.run(trigger(remind_at=when, at=T0 - 3600), T0) == Done(RunOutcome.COMPLETED)
    assert svc.results["delay"].at == T0
    past = Service(wf)
    past.run(trigger(remind_at=T0 - 99999), T0)
    assert past.results["delay"].at == T0  # a past instant does not wait


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (None, "is missing"),
        ("tomorrow", "'tomorrow': not an ISO 8601 date-time or epoch seconds"),
        ("2024-06-03T12:00:00", "a date-time without a UTC offset (ambiguous)"),
        (True, "is a bool, not a date-time or epoch seconds"),
        (float("nan"), "not a finite number of epoch seconds"),
        (1717408800000, "is 1717408800000: too large for epoch seconds (milliseconds?)"),
    ],
)
def test_delay_until_invalid_fails_the_run_with_reason(bad: Any, why: str) -> None:
    wf = Workflow("reminder").delay(until="payload.remind_at").email("t")
    payload = {} if bad is None else {"remind_at": bad}
    svc = Service(wf)
    done = svc.run(Trigger("e1", "reminder", payload, T0), T0)
    assert isinstance(done, Done) and done.outcome is RunOutcome.FAILED
    assert done.reason.startswith("delay_until_invalid: payload.remind_at ")
    assert done.reason.endswith(why)
    assert svc.sent == []


def test_delay_at_local_waits_for_the_recipients_wall_clock() -> None:
    wf = Workflow("digest.daily").delay(at_local="09:00").email("t")
    tokyo = replace(ALICE, timezone="Asia/Tokyo")  # T0 is 19:00 in Tokyo
    svc = Service(wf, recipient=tokyo)
    nine = datetime(2024, 6, 4, 9, 0, tzinfo=ZoneInfo("Asia/Tokyo")).timestamp()
    assert svc.run(trigger(at=T0), T0) == WaitUntil("delay", nine, "delay")
    assert svc.run(trigger(at=T0), nine) == Done(RunOutcome.COMPLETED)
    assert svc.sent == [("email", nine)]
    # the zone is the recipient's when the step runs: they moved to Lisbon (11:00 there)
    lisbon = Service(wf, recipient=replace(ALICE, timezone="Europe/Lisbon"))
    nine_lisbon = datetime(2024, 6, 4, 9, 0, tzinfo=ZoneInfo("Europe/Lisbon")).timestamp()
    assert lisbon.run(trigger(at=T0), T0) == WaitUntil("delay", nine_lisbon, "delay")
    # exactly at the time: no wait
    at_nine = Service(wf, recipient=tokyo)
    assert at_nine.run(trigger(at=nine), nine) == Done(RunOutcome.COMPLETED)


def test_next_local_across_dst() -> None:
    ny = ZoneInfo("America/New_York")
    # 2024-03-10 02:30 does not exist in New York: the jump (03:00 EDT = 07:00 UTC)
    before = datetime(2024, 3, 10, 0, 0, tzinfo=ny).timestamp()
    gap = next_local(before, time(2, 30), ny)
    assert gap == datetime(2024, 3, 10, 7, 0, tzinfo=UTC).timestamp()
    # 2024-11-03 01:30 happens twice: the first (EDT, 05:30 UTC)
    before = datetime(2024, 11, 3, 0, 0, tzinfo=ny).timestamp()
    twice = next_local(before, time(1, 30), ny)
    assert twice == datetime(2024, 11, 3, 5, 30, tzinfo=UTC).timestamp()


@settings(max_examples=200, deadline=None)
@given(
    anchor=st.floats(min_value=1.6e9, max_value=1.9e9),
    minutes=st.integers(min_value=0, max_value=24 * 60 - 1),
    tz=st.sampled_from(
        [
            "UTC",
            "Europe/Lisbon",
            "America/New_York",
            "Australia/Lord_Howe",
            "Asia/Kolkata",
            "Pacific/Apia",
            "America/Santiago",
        ]
    ),
)
def test_next_local_is_the_first_matching_instant_not_before_the_anchor(
    anchor: float, minutes: int, tz: str
) -> None:
    zone = ZoneInfo(tz)
    at = time(minutes // 60, minutes % 60)
    release = next_local(anchor, at, zone)
    assert anchor <= release < anchor + 2 * 86400 + 3600
    shown = datetime.fromtimestamp(release, zone)
    # the wall clock shows the time, or the time fell into a gap and the release is the jump
    if (shown.hour, shown.minute) != (at.hour, at.minute):
        just_before = datetime.fromtimestamp(release - 1, zone)
        assert just_before.utcoffset() != shown.utcoffset()


def test_parse_instant() -> None:
    assert parse_instant("2024-06-03T10:00:00Z") == T0
    assert parse_instant(T0) == T0
    assert parse_instant("2024-06-03") is None
    assert parse_instant(1e20) is None


def test_throttle_limits_runs_per_key() -> None:
    wf = Workflow("k").throttle(2, "1h", key="payload.thread").in_app("t")
    svc = Service(wf)
    outcomes = []
    for i in range(4):
        svc.results = {}
        outcomes.append(svc.run(trigger(f"e{i}", T0 + i, thread="x"), T0 + i))
    assert outcomes[:2] == [Done(RunOutcome.COMPLETED)] * 2
    assert outcomes[2:] == [Done(RunOutcome.THROTTLED, "throttled at throttle")] * 2
    svc.results = {}
    assert svc.run(trigger("e9", T0 + 5, thread="y"), T0 + 5) == Done(RunOutcome.COMPLETED)
    svc.results = {}  # the window slides: an hour after the first passes, room again
    assert svc.run(trigger("e10", T0 + 3601, thread="x"), T0 + 3601) == Done(RunOutcome.COMPLETED)


def test_digest_one_leader_one_digest() -> None:
    wf = (
        Workflow("post.liked")
        .digest("1h", key="payload.post")
        .in_app("t", if_={"digest.count": {"gte": 2}})
    )
    members: dict[str, list[DigestEvent]] = {}
    runs: dict[str, dict[str, StepResult]] = {}
    triggers = [trigger(f"e{i}", T0 + 60 * i, post="p1") for i in range(5)]
    triggers.append(trigger("other", T0 + 30, post="p2"))
    for trig in triggers:
        results = runs.setdefault(trig.event_id, {})
        action = next_action(wf, trig, ALICE, results, trig.at)
        assert isinstance(action, JoinDigest)
        leader = action.digest_id not in members
        members.setdefault(action.digest_id, []).append(
            DigestEvent(trig.event_id, action.at, trig.payload, trig.actor)
        )
        results[action.step_id] = digest_joined(action, leader=leader)
    ends = {
        r: next_action(wf, t, ALICE, runs[t.event_id], T0 + 400)
        for r, t in ((t.event_id, t) for t in triggers)
    }
    assert (
        ends["e1"]
        == ends["e4"]
        == Done(RunOutcome.MERGED, f"merged into digest {runs['e1']['digest'].digest_id}")
    )
    assert isinstance(ends["e0"], WaitUntil) and ends["e0"].until == T0 + 3600 - T0 % 3600
    assert isinstance(ends["other"], WaitUntil)
    assert len(members) == 2
    close = next_action(wf, triggers[0], ALICE, runs["e0"], T0 + 3600)
    assert isinstance(close, CloseDigest)
    runs["e0"]["digest"] = digest_closed(close, members[close.digest_id])
    action = next_action(wf, triggers[0], ALICE, runs["e0"], T0 + 3600)
    assert isinstance(action, RunChannelStep)
    assert action.context["digest"]["count"] == 5
    assert [e["event_id"] for e in action.context["digest"]["events"]] == [
        f"e{i}" for i in range(5)
    ]
    # the single-event digest does not meet the condition
    lone = next_action(wf, triggers[-1], ALICE, runs["other"], T0 + 3600)
    assert isinstance(lone, CloseDigest)
    runs["other"]["digest"] = digest_closed(lone, members[lone.digest_id])
    assert next_action(wf, triggers[-1], ALICE, runs["other"], T0 + 3600) == Record(
        StepResult("in_app", StepOutcome.SKIPPED, T0 + 3600 - T0 % 3600, "condition_false")
    )


def test_late_digest_join_still_sends_its_event() -> None:
    wf = Workflow("post.liked").digest("1h").in_app("t")
    trig = trigger()
    join = next_action(wf, trig, ALICE, {}, T0 + 7200)
    assert isinstance(join, JoinDigest)
    result = digest_joined(join, leader=False, closed=True)
    assert result.outcome is StepOutcome.DIGEST_LEADER and result.digest_id != join.digest_id
    close = next_action(wf, trig, ALICE, {"digest": result}, T0 + 7200)
    assert isinstance(close, CloseDigest) and close.digest_id == result.digest_id
    closed = digest_closed(close, [DigestEvent(trig.event_id, trig.at, trig.payload)])
    action = next_action(wf, trig, ALICE, {"digest": closed}, T0 + 7200)
    assert isinstance(action, RunChannelStep) and action.context["digest"]["count"] == 1


def test_step_result_round_trips_through_json() -> None:
    r = StepResult(
        "push",
        StepOutcome.HELD,
        T0,
        "quiet_hours",
        sent_at=T0 + 60,
        delivery=DeliveryStatus.DELIVERED,
        statuses={"delivered": T0 + 61, "read": T0 + 90},
        digest_id="d",
        window_end=T0 + 3600,
        digest={"count": 1},
    )
    assert StepResult.from_json(r.to_json()) == r
    view = r.view()
    assert view["sent"] and view["read"] and view["seen"] and view["delivered"]
    assert not view["clicked"] and view["status"] == "delivered"


def test_done_when_all_steps_have_results() -> None:
    wf = Workflow("k").in_app("t")
    results = {"in_app": StepResult("in_app", StepOutcome.SUPPRESSED, T0, "channel_opt_out")}
    assert next_action(wf, trigger(), ALICE, results, T0) == Done(RunOutcome.COMPLETED)
    assert Channel.IN_APP.value == "in_app"
