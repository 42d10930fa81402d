"""Inline content that no payload could render is refused when a definition is parsed,
naming the field: fields the channel does not have, fields it needs, templates that do not
compile. What a payload decides (a missing variable) is left to rendering."""

from __future__ import annotations

from typing import Any

import pytest

from tidings.core.notify import Channel as StepChannel
from tidings.core.notify import (
    ChannelStep,
    Workflow,
    parse_workflow,
    parse_workflows_text,
)
from tidings.core.notify.parse import check_content
from tidings.core.templates import (
    FILTERS,
    Channel,
    Content,
    Renderer,
    RenderError,
    TemplateVersion,
    check_source,
)
from tidings.errors import InvalidInput


def one_step(step_type: str, content: dict[str, Any]) -> dict[str, Any]:
    return {"key": "order.shipped", "steps": [{"id": "s", "type": step_type, "content": content}]}


@pytest.mark.parametrize(
    ("step_type", "content", "field", "message"),
    [
        (
            "email",
            {"subject": "{{ payload.x ", "text": "t"},
            "steps[0].content.subject",
            "not a valid template: unexpected end of template, expected 'end of print statement'",
        ),
        # the syntax error is named before the missing body
        (
            "email",
            {"subject": "{{ payload.x "},
            "steps[0].content.subject",
            "not a valid template: unexpected end of template, expected 'end of print statement'",
        ),
        (
            "sms",
            {"body": "Your code is {{ payload.code }}"},
            "steps[0].content.body",
            "sms has no field 'body'; its fields are text",
        ),
        (
            "email",
            {"subjct": "Shipped", "text": "t"},
            "steps[0].content.subjct",
            "email has no field 'subjct'; its fields are subject, html, text",
        ),
        (
            "email",
            {"subject": "Shipped", "text": "t", "layout": "base"},
            "steps[0].content.layout",
            "email has no field 'layout'; its fields are subject, html, text",
        ),
        ("in_app", {"title": "Shipped"}, "steps[0].content.body", "an in-app message needs a body"),
        ("in_app", {"body": "  "}, "steps[0].content.body", "an in-app message needs a body"),
        ("email", {"text": "t"}, "steps[0].content.subject", "an email needs a subject"),
        ("email", {"subject": "s"}, "steps[0].content.html", "an email needs html or text"),
        ("sms", {"text": ""}, "steps[0].content.text", "an SMS needs text"),
        ("push", {"title": ""}, "steps[0].content.body", "a push needs a title or a body"),
        ("webpush", {"text": "x"}, "steps[0].content.text", "webpush has no field 'text'"),
        (
            "email",
            {"subject": "s", "html": "<p>\n{{ payload.x }\n</p>"},
            "steps[0].content.html",
            "(line 2)",
        ),
        (
            "in_app",
            {"body": "{{ payload.amount | money }}"},
            "steps[0].content.body",
            "not a valid template: No filter named 'money'",
        ),
        ("webhook", {"text": "x"}, "steps[0].content", "a webhook step takes no inline content"),
    ],
)
def test_content_that_could_never_render_is_refused_naming_the_field(
    step_type: str, content: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_workflow(one_step(step_type, content), source="orders.yaml")
    assert refused.value.field == field
    assert refused.value.message.startswith(f"orders.yaml: {field}: ")
    assert message in refused.value.message


@pytest.mark.parametrize(
    ("step_type", "content"),
    [
        ("email", {"subject": "Order {{ payload.id }}", "html": "<p>{{ payload.x }}</p>"}),
        ("email", {"subject": "s", "text": "{{ payload.total | format_currency('EUR') }}"}),
        ("sms", {"text": "Code {{ payload.code }}"}),
        ("push", {"title": "Shipped"}),
        ("webpush", {"body": "{{ payload.at | format_datetime('short') }}"}),
        (
            "in_app",
            {
                "title": "{% if payload.n > 1 %}{{ payload.n }} items{% else %}One{% endif %}",
                "body": "{{ payload.missing.deeply }}",  # a payload decides; rendering tells
                "action_url": "/orders/{{ payload.id }}",
            },
        ),
    ],
)
def test_content_that_can_render_is_accepted_unchanged(
    step_type: str, content: dict[str, Any]
) -> None:
    wf = parse_workflow(one_step(step_type, content))
    step = wf.steps[0]
    assert getattr(step, "content", None) == content


def test_a_document_names_the_workflow_and_the_field() -> None:
    text = """
workflows:
  - key: a
    steps: [{id: s, type: in_app, content: {body: ok}}]
  - key: b
    steps:
      - {id: s, type: in_app, content: {body: ok}}
      - {id: t, type: sms, content: {body: "{{ payload.code }}"}}
"""
    with pytest.raises(InvalidInput) as refused:
        parse_workflows_text(text, source="orders.yaml")
    assert refused.value.field == "workflows[1].steps[1].content.body"
    assert refused.value.message == (
        "orders.yaml: workflows[1].steps[1].content.body: sms has no field 'body'; "
        "its fields are text"
    )


def test_stored_definitions_are_read_again_without_the_content_checks() -> None:
    """A definition accepted before the checks existed still loads, so it stays visible and
    its failures keep showing in the trail."""
    old = one_step("in_app", {"title": "no body"})
    with pytest.raises(InvalidInput):
        parse_workflow(old)
    assert parse_workflow(old, check_content=False).steps[0].id == "s"


def test_a_workflow_built_in_python_is_checked_on_request() -> None:
    built = Workflow("order.shipped").sms(content={"body": "x"})
    with pytest.raises(InvalidInput) as refused:
        check_content(built)
    assert refused.value.field == "steps[0].content.body"
    check_content(Workflow("order.shipped").sms(content={"text": "x"}))


def test_check_source_compiles_without_rendering() -> None:
    check_source("Hello {{ subscriber.first_name }}")  # nothing to render it with: fine
    with pytest.raises(RenderError) as bad:
        check_source("{% for x in payload.items %}")
    assert "not a valid template" in bad.value.message
    with pytest.raises(RenderError):
        check_source("{{ x is nosuchtest }}")


def test_every_filter_the_check_knows_renders() -> None:
    """The check's filter names are the renderer's: a source using each one that passes
    the check also renders."""
    calls = {
        "format_datetime": "{{ payload.at | format_datetime('short') }}",
        "format_date": "{{ payload.at | format_date }}",
        "format_number": "{{ payload.n | format_number }}",
        "format_currency": "{{ payload.n | format_currency('EUR') }}",
    }
    assert set(calls) == set(FILTERS)
    for name, source in calls.items():
        check_source(source)
        version = TemplateVersion(
            template=name, version=1, channel=Channel.SMS, locales={"en": Content({"text": source})}
        )
        rendered = Renderer().render(version, {"at": 1_700_000_000, "n": 1234.5})
        assert rendered.fields["text"].strip(), name


@pytest.mark.parametrize(
    ("step", "template", "ok"),
    [
        ("email", "email", True),
        ("email", "in_app", False),
        ("push", "push", True),
        ("webpush", "push", True),  # the same title and body
        ("webpush", "in_app", False),
        ("webhook", "sms", True),  # its body carries any channel's rendered fields
        ("in_app", "push", False),
    ],
)
def test_which_stored_templates_a_step_takes(step: str, template: str, ok: bool) -> None:
    assert ChannelStep("s", StepChannel(step), template="t").takes_template_for(template) is ok
