"""Workflow definitions from mappings (as loaded from YAML or JSON) and from YAML/JSON text.

Every error is an :class:`~tidings.errors.InvalidInput` whose ``field`` is the exact path of
the bad part (``steps[2].window``, ``steps[0].if.and[1].payload.x.gt``,
``steps[0].content.subject``) and whose message starts with the source (a file name) when one
is given.

Inline content is checked as far as it can be without a payload (:func:`check_content`): the
channel's fields only, the fields the channel needs, and every field a template that
compiles. Whether a named ``template`` exists is for the template store to say
(``services/workflows.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import yaml

from tidings.core.notify import fields
from tidings.core.notify.conditions import TRUE, parse_condition, parse_path, paths
from tidings.core.notify.durations import parse_duration
from tidings.core.notify.fields import check_bool, check_known, required
from tidings.core.notify.model import (
    STEP_KINDS,
    ChannelDefault,
    ChannelStep,
    DelayStep,
    DigestStep,
    Step,
    ThrottleStep,
    Workflow,
    default_step_id,
    parse_wait_for,
)
from tidings.core.notify.schedule import parse_clock, parse_send_window
from tidings.core.notify.types import Channel
from tidings.core.templates import FIELDS, HTML_FIELDS, RenderError, check_source
from tidings.core.templates import Channel as TemplateChannel
from tidings.errors import InvalidInput

_WORKFLOW_FIELDS: Final = frozenset(
    {"key", "name", "description", "critical", "commercial", "steps", "defaults", "send_windows"}
)
_COMMON: Final = frozenset({"id", "type", "if"})
_CHANNEL_FIELDS: Final = _COMMON | {
    "template",
    "content",
    "wait_for",
    "suppress_when_active",
    "endpoint",
}
_FIELDS: Final[dict[str, frozenset[str]]] = {
    "delay": _COMMON | {"duration", "until", "at_local"},
    "digest": _COMMON | {"window", "key", "max_events"},
    "throttle": _COMMON | {"limit", "window", "key"},
}

# The fields of each channel's inline content (a web push shows what a push shows), and what
# a message cannot go without: (at least one of these fields, the field to name, the reason).
# An email also needs its subject.
CONTENT_FIELDS: Final[dict[Channel, tuple[str, ...]]] = {
    **{Channel(c.value): names for c, names in FIELDS.items()},
    Channel.WEBPUSH: FIELDS[TemplateChannel.PUSH],
}
_NEEDED: Final[dict[Channel, tuple[tuple[str, ...], str, str]]] = {
    Channel.EMAIL: (("html", "text"), "html", "an email needs html or text"),
    Channel.SMS: (("text",), "text", "an SMS needs text"),
    Channel.PUSH: (("title", "body"), "body", "a push needs a title or a body"),
    Channel.WEBPUSH: (("title", "body"), "body", "a web push needs a title or a body"),
    Channel.IN_APP: (("body",), "body", "an in-app message needs a body"),
}


def parse_workflow(
    mapping: Any, *, source: str | None = None, check_content: bool = True
) -> Workflow:
    """A validated :class:`Workflow` from its written form (see docs/workflows.md).
    ``check_content=False`` skips :func:`check_content`: for re-reading definitions that were
    accepted before, which keep running as they are."""
    try:
        workflow = _workflow(mapping)
        if check_content:
            _check_content(workflow)
        return workflow
    except InvalidInput as exc:
        raise _located(exc, source) from None


def parse_workflows_text(text: str, *, source: str | None = None) -> list[Workflow]:
    """Workflows from YAML or JSON text: one workflow mapping, a list of them, or a mapping
    with a ``workflows`` list. Keys must be unique across the document."""
    return [workflow for workflow, _ in parse_workflow_definitions(text, source=source)]


def parse_workflow_definitions(
    text: str, *, source: str | None = None
) -> list[tuple[Workflow, dict[str, Any]]]:
    """:func:`parse_workflows_text`, each workflow with its written definition (the mapping
    the text holds for it, as loaded)."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InvalidInput(f"{source or 'document'}: not valid YAML/JSON{where}") from None
    prefix = ""
    if isinstance(document, Mapping) and "workflows" in document:
        extra = [k for k in document if k != "workflows"]
        if extra:
            raise _located(InvalidInput(f"unknown field {extra[0]!r}", field=str(extra[0])), source)
        document, prefix = document["workflows"], "workflows"
    items = document if isinstance(document, list) else [document]
    if not items:
        raise _located(InvalidInput("holds no workflow", field=prefix or None), source)
    out: list[tuple[Workflow, dict[str, Any]]] = []
    keys: set[str] = set()
    for index, item in enumerate(items):
        where = f"{prefix}[{index}]" if isinstance(document, list) else prefix
        try:
            wf = _workflow(item)
            _check_content(wf)
        except InvalidInput as exc:
            field = f"{where}.{exc.field}" if where and exc.field else (where or exc.field)
            raise _located(InvalidInput(exc.message, field=field), source) from None
        if wf.key in keys:
            raise _located(
                InvalidInput(f"duplicate workflow key {wf.key!r}", field=f"{where}.key"), source
            )
        keys.add(wf.key)
        out.append((wf, dict(item)))
    return out


def check_content(workflow: Workflow) -> None:
    """Refuse inline content that no payload could render: a field the channel does not
    have (SMS has ``text``, not ``body``), a field whose template does not compile, none of
    the fields the channel needs or only blank ones (an email's ``subject`` and ``html`` or
    ``text``, an in-app ``body``, an SMS ``text``, a push's ``title`` or ``body``); and
    inline content on a
    webhook step (a webhook sends the event; its step names a stored template instead); a
    condition that reads `digest` with no digest step before it (always false).
    Raises :class:`InvalidInput` naming the field (``steps[0].content.subject``)."""
    try:
        _check_content(workflow)
    except InvalidInput as exc:
        raise _located(exc, None) from None


def _check_content(workflow: Workflow) -> None:
    digest_before = False
    for index, step in enumerate(workflow.steps):
        if not digest_before and any(p[0] == "digest" for p in paths(step.condition)):
            raise InvalidInput(
                "the condition reads digest, and no earlier step is a digest",
                field=f"steps[{index}].if",
            )
        digest_before = digest_before or isinstance(step, DigestStep)
        if isinstance(step, ChannelStep) and step.content is not None:
            _check_step_content(step.channel, step.content, f"steps[{index}].content")


def _check_step_content(channel: Channel, content: Mapping[str, str], where: str) -> None:
    if channel is Channel.WEBHOOK:
        raise InvalidInput(
            "a webhook step takes no inline content: it sends the event, and names a stored "
            "template to add a rendered one",
            field=where,
        )
    known = CONTENT_FIELDS[channel]
    for name in content:
        if name not in known:
            raise InvalidInput(
                f"{channel.value} has no field {name!r}; its fields are {', '.join(known)}",
                field=f"{where}.{name}",
            )
    for name, text in content.items():
        try:
            check_source(text, html=name in HTML_FIELDS)
        except RenderError as exc:
            raise InvalidInput(exc.message, field=f"{where}.{name}") from None
    given = {name for name, text in content.items() if text.strip()}  # blank renders blank
    if channel is Channel.EMAIL and "subject" not in given:
        raise InvalidInput("an email needs a subject", field=f"{where}.subject")
    one_of, named, why = _NEEDED[channel]
    if not given & set(one_of):
        raise InvalidInput(why, field=f"{where}.{named}")


def _located(exc: InvalidInput, source: str | None) -> InvalidInput:
    prefix = f"{source}: " if source else ""
    where = f"{exc.field}: " if exc.field else ""
    return InvalidInput(f"{prefix}{where}{exc.message}", field=exc.field)


def _workflow(m: Any) -> Workflow:
    if not isinstance(m, Mapping):
        raise InvalidInput("a workflow must be a mapping")
    check_known(m, _WORKFLOW_FIELDS, "")
    if "key" not in m:
        raise InvalidInput("is required", field="key")
    steps_spec = m.get("steps")
    if not isinstance(steps_spec, list) or not steps_spec:
        raise InvalidInput("must be a non-empty list of steps", field="steps")
    steps: list[Step] = []
    for index, spec in enumerate(steps_spec):
        steps.append(_step(spec, f"steps[{index}]", {s.id for s in steps}))
    windows = m.get("send_windows", [])
    if not isinstance(windows, list):
        raise InvalidInput("must be a list", field="send_windows")
    return Workflow(
        key=m["key"],
        name=_text(m.get("name", ""), "name"),
        description=_text(m.get("description", ""), "description"),
        critical=check_bool(m.get("critical", False), "critical"),
        commercial=check_bool(m.get("commercial", False), "commercial"),
        steps=tuple(steps),
        defaults=_defaults(m.get("defaults", {})),
        send_windows=tuple(
            parse_send_window(w, f"send_windows[{i}]") for i, w in enumerate(windows)
        ),
    )


def _step(spec: Any, where: str, taken: set[str]) -> Step:
    if not isinstance(spec, Mapping):
        raise InvalidInput("a step must be a mapping", field=where)
    kind = spec.get("type")
    if kind not in STEP_KINDS:
        raise InvalidInput(f"must be one of {', '.join(STEP_KINDS)}", field=f"{where}.type")
    check_known(spec, _FIELDS.get(kind, _CHANNEL_FIELDS), where)
    step_id = spec.get("id", default_step_id(kind, taken))
    if not isinstance(step_id, str):
        raise InvalidInput("must be text", field=f"{where}.id")
    condition = parse_condition(spec["if"], f"{where}.if") if "if" in spec else TRUE
    if kind == "delay":
        return DelayStep(
            step_id,
            duration=(
                parse_duration(spec["duration"], f"{where}.duration")
                if "duration" in spec
                else None
            ),
            until=_path(spec["until"], f"{where}.until") if "until" in spec else None,
            condition=condition,
            at_local=(
                parse_clock(spec["at_local"], f"{where}.at_local") if "at_local" in spec else None
            ),
        )
    if kind == "digest":
        return DigestStep(
            step_id,
            window=parse_duration(required(spec, "window", where), f"{where}.window"),
            key=_path(spec["key"], f"{where}.key") if "key" in spec else None,
            max_events=spec.get("max_events", 50),
            condition=condition,
        )
    if kind == "throttle":
        return ThrottleStep(
            step_id,
            limit=required(spec, "limit", where),
            window=parse_duration(required(spec, "window", where), f"{where}.window"),
            key=_path(spec["key"], f"{where}.key") if "key" in spec else None,
            condition=condition,
        )
    content = spec.get("content")
    if content is not None and not isinstance(content, Mapping):
        raise InvalidInput("must be a mapping of text fields", field=f"{where}.content")
    active = spec.get("suppress_when_active")
    return ChannelStep(
        step_id,
        Channel(kind),
        template=spec.get("template"),
        content=dict(content) if content is not None else None,
        condition=condition,
        wait_for=(
            parse_wait_for(spec["wait_for"], f"{where}.wait_for") if "wait_for" in spec else None
        ),
        suppress_when_active=None
        if active is None
        else check_bool(active, f"{where}.suppress_when_active"),
        endpoint=spec.get("endpoint"),
    )


def _defaults(value: Any) -> dict[Channel, ChannelDefault]:
    if not isinstance(value, Mapping):
        raise InvalidInput("must map channels to defaults", field="defaults")
    out: dict[Channel, ChannelDefault] = {}
    for name, spec in value.items():
        where = f"defaults.{name}"
        channel = fields.channel(name, where)
        if not isinstance(spec, Mapping):
            raise InvalidInput("must be a mapping such as {enabled: false}", field=where)
        check_known(spec, frozenset({"enabled"}), where)
        out[channel] = ChannelDefault(
            enabled=check_bool(spec.get("enabled", True), f"{where}.enabled")
        )
    return out


def _path(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, str):
        raise InvalidInput("must be a field path such as payload.post_id", field=where)
    return parse_path(value, where)


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput("must be text", field=where)
    return value
