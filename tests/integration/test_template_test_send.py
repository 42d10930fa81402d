"""Template test-send end to end through the API: a real email through the SMTP provider to
a real aiosmtpd server, checked as received (test mark, header, both parts rendered for the
payload and locale); a refused address; and a webhook to a real HTTP receiver whose signature
is checked with the reference `standardwebhooks` library."""

from __future__ import annotations

import copy
import email
import email.message
import email.policy
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from standardwebhooks.webhooks import Webhook

from tests.api.conftest import Api, make_settings, open_api
from tests.integration.test_smtp_delivery import Server, Sink, free_port
from tests.integration.test_webhook_delivery import Receiver
from tidings.config import NotifySettings, SmtpSettings

SENDER = "Tidings Tests <noreply@example.com>"
ORDER: dict[str, Any] = {
    "locales": {
        "en": {
            "subject": "Order {{ payload.order }} shipped",
            "html": "<p>Hi {{ payload.name }}, you paid "
            '{{ payload.total | format_currency("EUR") }}.</p>',
        },
        "pt": {
            "subject": "Pedido {{ payload.order }} enviado",
            "html": "<p>Olá {{ payload.name }}, você pagou "
            '{{ payload.total | format_currency("BRL") }}.</p>',
            "text": "Olá {{ payload.name }}: pedido {{ payload.order }} enviado.",
        },
    },
    "variables": {
        "type": "object",
        "required": ["order", "name", "total"],
        "properties": {
            "order": {"type": "integer"},
            "name": {"type": "string"},
            "total": {"type": "number"},
        },
    },
}
PAYLOAD = {"order": 7, "name": "Ana <Lima>", "total": 1234.5}


@pytest.fixture
def smtp() -> Iterator[Server]:
    s = Server(Sink(), free_port())
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
async def api(tmp_path: Path, smtp: Server) -> AsyncIterator[Api]:
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path}/api.db",
        smtp=SmtpSettings(host="127.0.0.1", port=smtp.port, timeout=5.0),
        notify=NotifySettings(sender=SENDER),
    )
    async for a in open_api(settings):
        yield a


async def post(api: Api, path: str, body: object) -> tuple[int, Any]:
    r = await api.client.post(path, json=body, headers=api.auth(api.admin_key))
    return r.status_code, r.json()


async def order_template(api: Api) -> None:
    """`order` with version 1 published and version 2 a draft (pt subject changed)."""
    await post(api, "/v1/templates", {"id": "order", "name": "Order", "channel": "email"})
    await post(api, "/v1/templates/order/versions", ORDER)
    await post(api, "/v1/templates/order/versions/1/publish", {})
    draft = copy.deepcopy(ORDER)
    draft["locales"]["pt"]["subject"] = "v2: pedido {{ payload.order }}"
    await post(api, "/v1/templates/order/versions", draft)


def received(sink: Sink) -> list[tuple[str, list[str], email.message.EmailMessage]]:
    return [
        (sender, to, email.message_from_bytes(raw, policy=email.policy.default))  # type: ignore[misc]
        for sender, to, raw in sink.messages
    ]


async def test_an_email_arrives_marked_and_rendered_for_payload_and_locale(
    api: Api, smtp: Server
) -> None:
    await order_template(api)
    status, p = await post(
        api,
        "/v1/templates/order/test-send",
        {"to": "Zoe <zoe@example.org>", "payload": PAYLOAD, "locale": "pt-BR"},
    )
    assert status == 200, p
    assert (p["status"], p["channel"], p["provider"]) == ("sent", "email", "smtp")
    assert p["response_status"] == 250 and p["failure"] is None
    assert p["rendered"]["version"] == 1 and p["rendered"]["locale"] == "pt"

    ((envelope_from, rcpt, msg),) = received(smtp.sink)
    assert envelope_from == "noreply@example.com" and rcpt == ["zoe@example.org"]
    assert msg["Subject"] == "[Test] Pedido 7 enviado"
    assert msg["X-Tidings-Test"] == "1" and msg["X-Tidings-Template"] == "order@1"
    assert msg["Message-ID"] == p["provider_message_id"]
    assert msg["From"] == SENDER and msg["To"] == "Zoe <zoe@example.org>"
    assert msg.get_content_type() == "multipart/alternative"
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None and html is not None
    assert text.get_content().strip() == "Olá Ana <Lima>: pedido 7 enviado."
    assert html.get_content().strip() == (
        "<p>Olá Ana &lt;Lima&gt;, você pagou R$\xa01.234,50.</p>"  # escaped, pt-BR currency
    )

    # The draft, in English: its text part is derived from the HTML.
    status, p = await post(
        api, "/v1/templates/order/test-send", {"to": "zoe@example.org", "payload": PAYLOAD}
    )
    assert status == 200 and p["status"] == "sent"
    status, p = await post(
        api,
        "/v1/templates/order/test-send",
        {"to": "zoe@example.org", "payload": PAYLOAD, "version": 2, "locale": "pt"},
    )
    assert status == 200 and p["rendered"]["version"] == 2
    _, (_, _, english), (_, _, draft) = received(smtp.sink)
    assert english["Subject"] == "[Test] Order 7 shipped"
    plain = english.get_body(("plain",))
    assert plain is not None
    assert plain.get_content().strip() == "Hi Ana <Lima>, you paid €1,234.50."
    assert draft["Subject"] == "[Test] v2: pedido 7" and draft["X-Tidings-Template"] == "order@2"


async def test_a_refused_address_and_bad_input(api: Api, smtp: Server) -> None:
    await order_template(api)
    status, p = await post(
        api, "/v1/templates/order/test-send", {"to": "unknown@example.org", "payload": PAYLOAD}
    )
    assert status == 200, p
    assert (p["status"], p["failure"], p["response_status"]) == ("refused", "permanent", 550)
    assert "5.1.1" in p["detail"]

    for body, field in (
        ({"to": "not-an-address", "payload": PAYLOAD}, "to"),
        ({"to": "zoe@example.org", "payload": {**PAYLOAD, "total": "lots"}}, "payload.total"),
        ({"to": "zoe@example.org", "payload": PAYLOAD, "channel": "sms"}, "channel"),
    ):
        status, p = await post(api, "/v1/templates/order/test-send", body)
        assert status == 422 and p["errors"][0]["field"] == field, p
    assert len(smtp.sink.messages) == 0


async def test_a_webhook_is_signed_and_marked_as_a_test(api: Api, receiver: Receiver) -> None:
    await order_template(api)
    endpoint = await api.runtime.services.webhooks.create(receiver.url, event_types=("order.paid",))
    status, p = await post(
        api,
        "/v1/templates/order/test-send",
        {"to": endpoint.id, "channel": "webhook", "payload": PAYLOAD, "locale": "pt-BR"},
    )
    assert status == 200, p
    assert (p["status"], p["channel"], p["provider"]) == ("sent", "webhook", "webhook")
    assert p["response_status"] == 200 and p["provider_message_id"].startswith("test_")

    ((headers, body),) = receiver.requests
    assert headers["webhook-id"] == p["provider_message_id"]
    verified = Webhook(endpoint.secret).verify(body, headers)
    assert verified == orjson.loads(body)
    assert verified["type"] == "template.test"
    data = verified["data"]
    assert data["test"] is True
    assert (data["template"], data["version"], data["channel"], data["locale"]) == (
        "order",
        1,
        "email",
        "pt",
    )
    assert data["fields"]["subject"] == "Pedido 7 enviado"
    assert data["fields"]["text"] == "Olá Ana <Lima>: pedido 7 enviado."
    assert data["payload"] == PAYLOAD

    receiver.always = (410, {})
    status, p = await post(
        api,
        "/v1/templates/order/test-send",
        {"to": endpoint.id, "channel": "webhook", "payload": PAYLOAD},
    )
    assert status == 200 and (p["status"], p["failure"]) == ("refused", "permanent")
    assert not (await api.runtime.services.webhooks.get(endpoint.id)).enabled
