"""The registry refuses definitions that would fail on every trigger: through the API
(content and named templates, which must exist for the step's channel) and in files (the
same content checks, named `workflows file <path>: <field>`); it shows a file's workflow as
written, and keeps showing stored definitions accepted before a check existed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tidings.adapters.clock import ManualClock
from tidings.adapters.memory import MemoryWorkflowStore
from tidings.adapters.memory.templates import MemoryTemplateStore
from tidings.core.notify import Workflow
from tidings.errors import InvalidInput
from tidings.services.workflows import WorkflowRegistry

INAPP = {"id": "inapp", "type": "in_app", "content": {"title": "t", "body": "b"}}


async def templates() -> MemoryTemplateStore:
    store = MemoryTemplateStore(ManualClock())
    await store.create("order-mail", "Order mail", "email")
    await store.create("order-push", "Order push", "push")  # never published: still fine
    return store


@pytest.mark.parametrize(
    ("step", "field", "message"),
    [
        (
            {"id": "mail", "type": "email", "template": "does-not-exist"},
            "steps[1].template",
            "no template 'does-not-exist': create it first (POST /v1/templates)",
        ),
        (
            {"id": "sms", "type": "sms", "template": "order-mail"},
            "steps[1].template",
            "template 'order-mail' is for email; the step sends sms",
        ),
        (
            {"id": "sms", "type": "sms", "content": {"body": "x"}},
            "steps[1].content.body",
            "sms has no field 'body'; its fields are text",
        ),
    ],
)
async def test_put_refuses_what_would_fail_on_every_trigger(
    step: dict[str, Any], field: str, message: str
) -> None:
    store = MemoryWorkflowStore()
    registry = WorkflowRegistry(store, ManualClock())
    with pytest.raises(InvalidInput) as refused:
        await registry.put("k", {"steps": [INAPP, step]}, templates=await templates())
    assert refused.value.field == field
    # the message carries its location too (for logs and the CLI); the API names it once
    assert refused.value.message.removeprefix(f"{field}: ") == message
    assert await store.all() == []  # nothing stored


async def test_put_accepts_existing_templates_of_the_right_channel() -> None:
    registry = WorkflowRegistry(MemoryWorkflowStore(), ManualClock())
    steps = [
        {"id": "mail", "type": "email", "template": "order-mail"},
        {"id": "push", "type": "push", "template": "order-push"},
        {"id": "hook", "type": "webhook", "template": "order-mail"},  # any channel
    ]
    record = await registry.put("k", {"steps": steps}, templates=await templates())
    assert record.revision == 1
    found = await registry.get("k")
    assert found is not None and [s.id for s in found.steps] == ["mail", "push", "hook"]


async def test_a_file_gets_the_content_checks_and_names_itself(tmp_path: Path) -> None:
    bad = tmp_path / "orders.yaml"
    bad.write_text(
        "key: order.shipped\n"
        "steps:\n"
        "  - {id: inapp, type: in_app, content: {title: t, body: b}}\n"
        '  - {id: mail, type: email, content: {subject: "{{ payload.x "}}\n'
    )
    registry = WorkflowRegistry(MemoryWorkflowStore(), ManualClock())
    with pytest.raises(InvalidInput) as refused:
        registry.load_files([bad])
    assert refused.value.field == "steps[1].content.subject"
    assert refused.value.message == (
        f"workflows file {bad}: steps[1].content.subject: not a valid template: "
        "unexpected end of template, expected 'end of print statement'"
    )
    assert await registry.get("order.shipped") is None


async def test_a_file_may_name_a_template_created_later(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("key: a\nsteps:\n  - {id: m, type: email, template: later}\n")
    registry = WorkflowRegistry(MemoryWorkflowStore(), ManualClock())
    assert registry.load_files([tmp_path]) == 1


async def test_missing_or_unreadable_files_are_named(tmp_path: Path) -> None:
    registry = WorkflowRegistry(MemoryWorkflowStore(), ManualClock())
    with pytest.raises(InvalidInput) as missing:
        registry.load_files([tmp_path / "nope.yaml"])
    assert missing.value.message == f"workflows file {tmp_path / 'nope.yaml'}: not found"
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"\xff\xfe\x00key")
    with pytest.raises(InvalidInput) as unreadable:
        registry.load_files([binary])
    assert unreadable.value.message == f"workflows file {binary}: cannot read it: not UTF-8 text"


async def test_a_files_workflow_is_listed_as_written(tmp_path: Path) -> None:
    text = """
key: order.shipped
name: Order shipped
defaults: {sms: {enabled: false}}
steps:
  - id: inapp
    type: in_app
    content: {title: "Order {{ payload.id }}", body: On its way}
  - id: mail
    type: email
    template: order-mail
    if: {payload.total: {gt: 100}}
    wait_for: {step: inapp, status: seen, timeout: 10m}
"""
    (tmp_path / "orders.yaml").write_text(text)
    registry = WorkflowRegistry(MemoryWorkflowStore(), ManualClock())
    registry.load_files([tmp_path])
    [item] = await registry.listing()
    assert item == {
        "key": "order.shipped",
        "source": str(tmp_path / "orders.yaml"),
        "revision": None,
        "workflow": {
            "key": "order.shipped",
            "name": "Order shipped",
            "defaults": {"sms": {"enabled": False}},
            "steps": [
                {
                    "id": "inapp",
                    "type": "in_app",
                    "content": {"title": "Order {{ payload.id }}", "body": "On its way"},
                },
                {
                    "id": "mail",
                    "type": "email",
                    "template": "order-mail",
                    "if": {"payload.total": {"gt": 100}},
                    "wait_for": {"step": "inapp", "status": "seen", "timeout": "10m"},
                },
            ],
        },
    }


async def test_python_workflows_are_checked_when_added() -> None:
    registry = WorkflowRegistry(MemoryWorkflowStore(), ManualClock())
    with pytest.raises(InvalidInput) as refused:
        registry.add(Workflow("k").in_app(content={"title": "no body"}))
    assert refused.value.field == "steps[0].content.body"
    registry.add(Workflow("k").in_app(content={"body": "b"}))
    [item] = await registry.listing()
    assert item["source"] == "python"
    assert item["workflow"]["steps"] == [{"id": "in_app", "type": "in_app"}]


async def test_a_stored_definition_from_before_the_checks_still_loads_and_shows() -> None:
    store, clock = MemoryWorkflowStore(), ManualClock()
    old = {"key": "old", "steps": [{"id": "s", "type": "sms", "content": {"body": "x"}}]}
    await store.put("old", old, clock.now())
    registry = WorkflowRegistry(store, clock)
    assert await registry.get("old") is not None
    [item] = await registry.listing()
    assert (item["source"], item["workflow"]) == ("api", old)
