"""Template test-send over the API and the CLI: drafts can be sent, validation failures and
channels without a provider are a 422 naming the field, a refusal by the destination is a
200 with the failure, and the CLI's exit codes (0 sent, 1 refused, 2 cannot send).

The real deliveries (an email to an SMTP server, a signed webhook) are in
tests/integration/test_template_test_send.py."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from tests.api.conftest import Api
from tidings.cli import app as cli
from tidings.ports.subscribers import Subscriber

IN_APP = {
    "locales": {
        "en": {
            "title": "Order {{ payload.order }} shipped",
            "body": "Hi {{ subscriber.name }}, it is on its way.",
            "action_url": "/orders/{{ payload.order }}",
        },
        "pt": {"title": "Pedido {{ payload.order }} enviado", "body": "Olá"},
    },
    "variables": {
        "type": "object",
        "required": ["order"],
        "properties": {"order": {"type": "integer"}},
    },
}
EMAIL = {"locales": {"en": {"subject": "Hello {{ payload.name }}", "html": "<p>Hi</p>"}}}


async def post(api: Api, path: str, body: object, key: str | None = None) -> tuple[int, Any]:
    r = await api.client.post(path, json=body, headers=api.auth(key or api.admin_key))
    return r.status_code, r.json()


async def template(api: Api, tid: str, channel: str, body: dict[str, Any]) -> None:
    status, _ = await post(api, "/v1/templates", {"id": tid, "name": tid, "channel": channel})
    assert status == 201
    status, _ = await post(api, f"/v1/templates/{tid}/versions", body)
    assert status == 201


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_draft_goes_to_the_inbox_marked_as_a_test(api: Api) -> None:
    await template(api, "shipped", "in_app", IN_APP)
    await api.runtime.services.subscribers.store.put(Subscriber(id="ana"))
    body = {"to": "ana", "payload": {"order": 7}, "subscriber": {"name": "Ana"}}
    status, p = await post(api, "/v1/templates/shipped/test-send", body)
    assert status == 404 and "no published version" in p["detail"]

    status, p = await post(api, "/v1/templates/shipped/test-send", {**body, "version": 1})
    assert status == 200, p
    assert (p["status"], p["channel"], p["provider"], p["to"]) == ("sent", "in_app", "inbox", "ana")
    assert p["failure"] is None and p["attempted"] is True
    assert p["rendered"]["fields"]["body"] == "Hi Ana, it is on its way."
    item = await api.runtime.services.inbox.get("ana", p["provider_message_id"])
    assert item.title == "[Test] Order 7 shipped" and item.action_url == "/orders/7"
    assert item.event_id is None and item.data == {
        "test": True,
        "template": "shipped",
        "version": 1,
    }

    status, p = await post(
        api, "/v1/templates/shipped/test-send", {**body, "version": 1, "locale": "pt-BR"}
    )
    assert status == 200 and p["rendered"]["locale"] == "pt"
    item = await api.runtime.services.inbox.get("ana", p["provider_message_id"])
    assert item.title == "[Test] Pedido 7 enviado"


async def test_what_cannot_be_sent_is_a_422_naming_the_field(api: Api) -> None:
    await template(api, "shipped", "in_app", IN_APP)
    await post(api, "/v1/templates/shipped/versions/1/publish", {})
    await api.runtime.services.subscribers.store.put(Subscriber(id="ana"))
    url = "/v1/templates/shipped/test-send"
    ok = {"to": "ana", "payload": {"order": 7}, "subscriber": {"name": "Ana"}}

    async def problem(body: dict[str, Any], path: str = url) -> tuple[str, str]:
        r = await api.client.post(path, json=body, headers=api.auth(api.admin_key))
        assert r.status_code == 422, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        p = r.json()
        return p["errors"][0]["field"], p["detail"]

    field, detail = await problem({**ok, "payload": {"order": "seven"}})
    assert field == "payload.order" and "integer" in detail
    field, _ = await problem({**ok, "subscriber": {}})  # the body uses subscriber.name
    assert field == "body"
    assert (await problem({**ok, "to": "nobody"}))[0] == "to"
    assert (await problem({**ok, "to": "not an id!"}))[0] == "to"
    assert (await problem({**ok, "to": "ep_missing", "channel": "webhook"}))[0] == "to"
    field, detail = await problem({**ok, "channel": "email"})
    assert field == "channel" and "in_app template is sent on in_app, webhook" in detail
    field, _ = await problem({**ok, "surprise": 1})
    assert field == "surprise"

    await template(api, "hello", "email", EMAIL)
    await post(api, "/v1/templates/hello/versions/1/publish", {})
    field, detail = await problem({"to": "ana@example.com"}, "/v1/templates/hello/test-send")
    assert field == "channel" and "no provider configured for channel email" in detail

    await template(api, "code", "sms", {"locales": {"en": {"text": "Code {{ payload.c }}"}}})
    field, detail = await problem(
        {"to": "+14155550123", "version": 1, "payload": {"c": 1}}, "/v1/templates/code/test-send"
    )
    assert field == "channel" and detail.endswith("no provider configured for channel sms")
    await template(api, "ping", "push", {"locales": {"en": {"title": "Ping"}}})
    field, detail = await problem(
        {"to": "device", "version": 1, "channel": "webpush"}, "/v1/templates/ping/test-send"
    )
    assert field == "channel" and detail.endswith("no provider configured for channel webpush")

    status, _ = await post(api, "/v1/templates/nothing/test-send", ok)
    assert status == 404
    status, _ = await post(api, url, ok, key=api.publish_key)
    assert status == 403  # like the preview: admin only


async def test_a_refusal_is_a_200_with_the_failure(api: Api) -> None:
    await template(api, "shipped", "in_app", IN_APP)
    webhooks = api.runtime.services.webhooks
    dead = await webhooks.create(f"http://127.0.0.1:{closed_port()}/hook")
    body = {"to": dead.id, "channel": "webhook", "version": 1, "payload": {"order": 1}}
    body["subscriber"] = {"name": "Ana"}
    status, p = await post(api, "/v1/templates/shipped/test-send", body)
    assert status == 200, p
    assert (p["status"], p["failure"], p["provider"]) == ("refused", "transient", "webhook")
    assert p["detail"].startswith("network error") and p["attempted"] is True
    assert (await webhooks.get(dead.id)).failures == 0  # a test does not count

    await webhooks.disable(dead.id, "maintenance")
    status, p = await post(api, "/v1/templates/shipped/test-send", body)
    assert status == 200
    assert (p["status"], p["failure"], p["attempted"]) == ("refused", "policy", False)
    assert p["detail"] == "endpoint disabled: maintenance"


async def test_cli_exit_codes(api: Api, tmp_path: Path) -> None:
    await template(api, "shipped", "in_app", IN_APP)
    await post(api, "/v1/templates/shipped/versions/1/publish", {})
    await template(api, "hello", "email", EMAIL)
    await api.runtime.services.subscribers.store.put(Subscriber(id="ana"))
    dead = await api.runtime.services.webhooks.create(f"http://127.0.0.1:{closed_port()}/h")
    (tmp_path / "payload.json").write_text(json.dumps({"order": 9}))
    env = {
        "TIDINGS_DATABASE_URL": api.runtime.settings.database_url,
        "TIDINGS_TOKEN_SECRET": "t" * 64,
    }
    runner = CliRunner()

    async def run(*args: str) -> Any:
        return await asyncio.to_thread(
            runner.invoke, cli, ["template", "test-send", *args], env=env
        )

    sent = await run(
        "shipped",
        "--to",
        "ana",
        "--payload",
        "@" + str(tmp_path / "payload.json"),
        "--subscriber",
        '{"name": "Ana"}',
    )
    assert sent.exit_code == 0, sent.output
    assert "sent: shipped v1 (in_app), locale en: to ana on in_app via inbox" in sent.output
    item_id = sent.output.split("message id: ")[1].split()[0]
    item = await api.runtime.services.inbox.get("ana", item_id)
    assert item.title == "[Test] Order 9 shipped"

    refused = await run(
        "shipped",
        "--to",
        dead.id,
        "--channel",
        "webhook",
        "--payload",
        '{"order": 1}',
        "--subscriber",
        '{"name": "Ana"}',
    )
    assert refused.exit_code == 1, refused.output
    assert "refused: shipped v1" in refused.output and "transient: network error" in refused.output

    no_smtp = await run("hello", "--to", "ana@example.com", "--version", "1")
    assert no_smtp.exit_code == 2
    assert "cannot send: no provider configured for channel email" in no_smtp.output
    bad_payload = await run("shipped", "--to", "ana", "--payload", '{"order": "x"}')
    assert bad_payload.exit_code == 2 and "payload.order" in bad_payload.output
    not_json = await run("shipped", "--to", "ana", "--payload", "[1]")
    assert not_json.exit_code == 2 and "JSON object" in not_json.output
    no_file = await run("shipped", "--to", "ana", "--payload", "@" + str(tmp_path / "nope"))
    assert no_file.exit_code == 2 and "cannot read" in no_file.output
    unknown = await run("nothing", "--to", "ana")
    assert unknown.exit_code == 2 and "nothing" in unknown.output
