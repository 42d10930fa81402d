"""The per-message decision pipeline: pure functions, each returning a recorded
:class:`Decision` for the recipient's trail.

Order (the first decision that is not ``send`` ends the pipeline):

1. preferences: commercial consent, global, per workflow, per channel; critical overrides;
2. address: the recipient can be reached on the channel at all (no email -> ``fail``);
3. schedule: quiet hours and send windows in the recipient's time zone (hold until the exact
   instant they allow);
4. frequency caps per channel (suppress, or hold until the window frees a slot);
5. suppression: unsubscribed, hard-bounced address, invalid token, already seen in-app, user
   active right now;
6. idempotency: one effect per ``event_id + recipient + channel + template_version``.

All inputs are plain data the service gathers (preference rows, recent send times, presence,
bounce lists); nothing here reads a clock or a store.
"""

from __future__ import annotations

import enum
import functools
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import field
from datetime import tzinfo
from typing import Any

import orjson

from tidings.core.notify.durations import format_duration
from tidings.core.notify.model import ChannelStep, Workflow
from tidings.core.notify.schedule import QuietHours, release_instant, wall_clock, zone
from tidings.core.notify.types import Channel, Recipient
from tidings.records import record


class DecisionKind(enum.StrEnum):
    SEND = "send"
    HOLD = "hold"
    SUPPRESS = "suppress"
    FAIL = "fail"


class Stage(enum.StrEnum):
    PREFERENCES = "preferences"
    ADDRESS = "address"
    SCHEDULE = "schedule"
    FREQUENCY_CAP = "frequency_cap"
    SUPPRESSION = "suppression"
    IDEMPOTENCY = "idempotency"


class Reason(enum.StrEnum):
    # preferences
    ALLOWED = "allowed"
    CRITICAL_OVERRIDE = "critical_override"
    NO_COMMERCIAL_CONSENT = "no_commercial_consent"
    GLOBAL_OPT_OUT = "global_opt_out"
    WORKFLOW_OPT_OUT = "workflow_opt_out"
    CHANNEL_OPT_OUT = "channel_opt_out"
    # address
    REACHABLE = "reachable"
    NO_ADDRESS = "no_address"
    # schedule
    IN_SEND_TIME = "in_send_time"
    QUIET_HOURS = "quiet_hours"
    OUTSIDE_SEND_WINDOW = "outside_send_window"
    NO_SEND_TIME = "no_send_time"
    # frequency caps
    UNDER_CAP = "under_cap"
    FREQUENCY_CAP = "frequency_cap"
    # suppression
    NOT_SUPPRESSED = "not_suppressed"
    UNSUBSCRIBED = "unsubscribed"
    HARD_BOUNCED = "hard_bounced"
    INVALID_TOKEN = "invalid_token"  # noqa: S105 - a reason code, not a secret
    SEEN_IN_APP = "seen_in_app"
    USER_ACTIVE = "user_active"
    # idempotency
    FIRST_EFFECT = "first_effect"
    DUPLICATE = "duplicate"


@record
class Decision:
    """One recorded decision. ``until`` is the release instant of a ``hold``."""

    stage: Stage
    kind: DecisionKind
    reason: Reason
    detail: str = ""
    until: float | None = None

    def to_json(self) -> dict[str, Any]:
        # str() of a StrEnum member is its value as a plain str, without `.value`'s
        # descriptor (three per decision, six decisions per message)
        out: dict[str, Any] = {
            "stage": str(self.stage),
            "kind": str(self.kind),
            "reason": str(self.reason),
            "detail": self.detail,
        }
        if self.until is not None:
            out["until"] = self.until
        return out


@functools.lru_cache(maxsize=256)  # decisions are immutable: the common ones are shared
def _send(stage: Stage, reason: Reason, detail: str = "") -> Decision:
    return Decision(stage, DecisionKind.SEND, reason, detail)


# -- 1. preferences ------------------------------------------------------------------------


@record
class WorkflowPreference:
    """A subscriber's choices for one workflow; None/absent = no choice made."""

    enabled: bool | None = None
    channels: Mapping[Channel, bool] = field(default_factory=dict)


@record
class Preferences:
    """A subscriber's preferences: a global switch, global per-channel switches, per-workflow
    choices, commercial consent and quiet hours."""

    enabled: bool = True
    channels: Mapping[Channel, bool] = field(default_factory=dict)
    workflows: Mapping[str, WorkflowPreference] = field(default_factory=dict)
    commercial_consent: bool = False
    quiet_hours: tuple[QuietHours, ...] = ()


def check_preferences(workflow: Workflow, channel: Channel, prefs: Preferences) -> Decision:
    """Critical workflows always pass. Otherwise: commercial consent for commercial workflows,
    then the global switch, then the workflow switch, then the channel, where the most
    specific setting wins: the subscriber's choice for this workflow and channel, else their
    choice for the channel in general, else the workflow's default for the channel, else on.
    """
    stage = Stage.PREFERENCES
    if workflow.critical:
        return _send(stage, Reason.CRITICAL_OVERRIDE, "critical workflow")
    if workflow.commercial and not prefs.commercial_consent:
        return Decision(
            stage, DecisionKind.SUPPRESS, Reason.NO_COMMERCIAL_CONSENT, "commercial workflow"
        )
    if not prefs.enabled:
        return Decision(
            stage, DecisionKind.SUPPRESS, Reason.GLOBAL_OPT_OUT, "all notifications off"
        )
    per_workflow = prefs.workflows.get(workflow.key, WorkflowPreference())
    if per_workflow.enabled is False:
        return Decision(stage, DecisionKind.SUPPRESS, Reason.WORKFLOW_OPT_OUT, workflow.key)
    if channel in per_workflow.channels:
        enabled, level = per_workflow.channels[channel], f"subscriber, {workflow.key}"
    elif channel in prefs.channels:
        enabled, level = prefs.channels[channel], "subscriber, all workflows"
    else:
        enabled, level = workflow.channel_default(channel).enabled, "workflow default"
    if not enabled:
        return Decision(
            stage, DecisionKind.SUPPRESS, Reason.CHANNEL_OPT_OUT, f"{channel.value} off ({level})"
        )
    return _send(stage, Reason.ALLOWED, f"{channel.value} on ({level})")


# -- 2. address ----------------------------------------------------------------------------


def check_address(channel: Channel, recipient: Recipient) -> Decision:
    """``fail`` with ``no_address`` when the recipient has nothing to send this channel to.
    In-app always has an address (the inbox); webhook endpoints belong to the workflow."""
    stage = Stage.ADDRESS
    missing = {
        Channel.EMAIL: not recipient.email,
        Channel.SMS: not recipient.phone,
        Channel.PUSH: recipient.push_tokens <= 0,
        Channel.WEBPUSH: recipient.webpush_subscriptions <= 0,
    }.get(channel, False)
    if missing:
        what = {
            Channel.EMAIL: "email address",
            Channel.SMS: "phone number",
            Channel.PUSH: "push token",
            Channel.WEBPUSH: "web push subscription",
        }[channel]
        detail = (
            f"subscriber has no {what}"
            if recipient.known
            else f"no subscriber with this id, so no {what}"
        )
        return Decision(stage, DecisionKind.FAIL, Reason.NO_ADDRESS, detail)
    return _send(stage, Reason.REACHABLE)


# -- 3. schedule ---------------------------------------------------------------------------


def check_schedule(
    workflow: Workflow,
    channel: Channel,
    quiet_hours: Sequence[QuietHours],
    tz: tzinfo,
    now: float,
) -> Decision:
    """Hold while the recipient's clock is in quiet hours or outside the workflow's send
    windows for this channel, until the exact instant both allow (DST-correct). Never drops:
    if no instant ever allows, it is a ``fail`` (``no_send_time``), a definition problem."""
    stage = Stage.SCHEDULE
    if workflow.critical:
        return _send(stage, Reason.CRITICAL_OVERRIDE, "critical workflow")
    quiet = [q for q in quiet_hours if channel in q.channels]
    windows = [w for w in workflow.send_windows if channel in w.channels]
    release = release_instant(now, tz, quiet, windows)
    if release is None:
        return Decision(
            stage,
            DecisionKind.FAIL,
            Reason.NO_SEND_TIME,
            "quiet hours and send windows never allow",
        )
    if release == now:
        return _send(stage, Reason.IN_SEND_TIME)
    in_quiet = any(q.contains(wall_clock(now, tz)) for q in quiet)
    reason = Reason.QUIET_HOURS if in_quiet else Reason.OUTSIDE_SEND_WINDOW
    local = wall_clock(release, tz).isoformat(timespec="minutes")
    return Decision(
        stage, DecisionKind.HOLD, reason, f"held until {local} {_tz_name(tz)}", until=release
    )


def _tz_name(tz: tzinfo) -> str:
    return str(getattr(tz, "key", None) or tz)


# -- 4. frequency caps ---------------------------------------------------------------------


class CapAction(enum.StrEnum):
    HOLD = "hold"
    SUPPRESS = "suppress"


@record
class FrequencyCap:
    """At most ``limit`` messages per recipient within a sliding ``window`` (seconds) on
    ``channel`` (None: all channels together)."""

    limit: int
    window: float
    channel: Channel | None = None
    on_exceed: CapAction = CapAction.HOLD


def check_frequency_cap(
    channel: Channel,
    caps: Sequence[FrequencyCap],
    recent_sends: Mapping[Channel, Sequence[float]],
    now: float,
    *,
    critical: bool = False,
) -> Decision:
    """``recent_sends`` are the instants of earlier sends to this recipient per channel (at
    least the last ``max(window)``). A cap counts sends in ``(now - window, now]``; when the
    count has reached the limit the message is suppressed, or held until the oldest counted
    send leaves the window far enough to free a slot."""
    stage = Stage.FREQUENCY_CAP
    if critical:
        return _send(stage, Reason.CRITICAL_OVERRIDE, "critical workflow")
    release: float | None = None
    detail = ""
    for cap in caps:
        if cap.channel is not None and cap.channel is not channel:
            continue
        if cap.channel is None:
            times = sorted(t for ts in recent_sends.values() for t in ts)
        else:
            times = sorted(recent_sends.get(channel, ()))
        counted = [t for t in times if now - cap.window < t <= now]
        if len(counted) < cap.limit:
            continue
        scope = cap.channel.value if cap.channel else "all channels"
        detail = f"{len(counted)} of {cap.limit} per {format_duration(cap.window)} on {scope}"
        if cap.on_exceed is CapAction.SUPPRESS:
            return Decision(stage, DecisionKind.SUPPRESS, Reason.FREQUENCY_CAP, detail)
        free_at = counted[len(counted) - cap.limit] + cap.window
        release = free_at if release is None else max(release, free_at)
    if release is not None:
        return Decision(stage, DecisionKind.HOLD, Reason.FREQUENCY_CAP, detail, until=release)
    return _send(stage, Reason.UNDER_CAP)


# -- 5. suppression ------------------------------------------------------------------------


@record
class SuppressionFacts:
    """What the service found out about this recipient and channel just before sending."""

    unsubscribed: bool = False  # the address asked to hear nothing more (list-unsubscribe, STOP)
    hard_bounced: bool = False  # the address bounced permanently
    token_invalid: bool = False  # every push token / web push subscription was rejected
    seen_in_app: bool = False  # the run's in-app message was already seen
    user_active: bool = False  # presence says the user is in the app right now


def check_suppression(
    step: ChannelStep, facts: SuppressionFacts, *, critical: bool = False
) -> Decision:
    """Undeliverable addresses are suppressed always; a message whose in-app twin was seen is
    redundant always; unsubscribed addresses and active users suppress everything but
    critical workflows (active users only on channels the step marks, push and web push by
    default)."""
    stage = Stage.SUPPRESSION
    channel = step.channel
    if facts.hard_bounced and channel in (Channel.EMAIL, Channel.SMS):
        return Decision(stage, DecisionKind.SUPPRESS, Reason.HARD_BOUNCED, "address bounced")
    if facts.token_invalid and channel in (Channel.PUSH, Channel.WEBPUSH):
        return Decision(stage, DecisionKind.SUPPRESS, Reason.INVALID_TOKEN, "no valid token")
    if facts.seen_in_app and channel is not Channel.IN_APP:
        return Decision(stage, DecisionKind.SUPPRESS, Reason.SEEN_IN_APP, "in-app message seen")
    if not critical:
        if facts.unsubscribed:
            return Decision(stage, DecisionKind.SUPPRESS, Reason.UNSUBSCRIBED, channel.value)
        if facts.user_active and step.skips_when_active():
            return Decision(stage, DecisionKind.SUPPRESS, Reason.USER_ACTIVE, "user is in the app")
    return _send(stage, Reason.NOT_SUPPRESSED)


# -- 6. idempotency ------------------------------------------------------------------------


KEY_RECIPIENT = 40  # longest recipient id a key spells out


@functools.lru_cache(maxsize=1024)
def key_prefix(*parts: str) -> str:
    """24 hex digits of SHA-256 over the canonical JSON of `parts` (the same parts recur for
    every recipient of a batch: cached)."""
    return hashlib.sha256(orjson.dumps(parts)).hexdigest()[:24]


def recipient_key(prefix: str, recipient: str) -> str:
    """`prefix` (`key_prefix`), then the recipient id; one longer than 40 characters as
    ``~`` and 39 hex digits of its SHA-256 (``~`` is not in a subscriber id). A fanout makes
    its batches in recipient order, so the keys of one event's runs, messages and inbox
    items are appended to their indexes rather than scattered over them: on SQLite each
    scattered insert rewrites a whole page (a 64-hex random key made a message row cost
    3 times as much to write, an inbox item 4 times: bench/row_writes.py)."""
    if len(recipient) > KEY_RECIPIENT:
        recipient = "~" + hashlib.sha256(recipient.encode()).hexdigest()[:39]
    return prefix + recipient


def idempotency_key(
    event_id: str, recipient: str, channel: Channel | str, template_version: str
) -> str:
    """The stable effect key, also the message's id: `recipient_key` of the recipient after
    a prefix over ``[event_id, channel, template_version]``."""
    return recipient_key(key_prefix(event_id, str(channel), template_version), recipient)


def wire_id(key: str) -> str:
    """The id receivers see for a message with idempotency key `key` (SMTP Message-ID,
    Standard Webhooks `webhook-id`): 32 hex digits of SHA-256 over the key, stable across
    retries, of characters every header allows, and not spelling out the recipient."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def check_idempotency(key: str, already_done: bool) -> Decision:
    """``already_done``: the effect store already holds ``key`` (an earlier attempt sent it)."""
    if already_done:
        return Decision(Stage.IDEMPOTENCY, DecisionKind.SUPPRESS, Reason.DUPLICATE, key)
    # not through `_send`'s cache: each message's key is its own
    return Decision(Stage.IDEMPOTENCY, DecisionKind.SEND, Reason.FIRST_EFFECT, key)


# -- the pipeline --------------------------------------------------------------------------


@record
class DeliveryContext:
    """Everything the pipeline reads for one message, gathered by the service."""

    event_id: str
    template_version: str
    now: float
    preferences: Preferences = field(default_factory=Preferences)
    caps: tuple[FrequencyCap, ...] = ()
    recent_sends: Mapping[Channel, Sequence[float]] = field(default_factory=dict)
    facts: SuppressionFacts = field(default_factory=SuppressionFacts)
    already_done: bool = False


@record
class Verdict:
    """The outcome: ``decision`` is the last one taken (a ``send`` only if all passed);
    ``trail`` lists every decision taken, in order."""

    decision: Decision
    trail: tuple[Decision, ...]
    idempotency_key: str

    @property
    def kind(self) -> DecisionKind:
        return self.decision.kind


def decide(
    workflow: Workflow,
    step: ChannelStep,
    recipient: Recipient,
    ctx: DeliveryContext,
    *,
    key: str | None = None,
) -> Verdict:
    """Run the pipeline in order; stop at the first decision that is not ``send``. `key`:
    the message's idempotency key when the caller has computed it already."""
    channel = step.channel
    if key is None:
        key = idempotency_key(ctx.event_id, recipient.id, channel, ctx.template_version)
    stages: tuple[Callable[[], Decision], ...] = (
        lambda: check_preferences(workflow, channel, ctx.preferences),
        lambda: check_address(channel, recipient),
        lambda: check_schedule(
            workflow, channel, ctx.preferences.quiet_hours, zone(recipient.timezone), ctx.now
        ),
        lambda: check_frequency_cap(
            channel, ctx.caps, ctx.recent_sends, ctx.now, critical=workflow.critical
        ),
        lambda: check_suppression(step, ctx.facts, critical=workflow.critical),
        lambda: check_idempotency(key, ctx.already_done),
    )
    trail: list[Decision] = []
    for stage in stages:
        decision = stage()
        trail.append(decision)
        if decision.kind is not DecisionKind.SEND:
            break
    return Verdict(trail[-1], tuple(trail), key)
