"""Templates API: versions, publish and rollback, preview with validation; and the CLI
preview against the same database."""

from __future__ import annotations

import asyncio
import json

from typer.testing import CliRunner

from tests.api.conftest import Api
from tidings.cli import app as cli

EMAIL = {
    "locales": {
        "en": {
            "subject": "Order {{ payload.order }} shipped",
            "html": "<p>Hi {{ payload.name }}</p>",
        },
        "pt": {"subject": "Pedido {{ payload.order }} enviado", "html": "<p>Olá</p>"},
    },
    "variables": {
        "type": "object",
        "required": ["order", "name"],
        "properties": {"order": {"type": "integer"}, "name": {"type": "string"}},
    },
}


async def admin_post(api: Api, path: str, body: object) -> tuple[int, dict]:
    r = await api.client.post(path, json=body, headers=api.auth(api.admin_key))
    return r.status_code, r.json()


async def test_versions_publish_rollback_and_preview(api: Api) -> None:
    status, t = await admin_post(
        api, "/v1/templates", {"id": "order-shipped", "name": "O", "channel": "email"}
    )
    assert status == 201 and t["published_version"] is None
    status, v1 = await admin_post(api, "/v1/templates/order-shipped/versions", EMAIL)
    assert status == 201 and (v1["version"], v1["state"]) == (1, "draft")
    status, _ = await admin_post(api, "/v1/templates/order-shipped/preview", {"payload": {}})
    assert status == 404  # nothing published yet
    status, _ = await admin_post(api, "/v1/templates/order-shipped/versions/1/publish", {})
    assert status == 200
    status, p = await admin_post(
        api,
        "/v1/templates/order-shipped/preview",
        {"payload": {"order": 7, "name": "<Ana>"}, "locale": "pt-BR"},
    )
    assert status == 200, p
    assert p["locale"] == "pt" and p["fields"]["subject"] == "Pedido 7 enviado"
    status, p = await admin_post(
        api, "/v1/templates/order-shipped/preview", {"payload": {"order": 7, "name": "<Ana>"}}
    )
    assert p["fields"]["html"] == "<p>Hi &lt;Ana&gt;</p>" and p["fields"]["text"] == "Hi <Ana>"

    v2_body = {**EMAIL, "locales": {"en": {"subject": "v2 {{ payload.order }}", "html": "x"}}}
    await admin_post(api, "/v1/templates/order-shipped/versions", v2_body)
    await admin_post(api, "/v1/templates/order-shipped/versions/2/publish", {})
    _, p = await admin_post(
        api, "/v1/templates/order-shipped/preview", {"payload": {"order": 1, "name": "a"}}
    )
    assert p["version"] == 2 and p["fields"]["subject"] == "v2 1"
    await admin_post(api, "/v1/templates/order-shipped/versions/1/publish", {})  # roll back
    r = await api.client.get("/v1/templates/order-shipped", headers=api.auth(api.admin_key))
    states = [(v["version"], v["state"]) for v in r.json()["versions"]]
    assert states == [(1, "published"), (2, "archived")]


async def test_bad_input_is_a_clear_422(api: Api) -> None:
    status, p = await admin_post(
        api, "/v1/templates", {"id": "Bad Id", "name": "x", "channel": "email"}
    )
    assert status == 422 and p["errors"][0]["field"] == "id"
    status, p = await admin_post(api, "/v1/templates", {"id": "t", "name": "x", "channel": "fax"})
    assert status == 422 and p["errors"][0]["field"] == "channel"
    await admin_post(api, "/v1/templates", {"id": "t", "name": "x", "channel": "sms"})
    status, p = await admin_post(
        api, "/v1/templates/t/versions", {"locales": {"en": {"subject": "x"}}}
    )
    assert status == 422 and "no field 'subject'" in p["detail"]
    assert p["errors"][0]["field"] == "locales.en.subject"
    status, p = await admin_post(
        api, "/v1/templates/t/versions", {"locales": {"de": {"text": "x"}}}
    )
    assert status == 422 and "default locale" in p["detail"]
    # a field that could never render is refused when stored, naming it
    status, p = await admin_post(
        api,
        "/v1/templates/t/versions",
        {
            "locales": {"en": {"text": "ok"}},
            "variants": {"b": {"en": {"text": "{{ payload.x | nosuchfilter }}"}}},
        },
    )
    assert status == 422 and p["errors"][0]["field"] == "variants.b.en.text"
    assert "not a valid template" in p["detail"] and "nosuchfilter" in p["detail"]
    status, p = await admin_post(
        api, "/v1/templates/t/versions", {"locales": {"en": {"text": "{{ payload.x "}}}
    )
    assert status == 422 and p["errors"][0]["field"] == "locales.en.text"
    status, p = await admin_post(
        api, "/v1/templates/t/versions", {"locales": {"en": {"text": "x", "layout": "nolayout"}}}
    )
    assert status == 422 and p["errors"][0]["field"] == "locales.en.layout"
    assert "unknown layout 'nolayout'" in p["detail"]
    await admin_post(
        api,
        "/v1/templates/t/versions",
        {
            "locales": {"en": {"text": "{{ payload.x }}" * 1}},
            "variables": {"type": "object", "required": ["x"]},
        },
    )
    await admin_post(api, "/v1/templates/t/versions/1/publish", {})
    status, p = await admin_post(api, "/v1/templates/t/preview", {"payload": {}})
    assert status == 422 and p["errors"][0]["field"] == "payload"
    status, p = await admin_post(api, "/v1/templates/t/preview", {"payload": {"x": "€" * 300}})
    assert status == 422 and "segments" in p["detail"]
    r = await api.client.post(
        "/v1/templates", json={"id": "z", "name": "z", "channel": "sms"}, headers=api.auth()
    )
    assert r.status_code == 403  # publish keys cannot manage templates


async def test_cli_preview(api: Api) -> None:
    await admin_post(api, "/v1/templates", {"id": "hello", "name": "H", "channel": "sms"})
    await admin_post(
        api,
        "/v1/templates/hello/versions",
        {"locales": {"en": {"text": "Hello {{ payload.name }}"}}},
    )
    await admin_post(api, "/v1/templates/hello/versions/1/publish", {})
    settings = api.runtime.settings
    env = {
        "TIDINGS_DATABASE_URL": settings.database_url,
        "TIDINGS_TOKEN_SECRET": "t" * 64,
    }
    runner = CliRunner()
    args = ["template", "preview", "hello", "--payload", json.dumps({"name": "Ana"})]
    result = await asyncio.to_thread(runner.invoke, cli, args, env=env)
    assert result.exit_code == 0, result.output
    assert "hello v1 (sms), locale en: valid" in result.output
    assert "gsm7, 9 units, 1 segment" in result.output and "Hello Ana" in result.output
    bad_args = ["template", "preview", "hello", "--payload", "[1]"]
    bad = await asyncio.to_thread(runner.invoke, cli, bad_args, env=env)
    assert bad.exit_code != 0 and "JSON object" in bad.output
