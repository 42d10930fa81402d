"""Workflow definitions that could never send are refused where they come in: `PUT
/v1/workflows/{key}` answers 422 problem+json naming the field, and `tidings serve` stops on
a bad workflows file with one line naming file and field, before its banner. A workflow from
a file reads back whole, as an API-defined one does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from typer.testing import CliRunner

from tests.api.conftest import Api, make_settings, open_api, settings_with_workflows
from tidings.cli import app as cli
from tidings.config import NotifySettings
from tidings.wiring import migrate

INAPP = {"id": "inapp", "type": "in_app", "content": {"title": "t", "body": "b"}}

FILE = """
key: order.shipped
name: Order shipped
steps:
  - id: inapp
    type: in_app
    content: {title: "Order {{ payload.order }}", body: On its way}
  - id: mail
    type: email
    content: {subject: Shipped, text: "Order {{ payload.order }} is on its way"}
    if: {payload.total: {gt: 100}}
    wait_for: {step: inapp, status: seen, timeout: 10m}
"""


@pytest.fixture
async def with_file(tmp_path: Path) -> AsyncIterator[Api]:
    async for a in open_api(settings_with_workflows(tmp_path, FILE)):
        yield a


@pytest.mark.parametrize(
    ("step", "field", "message"),
    [
        (
            {"id": "mail", "type": "email", "content": {"subject": "{{ payload.x "}},
            "steps[1].content.subject",
            "not a valid template: unexpected end of template, expected 'end of print statement'",
        ),
        (
            {"id": "sms", "type": "sms", "content": {"body": "Code {{ payload.code }}"}},
            "steps[1].content.body",
            "sms has no field 'body'; its fields are text",
        ),
        (
            {"id": "mail", "type": "email", "content": {"subjct": "Shipped", "text": "t"}},
            "steps[1].content.subjct",
            "email has no field 'subjct'; its fields are subject, html, text",
        ),
        (
            {"id": "more", "type": "in_app", "content": {"title": "no body"}},
            "steps[1].content.body",
            "an in-app message needs a body",
        ),
        (
            {"id": "mail", "type": "email", "template": "does-not-exist"},
            "steps[1].template",
            "no template 'does-not-exist': create it first (POST /v1/templates)",
        ),
        (
            {"id": "hook", "type": "webhook", "endpoint": "ep_nowhere"},
            "steps[1].endpoint",
            "no webhook endpoint 'ep_nowhere': create it first (POST /v1/webhooks/endpoints)",
        ),
        (
            {"id": "late", "type": "in_app", "content": {"body": "b"}, "if": {"digest.count": 2}},
            "steps[1].if",
            "the condition reads digest, and no earlier step is a digest",
        ),
    ],
)
async def test_put_refuses_a_definition_that_could_never_send(
    api: Api, step: dict[str, Any], field: str, message: str
) -> None:
    h = api.auth()
    r = await api.client.put(
        "/v1/workflows/order.shipped", json={"steps": [INAPP, step]}, headers=h
    )
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["detail"] == f"{field}: {message}"
    assert problem["errors"] == [{"field": field, "message": message, "type": "invalid"}]
    assert (await api.client.get("/v1/workflows/order.shipped", headers=h)).status_code == 404


async def test_put_takes_a_webhook_endpoint_that_exists(api: Api) -> None:
    endpoint = await api.runtime.services.webhooks.create("http://127.0.0.1:9/hook")
    hook = {"steps": [{"id": "hook", "type": "webhook", "endpoint": endpoint.id}]}
    r = await api.client.put("/v1/workflows/order.paid", json=hook, headers=api.auth())
    assert r.status_code == 200, r.text


async def test_put_takes_a_template_that_exists_for_the_steps_channel(api: Api) -> None:
    admin = api.auth(api.admin_key)
    body = {"id": "order-mail", "name": "Order mail", "channel": "email"}
    assert (await api.client.post("/v1/templates", json=body, headers=admin)).status_code == 201
    h = api.auth()
    wrong = {"steps": [{"id": "sms", "type": "sms", "template": "order-mail"}]}
    r = await api.client.put("/v1/workflows/order.shipped", json=wrong, headers=h)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "steps[0].template"
    assert "is for email; the step sends sms" in r.json()["detail"]
    right = {"steps": [{"id": "mail", "type": "email", "template": "order-mail"}]}
    r = await api.client.put("/v1/workflows/order.shipped", json=right, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["workflow"] == {**right, "key": "order.shipped"}


async def test_a_file_workflow_reads_back_whole_like_an_api_one(with_file: Api) -> None:
    api = with_file
    h = api.auth()
    r = await api.client.get("/v1/workflows/order.shipped", headers=h)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["source"].endswith("workflows.yaml") and got["revision"] is None
    assert got["workflow"] == {
        "key": "order.shipped",
        "name": "Order shipped",
        "steps": [
            {
                "id": "inapp",
                "type": "in_app",
                "content": {"title": "Order {{ payload.order }}", "body": "On its way"},
            },
            {
                "id": "mail",
                "type": "email",
                "content": {
                    "subject": "Shipped",
                    "text": "Order {{ payload.order }} is on its way",
                },
                "if": {"payload.total": {"gt": 100}},
                "wait_for": {"step": "inapp", "status": "seen", "timeout": "10m"},
            },
        ],
    }
    # the same definition through the API reads back in the same shape
    definition = {k: v for k, v in got["workflow"].items() if k != "key"}
    r = await api.client.put("/v1/workflows/order.copied", json=definition, headers=h)
    assert r.status_code == 200, r.text
    copied = (await api.client.get("/v1/workflows/order.copied", headers=h)).json()
    assert copied["workflow"] == {**got["workflow"], "key": "order.copied"}
    listed = (await api.client.get("/v1/workflows", headers=h)).json()["items"]
    assert [i["workflow"] for i in listed if i["key"] == "order.shipped"] == [got["workflow"]]
    # a file's workflow is changed in its file: the API's change or removal is a conflict
    put = await api.client.put("/v1/workflows/order.shipped", json=definition, headers=h)
    gone = await api.client.delete("/v1/workflows/order.shipped", headers=h)
    for r in (put, gone):
        assert r.status_code == 409, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert "workflows.yaml" in r.json()["detail"]


def test_serve_stops_on_a_bad_workflows_file_with_one_line_and_no_banner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "workflows.yaml"
    bad.write_text(
        "key: order.shipped\n"
        "steps:\n"
        '  - {id: mail, type: email, content: {subject: "{{ payload.x "}}\n'
    )
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path}/serve.db",
        notify=NotifySettings(workflows=[str(bad)]),
    )
    migrate(settings)

    def never(self: uvicorn.Server) -> None:  # a start that gets this far is the failure
        raise AssertionError("the server started")

    monkeypatch.setattr(uvicorn.Server, "run", never)
    env = {
        "TIDINGS_DATABASE_URL": settings.database_url,
        "TIDINGS_TOKEN_SECRET": "t" * 64,
        "TIDINGS_NOTIFY__WORKFLOWS": f'["{bad}"]',
        "COLUMNS": "80",
    }
    result = CliRunner().invoke(cli, ["serve"], env=env)
    assert result.exit_code == 1, result.output
    assert result.stdout == ""  # no banner
    assert result.stderr == (
        f"error: workflows file {bad}: steps[0].content.subject: not a valid template: "
        "unexpected end of template, expected 'end of print statement'\n"
    )
