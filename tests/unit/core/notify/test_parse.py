from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tidings.core.notify import (
    Channel,
    ChannelDefault,
    ChannelStep,
    DelayStep,
    DigestStep,
    ThrottleStep,
    WaitFor,
    Workflow,
    parse_workflow,
    parse_workflows_text,
)
from tidings.core.notify.conditions import TRUE, Compare, Not, Op
from tidings.errors import InvalidInput

EXAMPLES = Path(__file__).parents[4] / "examples" / "workflows"

BASE: dict[str, Any] = {
    "key": "comment.created",
    "name": "New comment",
    "steps": [
        {"id": "inapp", "type": "in_app", "template": "comment"},
        {"type": "delay", "duration": "10m"},
        {
            "id": "push",
            "type": "push",
            "template": "comment-push",
            "wait_for": {"step": "inapp", "status": "seen", "timeout": "10m"},
            "if": {"not": {"steps.inapp.seen": True}},
        },
        {"type": "digest", "window": "1h", "key": "payload.post_id"},
        {"type": "throttle", "limit": 3, "window": "PT1H"},
        {"type": "email", "content": {"subject": "Hi", "text": "{{ payload.text }}"}},
    ],
}


def with_change(path: list[Any], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    target: Any = doc
    for part in path[:-1]:
        target = target[part]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


def test_parse_full() -> None:
    wf = parse_workflow(BASE, source="comments.yaml")
    assert wf.key == "comment.created" and not wf.critical and not wf.commercial
    assert [s.id for s in wf.steps] == ["inapp", "delay", "push", "digest", "throttle", "email"]
    assert wf.steps[0] == ChannelStep("inapp", Channel.IN_APP, template="comment")
    assert wf.steps[1] == DelayStep("delay", duration=600.0)
    push = wf.steps[2]
    assert isinstance(push, ChannelStep)
    assert push.wait_for == WaitFor("inapp", "seen", 600.0)
    assert push.condition == Not(Compare(("steps", "inapp", "seen"), Op.EQ, True))
    assert wf.steps[3] == DigestStep("digest", window=3600.0, key=("payload", "post_id"))
    assert wf.steps[4] == ThrottleStep("throttle", limit=3, window=3600.0)
    email = wf.steps[5]
    assert isinstance(email, ChannelStep) and email.condition == TRUE
    assert (email.content_version() or "").startswith("inline-")
    again = parse_workflow(BASE).steps[5]
    assert isinstance(again, ChannelStep) and again.content_version() == email.content_version()
    other = ChannelStep("x", Channel.EMAIL, content={"subject": "Hi!", "body": "b"})
    assert other.content_version() != email.content_version()


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (["key"], "has space", "key"),
        (["key"], KeyError, "key"),
        (["colour"], "red", "colour"),
        (["critical"], "yes", "critical"),
        (["steps"], [], "steps"),
        (["steps", 0, "type"], "fax", "steps[0].type"),
        (["steps", 0, "template"], KeyError, "steps[0].template"),
        (["steps", 0, "content"], {"body": "x"}, "steps[0].content"),
        (["steps", 0, "templat"], "x", "steps[0].templat"),
        (["steps", 0, "id"], "bad.id", "steps[0].id"),
        (["steps", 1, "duration"], "ten minutes", "steps[1].duration"),
        (["steps", 1, "until"], "payload.at", "steps[1]"),
        (["steps", 2, "id"], "inapp", "steps[2].id"),
        (["steps", 2, "wait_for", "timeout"], "soon", "steps[2].wait_for.timeout"),
        (["steps", 2, "wait_for", "status"], "liked", "steps[2].wait_for.status"),
        (["steps", 2, "wait_for", "step"], "email", "steps[2].wait_for.step"),
        (["steps", 2, "if"], {"steps.email.seen": True}, "steps[2].if"),
        (["steps", 2, "if"], {"payload.x": {"between": [1, 2]}}, "steps[2].if.payload.x.between"),
        (
            ["steps", 2, "if"],
            {"and": [{"payload.x": 1}, {"paylod.y": 2}]},
            "steps[2].if.and[1].paylod.y",
        ),
        (["steps", 2, "suppress_when_active"], "no", "steps[2].suppress_when_active"),
        (["steps", 2, "endpoint"], "hooks", "steps[2].endpoint"),
        (["steps", 3, "window"], "0s", "steps[3].window"),
        (["steps", 3, "window"], KeyError, "steps[3].window"),
        (["steps", 3, "key"], "steps.inapp", "steps[3].key"),
        (["steps", 3, "max_events"], 0, "steps[3].max_events"),
        (["steps", 4, "limit"], 0, "steps[4].limit"),
        (["steps", 4, "limit"], "3", "steps[4].limit"),
        (["steps", 5, "content"], {"subject": 5}, "steps[5].content.subject"),
        (["defaults"], {"fax": {"enabled": False}}, "defaults.fax"),
        (["defaults"], {"email": {"enabled": "no"}}, "defaults.email.enabled"),
        (["send_windows"], [{"start": "09:00", "end": "9pm"}], "send_windows[0].end"),
    ],
)
def test_errors_name_the_exact_path(path: list[Any], value: Any, field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_workflow(with_change(path, value), source="comments.yaml")
    assert info.value.field == field
    assert info.value.message.startswith(f"comments.yaml: {field}: ")


def test_critical_and_commercial_exclude_each_other() -> None:
    doc = dict(BASE, critical=True, commercial=True)
    with pytest.raises(InvalidInput) as info:
        parse_workflow(doc)
    assert info.value.field == "critical"


def test_delay_until_and_webhook_without_template() -> None:
    wf = parse_workflow(
        {
            "key": "reminder.due",
            "steps": [
                {"type": "delay", "until": "payload.remind_at"},
                {"type": "webhook", "endpoint": "crm"},
            ],
        }
    )
    assert wf.steps[0] == DelayStep("delay", until=("payload", "remind_at"))
    assert wf.steps[1] == ChannelStep("webhook", Channel.WEBHOOK, endpoint="crm")


def test_builder_matches_parsed_definition() -> None:
    built = (
        Workflow("comment.created", name="New comment")
        .in_app("comment", id="inapp")
        .delay("10m")
        .push(
            "comment-push",
            id="push",
            wait_for={"step": "inapp", "status": "seen", "timeout": "10m"},
            if_={"not": {"steps.inapp.seen": True}},
        )
        .digest("1h", key="payload.post_id")
        .throttle(3, "PT1H")
        .email(content={"subject": "Hi", "text": "{{ payload.text }}"})
    )
    assert built == parse_workflow(BASE)


def test_builder_is_immutable_and_validates() -> None:
    base = Workflow("order.shipped")
    one = base.email("shipped")
    assert base.steps == () and len(one.steps) == 1
    assert one.email("again").steps[1].id == "email_2"
    with pytest.raises(InvalidInput) as info:
        one.push("p", wait_for=WaitFor("nope", "seen", 60))
    assert info.value.field == "steps[1].wait_for.step"
    with pytest.raises(InvalidInput) as info:
        one.sms()
    assert info.value.field == "steps[1].template"
    with pytest.raises(InvalidInput) as info:
        one.delay("5x")
    assert info.value.field == "steps[1].duration"
    with pytest.raises(InvalidInput) as info:
        one.in_app("x", if_={"steps.later.seen": True})
    assert info.value.field == "steps[1].if"


def test_defaults_and_windows() -> None:
    wf = parse_workflow(
        {
            "key": "digest.weekly",
            "commercial": True,
            "defaults": {"email": {"enabled": False}},
            "send_windows": [{"start": "09:00", "end": "17:00", "days": ["mon"]}],
            "steps": [{"type": "email", "template": "weekly"}],
        }
    )
    assert wf.channel_default(Channel.EMAIL) == ChannelDefault(enabled=False)
    assert wf.channel_default(Channel.SMS) == ChannelDefault(enabled=True)
    assert wf.send_windows[0].days == frozenset({0})


def test_text_documents() -> None:
    one = parse_workflows_text('{"key": "a.b", "steps": [{"type": "in_app", "template": "t"}]}')
    assert [w.key for w in one] == ["a.b"]
    many = parse_workflows_text(
        "- {key: a, steps: [{type: in_app, template: t}]}\n"
        "- {key: b, steps: [{type: in_app, template: t}]}\n"
    )
    assert [w.key for w in many] == ["a", "b"]


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        ("key: [unclosed", None, "f.yaml: not valid YAML/JSON at line 1"),
        ("workflows: []", "workflows", "holds no workflow"),
        ("workflows: [{key: a, steps: [{type: in_app}]}]", "workflows[0].steps[0].template", ""),
        (
            "workflows:\n - {key: a, steps: [{type: in_app, template: t}]}\n"
            " - {key: a, steps: [{type: in_app, template: t}]}",
            "workflows[1].key",
            "duplicate workflow key",
        ),
        ("workflows: []\nextra: 1", "extra", "unknown field"),
        ("- 42", "[0]", "must be a mapping"),
    ],
)
def test_text_errors(text: str, field: str | None, message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_workflows_text(text, source="f.yaml")
    assert info.value.field == field
    assert message in info.value.message


def test_example_workflows_load() -> None:
    path = EXAMPLES / "comments.yaml"
    workflows = {w.key: w for w in parse_workflows_text(path.read_text(), source=path.name)}
    assert set(workflows) == {
        "comment.created",
        "post.liked",
        "account.login_new_device",
        "campaign.weekly",
    }
    chain = workflows["comment.created"]
    assert [s.id for s in chain.steps] == ["inapp", "push", "email"]
    email = chain.step("email")
    assert isinstance(email, ChannelStep)
    assert email.wait_for == WaitFor("push", "read", 3600.0)
    assert chain.channel_default(Channel.SMS).enabled is False
    assert workflows["account.login_new_device"].critical
    weekly = workflows["campaign.weekly"]
    assert weekly.commercial and weekly.send_windows[0].channels == frozenset({Channel.EMAIL})
    liked = workflows["post.liked"].steps[0]
    assert isinstance(liked, DigestStep) and liked.max_events == 20


def test_delay_at_local_is_a_time_of_day_and_excludes_the_other_forms() -> None:
    wf = parse_workflow(
        {
            "key": "k",
            "steps": [
                {"type": "delay", "at_local": "18:30"},
                {"type": "in_app", "template": "t"},
            ],
        }
    )
    assert wf.steps[0].at_local == 18 * 60 + 30  # type: ignore[union-attr]
    with pytest.raises(InvalidInput) as bad:
        parse_workflow({"key": "k", "steps": [{"type": "delay", "at_local": "25:00"}]})
    assert bad.value.field == "steps[0].at_local"
    with pytest.raises(InvalidInput) as both:
        parse_workflow(
            {"key": "k", "steps": [{"type": "delay", "at_local": "09:00", "duration": "1h"}]}
        )
    assert "exactly one of duration, until and at_local" in both.value.message


def test_a_condition_on_the_digest_needs_an_earlier_digest_step() -> None:
    inapp = {"id": "inapp", "type": "in_app", "content": {"body": "b"}}
    when = {"if": {"digest.count": {"gt": 1}}}
    with pytest.raises(InvalidInput) as refused:
        parse_workflow({"key": "k", "steps": [{**inapp, **when}]})
    assert refused.value.field == "steps[0].if"
    assert "no earlier step is a digest" in refused.value.message
    nested = {"if": {"not": {"or": [{"payload.x": 1}, {"digest.count": {"gt": 1}}]}}}
    with pytest.raises(InvalidInput) as inside:
        parse_workflow({"key": "k", "steps": [{**inapp, **nested}]})
    assert "no earlier step is a digest" in inside.value.message
    # a definition stored before this check still loads (it runs as it did)
    stored = parse_workflow({"key": "k", "steps": [{**inapp, **when}]}, check_content=False)
    assert [s.id for s in stored.steps] == ["inapp"]
    digest = {"id": "batch", "type": "digest", "window": "1h"}
    wf = parse_workflow({"key": "k", "steps": [digest, {**inapp, **when}]})
    assert [s.id for s in wf.steps] == ["batch", "inapp"]
