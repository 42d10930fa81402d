"""Workflow definitions: the steps a workflow runs for each recipient of an event.

A :class:`Workflow` is immutable. Build one from a mapping with
:func:`tidings.core.notify.parse.parse_workflow`, or in Python with the fluent methods, each
of which returns a new, validated workflow::

    Workflow("comment.created", name="New comment")
        .in_app(template="comment", id="inapp")
        .push(template="comment-push", wait_for=WaitFor("inapp", "seen", 600))
        .email(template="comment-email", if_={"not": {"steps.push.read": True}})
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping
from dataclasses import field
from typing import Any, Final

import orjson

from tidings.core.notify.conditions import (
    TRUE,
    Condition,
    parse_condition,
    parse_path,
    step_references,
)
from tidings.core.notify.durations import parse_duration
from tidings.core.notify.fields import check_known, required
from tidings.core.notify.schedule import SendWindow, parse_clock
from tidings.core.notify.types import Channel, Engagement
from tidings.errors import InvalidInput
from tidings.records import record

# A workflow's key is the event type that triggers it: any event type the API takes.
EVENT_TYPE_CHARS: Final = r"A-Za-z0-9._:\-/@"
KEY_RE: Final = re.compile(rf"[{EVENT_TYPE_CHARS}]{{1,200}}")
KEY_RULE: Final = "must be 1-200 characters of letters, digits and . _ : - / @ (an event type)"
STEP_ID_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
MAX_STEPS: Final = 50


# Statuses a `wait_for` can wait for: delivery progress and every engagement.
WAITABLE: Final = frozenset({"delivered", "bounced", "failed"} | {e.value for e in Engagement})

# Channels whose messages a recipient who is active in the app right now does not need by
# default (the in-app inbox shows the news live). A step can say otherwise.
ACTIVE_SUPPRESSED_BY_DEFAULT: Final = frozenset({Channel.PUSH, Channel.WEBPUSH})


@record
class WaitFor:
    """Escalation gate of a channel step: wait until step ``step`` reaches ``status`` or until
    ``timeout`` seconds after that step's message went out. The gated step runs only if the
    status did NOT arrive in time."""

    step: str
    status: str
    timeout: float


@record
class ChannelStep:
    id: str
    channel: Channel
    template: str | None = None  # a template reference, resolved by the template service
    content: Mapping[str, str] | None = None  # inline content: field name -> template text
    condition: Condition = TRUE
    wait_for: WaitFor | None = None
    suppress_when_active: bool | None = None  # None: the channel default
    endpoint: str | None = None  # webhook steps only: the endpoint name; None = all matching

    @property
    def kind(self) -> str:
        return self.channel.value

    def content_version(self) -> str | None:
        """A stable version for inline content (hash of its canonical JSON), for idempotency
        keys; None for a template reference, whose version the template store knows."""
        if self.content is None:
            return None
        body = orjson.dumps(dict(self.content), option=orjson.OPT_SORT_KEYS)
        return "inline-" + hashlib.sha256(body).hexdigest()[:16]

    def skips_when_active(self) -> bool:
        if self.suppress_when_active is not None:
            return self.suppress_when_active
        return self.channel in ACTIVE_SUPPRESSED_BY_DEFAULT

    def takes_template_for(self, template_channel: str) -> bool:
        """Whether a stored template of `template_channel` can be this step's: its own
        channel's; push templates for web push (the same title and body); any channel's
        for a webhook, whose body carries the rendered fields."""
        if self.channel is Channel.WEBHOOK:
            return True
        wanted = Channel.PUSH if self.channel is Channel.WEBPUSH else self.channel
        return template_channel == wanted.value


@record
class DelayStep:
    """Wait ``duration`` seconds after the previous step, or until the instant in the payload
    field ``until`` (epoch seconds or an ISO 8601 date-time with offset), or until the
    recipient's wall clock next shows ``at_local`` (minutes after midnight; their time zone
    as it is when the step runs; DST as in :mod:`tidings.core.sendtime`)."""

    id: str
    duration: float | None = None
    until: tuple[str, ...] | None = None
    condition: Condition = TRUE
    at_local: int | None = None
    kind: str = field(default="delay", init=False)


@record
class DigestStep:
    """Collect every event for the same recipient and key that reaches this step within one
    window (aligned to the Unix epoch) into a single run; the others end here."""

    id: str
    window: float
    key: tuple[str, ...] | None = None  # field path; None = one digest per recipient
    max_events: int = 50  # events listed in the digest payload (the count is exact)
    condition: Condition = TRUE
    kind: str = field(default="digest", init=False)


@record
class ThrottleStep:
    """Let at most ``limit`` runs per recipient and key pass within a sliding ``window``;
    the rest end here."""

    id: str
    limit: int
    window: float
    key: tuple[str, ...] | None = None
    condition: Condition = TRUE
    kind: str = field(default="throttle", init=False)


Step = ChannelStep | DelayStep | DigestStep | ThrottleStep

CONTROL_KINDS: Final = ("delay", "digest", "throttle")
STEP_KINDS: Final = tuple(c.value for c in Channel) + CONTROL_KINDS


@record
class ChannelDefault:
    """A workflow's default for one channel, used when the subscriber has set nothing."""

    enabled: bool = True


@record
class Workflow:
    key: str  # the event type that triggers it
    name: str = ""
    description: str = ""
    critical: bool = False  # bypasses preferences, quiet hours, send windows, caps
    commercial: bool = False  # marketing: needs the subscriber's commercial consent
    steps: tuple[Step, ...] = ()
    defaults: Mapping[Channel, ChannelDefault] = field(default_factory=dict)
    send_windows: tuple[SendWindow, ...] = ()

    def __post_init__(self) -> None:
        validate_workflow(self)

    # -- builder ---------------------------------------------------------------------------

    def add(self, step: Step) -> Workflow:
        """A copy with ``step`` appended (validated)."""
        return dataclasses.replace(self, steps=(*self.steps, step))

    def _channel(self, channel: Channel, **kwargs: Any) -> Workflow:
        step_id = kwargs.pop("id", None) or self._default_id(channel.value)
        if_ = kwargs.pop("if_", None)
        where = f"steps[{len(self.steps)}]"
        condition = TRUE if if_ is None else parse_condition(if_, f"{where}.if")
        content = kwargs.pop("content", None)
        wait_for = kwargs.pop("wait_for", None)
        if wait_for is not None and not isinstance(wait_for, WaitFor):
            wait_for = parse_wait_for(wait_for, f"{where}.wait_for")
        return self.add(
            ChannelStep(
                step_id,
                channel,
                condition=condition,
                content=dict(content) if content is not None else None,
                wait_for=wait_for,
                **kwargs,
            )
        )

    def in_app(self, template: str | None = None, **kwargs: Any) -> Workflow:
        return self._channel(Channel.IN_APP, template=template, **kwargs)

    def email(self, template: str | None = None, **kwargs: Any) -> Workflow:
        return self._channel(Channel.EMAIL, template=template, **kwargs)

    def sms(self, template: str | None = None, **kwargs: Any) -> Workflow:
        return self._channel(Channel.SMS, template=template, **kwargs)

    def push(self, template: str | None = None, **kwargs: Any) -> Workflow:
        return self._channel(Channel.PUSH, template=template, **kwargs)

    def webpush(self, template: str | None = None, **kwargs: Any) -> Workflow:
        return self._channel(Channel.WEBPUSH, template=template, **kwargs)

    def webhook(self, template: str | None = None, **kwargs: Any) -> Workflow:
        return self._channel(Channel.WEBHOOK, template=template, **kwargs)

    def delay(
        self,
        duration: str | int | None = None,
        *,
        until: str | None = None,
        at_local: str | None = None,
        id: str | None = None,
        if_: Any = None,
    ) -> Workflow:
        where = f"steps[{len(self.steps)}]"
        return self.add(
            DelayStep(
                id or self._default_id("delay"),
                duration=None
                if duration is None
                else parse_duration(duration, f"{where}.duration"),
                until=None if until is None else parse_path(until, f"{where}.until"),
                condition=TRUE if if_ is None else parse_condition(if_, f"{where}.if"),
                at_local=None if at_local is None else parse_clock(at_local, f"{where}.at_local"),
            )
        )

    def digest(
        self,
        window: str | int,
        *,
        key: str | None = None,
        max_events: int = 50,
        id: str | None = None,
        if_: Any = None,
    ) -> Workflow:
        where = f"steps[{len(self.steps)}]"
        return self.add(
            DigestStep(
                id or self._default_id("digest"),
                window=parse_duration(window, f"{where}.window"),
                key=None if key is None else parse_path(key, f"{where}.key"),
                max_events=max_events,
                condition=TRUE if if_ is None else parse_condition(if_, f"{where}.if"),
            )
        )

    def throttle(
        self,
        limit: int,
        window: str | int,
        *,
        key: str | None = None,
        id: str | None = None,
        if_: Any = None,
    ) -> Workflow:
        where = f"steps[{len(self.steps)}]"
        return self.add(
            ThrottleStep(
                id or self._default_id("throttle"),
                limit=limit,
                window=parse_duration(window, f"{where}.window"),
                key=None if key is None else parse_path(key, f"{where}.key"),
                condition=TRUE if if_ is None else parse_condition(if_, f"{where}.if"),
            )
        )

    def _default_id(self, kind: str) -> str:
        return default_step_id(kind, {s.id for s in self.steps})

    # -- lookups ---------------------------------------------------------------------------

    def step(self, step_id: str) -> Step:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)

    def channel_default(self, channel: Channel) -> ChannelDefault:
        return self.defaults.get(channel, ChannelDefault())


def parse_wait_for(value: Any, where: str) -> WaitFor:
    """``{step: inapp, status: seen, timeout: 10m}``."""
    if not isinstance(value, Mapping):
        raise InvalidInput("must be a mapping with step, status and timeout", field=where)
    check_known(value, ("step", "status", "timeout"), where)
    for key in ("step", "status", "timeout"):
        required(value, key, where)
    if not isinstance(value["step"], str):
        raise InvalidInput("must be a step id", field=f"{where}.step")
    if value["status"] not in WAITABLE:
        raise InvalidInput(f"must be one of {', '.join(sorted(WAITABLE))}", field=f"{where}.status")
    return WaitFor(
        value["step"], value["status"], parse_duration(value["timeout"], f"{where}.timeout")
    )


def default_step_id(kind: str, taken: set[str]) -> str:
    """The id a step without one gets: its kind, then ``kind_2``, ``kind_3``... Give steps
    explicit ids when a workflow may be edited while runs are in flight."""
    if kind not in taken:
        return kind
    n = 2
    while f"{kind}_{n}" in taken:
        n += 1
    return f"{kind}_{n}"


def validate_workflow(wf: Workflow) -> None:
    """Check the rules no single field can: unique ids, references to earlier steps only,
    flags that exclude each other. Raises :class:`InvalidInput` naming the path."""
    if not isinstance(wf.key, str) or not KEY_RE.fullmatch(wf.key):
        raise InvalidInput(KEY_RULE, field="key")
    if wf.critical and wf.commercial:
        raise InvalidInput("a workflow cannot be both critical and commercial", field="critical")
    if len(wf.steps) > MAX_STEPS:
        raise InvalidInput(f"at most {MAX_STEPS} steps", field="steps")
    seen: dict[str, Step] = {}
    for index, step in enumerate(wf.steps):
        _validate_step(step, f"steps[{index}]", seen)
        seen[step.id] = step


def _validate_step(step: Step, where: str, earlier: dict[str, Step]) -> None:
    if not isinstance(step.id, str) or not STEP_ID_RE.fullmatch(step.id):
        raise InvalidInput(
            "must start with a letter or _ and hold letters, digits, _ or - (64 at most)",
            field=f"{where}.id",
        )
    if step.id in earlier:
        raise InvalidInput(f"duplicate step id {step.id!r}", field=f"{where}.id")
    for ref in sorted(step_references(step.condition)):
        if ref not in earlier:
            raise InvalidInput(
                f"the condition reads steps.{ref}, which is not an earlier step",
                field=f"{where}.if",
            )
    if isinstance(step, ChannelStep):
        _validate_channel_step(step, where, earlier)
    elif isinstance(step, DelayStep):
        given = [x for x in (step.duration, step.until, step.at_local) if x is not None]
        if len(given) != 1:
            raise InvalidInput(
                "a delay needs exactly one of duration, until and at_local", field=where
            )
        if step.at_local is not None and not 0 <= step.at_local < 24 * 60:
            raise InvalidInput("must be a time of day, HH:MM", field=f"{where}.at_local")
        if step.until is not None and step.until[0] not in ("payload", "subscriber"):
            raise InvalidInput(
                "until must be a payload or subscriber field", field=f"{where}.until"
            )
    elif isinstance(step, DigestStep):
        if not _positive_int(step.max_events) or step.max_events > 1000:
            raise InvalidInput("must be a whole number from 1 to 1000", field=f"{where}.max_events")
        _validate_key(step.key, f"{where}.key")
    else:
        if not _positive_int(step.limit):
            raise InvalidInput("must be a whole number >= 1", field=f"{where}.limit")
        _validate_key(step.key, f"{where}.key")


def _validate_channel_step(step: ChannelStep, where: str, earlier: dict[str, Step]) -> None:
    if step.template is not None and (not isinstance(step.template, str) or not step.template):
        raise InvalidInput("must be a non-empty template name", field=f"{where}.template")
    if step.content is not None:
        if not isinstance(step.content, Mapping) or not step.content:
            raise InvalidInput(
                "must be a non-empty mapping of text fields", field=f"{where}.content"
            )
        for name, text in step.content.items():
            if not isinstance(name, str) or not isinstance(text, str):
                raise InvalidInput("values must be text", field=f"{where}.content.{name}")
    if step.template is not None and step.content is not None:
        raise InvalidInput("give either template or content, not both", field=f"{where}.content")
    if step.template is None and step.content is None and step.channel is not Channel.WEBHOOK:
        raise InvalidInput(
            f"a {step.channel.value} step needs a template or inline content",
            field=f"{where}.template",
        )
    if step.endpoint is not None and (not isinstance(step.endpoint, str) or not step.endpoint):
        raise InvalidInput("must be an endpoint name", field=f"{where}.endpoint")
    if step.endpoint is not None and step.channel is not Channel.WEBHOOK:
        raise InvalidInput("only webhook steps name an endpoint", field=f"{where}.endpoint")
    if step.wait_for is not None:
        w = step.wait_for
        target = earlier.get(w.step)
        if not isinstance(target, ChannelStep):
            raise InvalidInput(
                f"{w.step!r} is not an earlier channel step", field=f"{where}.wait_for.step"
            )
        if w.status not in WAITABLE:
            raise InvalidInput(
                f"must be one of {', '.join(sorted(WAITABLE))}", field=f"{where}.wait_for.status"
            )
        if not w.timeout > 0:
            raise InvalidInput("must be longer than zero", field=f"{where}.wait_for.timeout")


def _validate_key(key: tuple[str, ...] | None, where: str) -> None:
    if key is not None and key[0] not in ("payload", "subscriber", "actor", "event"):
        raise InvalidInput("a key reads the payload, subscriber, actor or event", field=where)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def canonical(value: Any) -> bytes:
    """Canonical JSON (sorted keys) used for stable hashes."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
