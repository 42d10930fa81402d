"""The step runner: a deterministic state machine a service drives one step at a time.

The service keeps one :class:`StepResult` per step of a run (workflow x event x recipient) in
durable storage and calls :func:`next_action` with the workflow, the trigger, the recipient,
the stored results and the current time. The answer says what to do next:

=====================  ===================================================================
``RunChannelStep``     run the decision pipeline (:func:`~.decisions.decide`) and hand the
                       message to delivery; store :func:`channel_result`
``Record``             store ``result`` as it is (a skip, an elapsed delay...), call again
``WaitUntil``          nothing to do before ``until``: schedule the run then
``WaitForStatus``      wake the run when ``watch`` reaches ``status``, or at ``until``
``CheckThrottle``      count earlier passes, store :func:`throttle_result`
``JoinDigest``         join the digest atomically, store :func:`digest_joined`
``CloseDigest``        collect the digest's events, store :func:`digest_closed`
``Done``               the run is over (``outcome`` and ``reason`` for the trail)
=====================  ===================================================================

Every answer is a function of its inputs. A worker that crashes after acting but before
storing the result gets the same answer again on retry, so storing results with
insert-if-absent per (run, step) and keying effects by idempotency key makes each step happen
once. Results a runner records carry times derived from stored data (never ``now``), so a
re-run records the same thing.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import field
from datetime import datetime, time, timedelta, tzinfo
from typing import Any, Final
from zoneinfo import ZoneInfo

from tidings.core.notify.conditions import MISSING, evaluate, resolve
from tidings.core.notify.decisions import DecisionKind, Verdict
from tidings.core.notify.digest import (
    DigestEvent,
    build_digest,
    digest_id,
    digest_window,
    key_value,
)
from tidings.core.notify.model import (
    ChannelStep,
    DelayStep,
    DigestStep,
    Step,
    ThrottleStep,
    Workflow,
)
from tidings.core.notify.schedule import zone
from tidings.core.notify.types import DeliveryStatus, Recipient, Trigger
from tidings.core.sendtime import resolve_local
from tidings.records import record


class StepOutcome(enum.StrEnum):
    SENT = "sent"  # channel step: handed to delivery now
    HELD = "held"  # channel step: handed to delivery for release at `sent_at`
    SUPPRESSED = "suppressed"  # channel step: a decision suppressed it
    FAILED = "failed"  # channel step failed a decision, or a delay had no valid `until`
    SKIPPED = "skipped"  # the condition was false
    NOT_NEEDED = "not_needed"  # escalation: the awaited status arrived in time
    DELAYED = "delayed"  # a delay elapsed
    PASSED = "passed"  # a throttle let the run through
    THROTTLED = "throttled"  # a throttle stopped the run
    DIGEST_LEADER = "digest_leader"  # this run carries the digest; waits for the window end
    DIGEST_MEMBER = "digest_member"  # this run's event went into another run's digest
    DIGESTED = "digested"  # the leader closed the digest; `digest` holds the payload


class RunOutcome(enum.StrEnum):
    COMPLETED = "completed"
    THROTTLED = "throttled"
    MERGED = "merged"  # into another run's digest
    FAILED = "failed"


# A status implies the ones it cannot happen without (a click means the message was seen).
IMPLIED_BY: Final[Mapping[str, tuple[str, ...]]] = {
    "seen": ("seen", "read", "clicked", "archived"),
    "read": ("read", "clicked"),
    "delivered": ("delivered", "seen", "read", "clicked", "archived"),
}


@record
class StepResult:
    """What happened at one step of a run, as stored by the service.

    ``at`` is when the step finished; the next step starts from there. For channel steps
    ``sent_at`` is when the message went (or, when held, will go) out, ``delivery`` the
    current delivery status and ``statuses`` the first instant each delivery or engagement
    status (``delivered``, ``seen``, ``read``...) was reported; the service updates those as
    provider callbacks and inbox actions arrive."""

    step_id: str
    outcome: StepOutcome
    at: float
    reason: str = ""
    sent_at: float | None = None
    delivery: DeliveryStatus | None = None
    statuses: Mapping[str, float] = field(default_factory=dict)
    digest_id: str | None = None
    window_end: float | None = None
    digest: Mapping[str, Any] | None = None

    def reached(self, status: str) -> float | None:
        """When ``status`` (or a status implying it) was first reported, else None."""
        times = [self.statuses[s] for s in IMPLIED_BY.get(status, (status,)) if s in self.statuses]
        return min(times) if times else None

    @property
    def message_sent(self) -> bool:
        return self.outcome in (StepOutcome.SENT, StepOutcome.HELD)

    def view(self) -> dict[str, Any]:
        """The ``steps.<id>`` part of the condition context."""
        out: dict[str, Any] = {
            "outcome": self.outcome.value,
            "reason": self.reason,
            "sent": self.message_sent,
            "status": self.delivery.value if self.delivery else None,
        }
        for status in ("delivered", "bounced", "failed", "seen", "read", "clicked", "archived"):
            out[status] = self.reached(status) is not None
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "step_id": self.step_id,
            "outcome": self.outcome.value,
            "at": self.at,
            "reason": self.reason,
            "sent_at": self.sent_at,
            "delivery": self.delivery.value if self.delivery else None,
            "statuses": dict(self.statuses),
            "digest_id": self.digest_id,
            "window_end": self.window_end,
            "digest": dict(self.digest) if self.digest is not None else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StepResult:
        delivery = data.get("delivery")
        return cls(
            step_id=data["step_id"],
            outcome=StepOutcome(data["outcome"]),
            at=float(data["at"]),
            reason=data.get("reason", ""),
            sent_at=data.get("sent_at"),
            delivery=DeliveryStatus(delivery) if delivery else None,
            statuses={str(k): float(v) for k, v in (data.get("statuses") or {}).items()},
            digest_id=data.get("digest_id"),
            window_end=data.get("window_end"),
            digest=data.get("digest"),
        )


# -- actions -------------------------------------------------------------------------------


@record
class RunChannelStep:
    step: ChannelStep
    context: Mapping[str, Any]  # the condition context, also what templates render with


@record
class Record:
    result: StepResult


@record
class WaitUntil:
    step_id: str
    until: float
    reason: str


@record
class WaitForStatus:
    step_id: str
    watch: str  # the step whose message is awaited
    status: str
    until: float


@record
class CheckThrottle:
    """Count this step's ``passed`` results for the same workflow, recipient and ``key`` with
    ``since < at <= until``; pass :func:`throttle_result` the count."""

    step_id: str
    key: str
    since: float
    until: float
    limit: int


@record
class JoinDigest:
    """Add the event to digest ``digest_id`` (insert-if-absent); the run that creates it is
    the leader."""

    step_id: str
    digest_id: str
    key: str
    window_start: float
    window_end: float
    at: float


@record
class CloseDigest:
    """Mark the digest closed and collect its events for :func:`digest_closed`."""

    step_id: str
    digest_id: str
    window_end: float
    max_events: int


@record
class Done:
    outcome: RunOutcome
    reason: str = ""


Action = (
    RunChannelStep
    | Record
    | WaitUntil
    | WaitForStatus
    | CheckThrottle
    | JoinDigest
    | CloseDigest
    | Done
)


# -- the state machine ---------------------------------------------------------------------


def condition_context(
    trigger: Trigger, recipient: Recipient, results: Mapping[str, StepResult]
) -> dict[str, Any]:
    """What conditions (and templates) see: ``payload``, ``subscriber``, ``actor``, ``event``,
    ``steps.<id>`` for every stored result and ``digest`` once a digest closed."""
    ctx: dict[str, Any] = {
        "payload": trigger.payload,
        "subscriber": recipient.context(),
        "actor": trigger.actor,
        "event": {"id": trigger.event_id, "type": trigger.type},
        "steps": {sid: r.view() for sid, r in results.items()},
    }
    for r in results.values():
        if r.outcome is StepOutcome.DIGESTED and r.digest is not None:
            ctx["digest"] = r.digest
    return ctx


def next_action(
    workflow: Workflow,
    trigger: Trigger,
    recipient: Recipient,
    results: Mapping[str, StepResult],
    now: float,
) -> Action:
    """What the run should do next. Steps run in order; a step without a stored result is
    the current one."""
    anchor = trigger.at
    for step in workflow.steps:
        result = results.get(step.id)
        if result is None:
            return _start(workflow, step, trigger, recipient, results, anchor, now)
        ended = _settled(step, result, now)
        if ended is not None:
            return ended
        anchor = max(anchor, result.at)
    return Done(RunOutcome.COMPLETED)


def _settled(step: Step, result: StepResult, now: float) -> Action | None:
    """The action a stored result still asks for (end of run, digest to wait for or close)."""
    if result.outcome is StepOutcome.THROTTLED:
        return Done(RunOutcome.THROTTLED, f"throttled at {step.id}")
    if result.outcome is StepOutcome.DIGEST_MEMBER:
        return Done(RunOutcome.MERGED, f"merged into digest {result.digest_id}")
    if result.outcome is StepOutcome.FAILED and isinstance(step, DelayStep):
        return Done(RunOutcome.FAILED, result.reason)
    if result.outcome is StepOutcome.DIGEST_LEADER and isinstance(step, DigestStep):
        end = result.window_end if result.window_end is not None else result.at
        if now < end:
            return WaitUntil(step.id, end, DIGEST_WAIT)
        return CloseDigest(step.id, result.digest_id or "", end, step.max_events)
    return None


def _start(
    workflow: Workflow,
    step: Step,
    trigger: Trigger,
    recipient: Recipient,
    results: Mapping[str, StepResult],
    anchor: float,
    now: float,
) -> Action:
    ctx = condition_context(trigger, recipient, results)
    if isinstance(step, ChannelStep) and step.wait_for is not None:
        gate = _wait_gate(step, results, anchor, now)
        if gate is not None:
            return gate
    if not evaluate(step.condition, ctx):
        return Record(StepResult(step.id, StepOutcome.SKIPPED, anchor, reason="condition_false"))
    if isinstance(step, ChannelStep):
        return RunChannelStep(step, ctx)
    if isinstance(step, DelayStep):
        return _delay(step, ctx, anchor, now)
    if isinstance(step, ThrottleStep):
        return CheckThrottle(
            step.id, key_value(step.key, ctx), anchor - step.window, anchor, step.limit
        )
    key = key_value(step.key, ctx)
    start, end = digest_window(step.window, anchor)
    return JoinDigest(
        step.id, digest_id(workflow.key, step.id, recipient.id, key, start), key, start, end, anchor
    )


def _wait_gate(
    step: ChannelStep, results: Mapping[str, StepResult], anchor: float, now: float
) -> Action | None:
    """Escalation: the step is not needed when the awaited status arrived by the deadline (or
    the awaited step was itself not needed); wait while the status may still arrive; None (go
    on) once the deadline passed without it, or when the awaited step sent nothing (skipped by
    its condition, suppressed, failed), so the next channel takes over at once."""
    assert step.wait_for is not None
    gate = step.wait_for
    watched = results.get(gate.step)
    if watched is not None and watched.outcome is StepOutcome.NOT_NEEDED:
        # the recipient engaged before the awaited step was due: no escalation further down
        return Record(
            StepResult(
                step.id, StepOutcome.NOT_NEEDED, max(anchor, watched.at), reason=watched.reason
            )
        )
    if watched is None or not watched.message_sent:
        return None
    deadline = (watched.sent_at if watched.sent_at is not None else watched.at) + gate.timeout
    reached = watched.reached(gate.status)
    if reached is not None and reached <= deadline:
        return Record(
            StepResult(
                step.id,
                StepOutcome.NOT_NEEDED,
                max(anchor, reached),
                reason=f"{gate.step}_{gate.status}",
            )
        )
    if now < deadline:
        return WaitForStatus(step.id, gate.step, gate.status, deadline)
    return None


def _delay(step: DelayStep, ctx: Mapping[str, Any], anchor: float, now: float) -> Action:
    if step.duration is not None:
        release = anchor + step.duration
    elif step.at_local is not None:
        tz = zone(ctx["subscriber"].get("timezone"))
        release = next_local(anchor, time(step.at_local // 60, step.at_local % 60), tz)
    else:
        assert step.until is not None
        value = resolve(step.until, ctx)
        instant = parse_instant(value)
        if instant is None:
            path = ".".join(step.until)
            return Record(
                StepResult(
                    step.id,
                    StepOutcome.FAILED,
                    anchor,
                    reason=f"delay_until_invalid: {path} {not_an_instant(value)}",
                )
            )
        release = max(anchor, instant)
    if now < release:
        return WaitUntil(step.id, release, "delay")
    return Record(StepResult(step.id, StepOutcome.DELAYED, release))


def next_local(anchor: float, at: time, tz: tzinfo) -> float:
    """The first instant at or after ``anchor`` at which the wall clock in ``tz`` shows
    ``at`` (a time in a DST gap moves to the jump, an ambiguous one takes the first)."""
    zone_info = tz if isinstance(tz, ZoneInfo) else ZoneInfo("UTC")
    day = datetime.fromtimestamp(anchor, zone_info).date()
    for offset in range(3):
        release = resolve_local(day + timedelta(days=offset), at, zone_info).timestamp()
        if release >= anchor:
            return release
    raise AssertionError("a wall-clock time recurs within three days")  # pragma: no cover


def parse_instant(value: Any) -> float | None:
    """Epoch seconds from a number or an ISO 8601 date-time with a UTC offset; None for
    anything else (a date-time without offset is ambiguous and refused)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) if value == value and abs(value) < 1e11 else None
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.timestamp()


def not_an_instant(value: Any) -> str:
    """Why `parse_instant` refused `value`, for the trail."""
    if value is None or value is MISSING:
        return "is missing"
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value == value and abs(value) >= 1e11:
            return f"is {value!r}: too large for epoch seconds (milliseconds?)"
        return f"is {value!r}: not a finite number of epoch seconds"
    if isinstance(value, str):
        shown = value if len(value) <= 64 else value[:61] + "..."
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return f"is {shown!r}: not an ISO 8601 date-time or epoch seconds"
        if parsed.tzinfo is None:
            return f"is {shown!r}: a date-time without a UTC offset (ambiguous)"
        return f"is {shown!r}: longer than 64 characters"
    return f"is a {type(value).__name__}, not a date-time or epoch seconds"


# -- results the service stores after acting ----------------------------------------------


def channel_result(step: ChannelStep, verdict: Verdict, now: float) -> StepResult:
    """The result of a channel step from the decision pipeline's verdict."""
    decision = verdict.decision
    reason = decision.reason.value
    if decision.kind is DecisionKind.SEND:
        return StepResult(
            step.id, StepOutcome.SENT, now, reason, sent_at=now, delivery=DeliveryStatus.QUEUED
        )
    if decision.kind is DecisionKind.HOLD:
        return StepResult(
            step.id,
            StepOutcome.HELD,
            now,
            reason,
            sent_at=decision.until,
            delivery=DeliveryStatus.QUEUED,
        )
    outcome = (
        StepOutcome.SUPPRESSED if decision.kind is DecisionKind.SUPPRESS else StepOutcome.FAILED
    )
    return StepResult(step.id, outcome, now, reason, delivery=DeliveryStatus.NOT_SENT)


def throttle_result(action: CheckThrottle, passed_before: int) -> StepResult:
    """``passed_before``: runs that passed this throttle with the same key in the window."""
    if passed_before < action.limit:
        return StepResult(action.step_id, StepOutcome.PASSED, action.until, reason=action.key)
    return StepResult(
        action.step_id,
        StepOutcome.THROTTLED,
        action.until,
        reason=f"{passed_before} of {action.limit} in window",
    )


def digest_joined(action: JoinDigest, *, leader: bool, closed: bool = False) -> StepResult:
    """The result of a join. ``closed``: the digest was already closed (the run arrived after
    its leader sent it, e.g. after a worker outage); the run then leads a digest of its own
    event alone that closes at once, so the event is still told, never dropped."""
    if closed:
        own = digest_id(action.digest_id, action.step_id, "late", action.key, action.at)
        return StepResult(
            action.step_id,
            StepOutcome.DIGEST_LEADER,
            action.at,
            reason="late_join",
            digest_id=own,
            window_end=action.at,
        )
    return StepResult(
        action.step_id,
        StepOutcome.DIGEST_LEADER if leader else StepOutcome.DIGEST_MEMBER,
        action.at,
        digest_id=action.digest_id,
        window_end=action.window_end,
    )


DIGEST_WAIT: Final = "digest window open"  # why a digest's leader waits


@record
class Handover:
    """A digest passing to another run because its leader's event was cancelled: the new
    leader's step result (`result`, as stored JSON), why, and when its window ends."""

    digest_id: str
    window_end: float
    reason: str
    result: Mapping[str, Any]

    def trail(self) -> dict[str, Any]:
        """The data of the new leader's `run` trail entry."""
        return {"state": "waiting", "until": self.window_end, "reason": self.reason}


def digest_handed_over(
    leader: Mapping[str, Any], joined: float, cancelled_event: str, at: float
) -> Handover:
    """The hand-over of the digest whose leader's stored result (JSON) is `leader`, to the
    run whose event joined at `joined`, as `cancelled_event` is cancelled at `at`."""
    digest = str(leader.get("digest_id") or "")
    end = float(leader.get("window_end") or at)
    why = f"leads digest {digest}: its leader's event {cancelled_event} was cancelled"
    return Handover(digest, end, why, {**leader, "at": joined, "reason": why})


def digest_closed(action: CloseDigest, events: list[DigestEvent]) -> StepResult:
    payload = build_digest(events, action.max_events)
    return StepResult(
        action.step_id,
        StepOutcome.DIGESTED,
        action.window_end,
        reason=f"{payload['count']} events",
        digest_id=action.digest_id,
        window_end=action.window_end,
        digest=payload,
    )
