"""Webhook steps of a workflow end to end: the orchestrator signs per Standard Webhooks, a
real HTTP receiver (uvicorn) checks every signature with the reference `standardwebhooks`
library, retries keep the same `webhook-id`, and a run's message goes out once."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from tests.api.conftest import make_settings
from tests.integration.test_webhook_delivery import Receiver
from tidings.adapters.clock import ManualClock
from tidings.adapters.sql.tables import jobs
from tidings.config import NotifySettings, WorkerSettings
from tidings.services.ingest import EventInput
from tidings.types import Priority
from tidings.wiring import Runtime, build_runtime, migrate

WORKFLOWS = """
workflows:
  - key: invoice.paid
    steps:
      - {id: hook, type: webhook}
  - key: order.paid
    steps:
      - {id: hook, type: webhook, template: order-paid}
"""


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[tuple[Runtime, ManualClock]]:
    (tmp_path / "w.yaml").write_text(WORKFLOWS)
    clock = ManualClock(start=time.time())  # the reference verifier checks the timestamp
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path}/hooks.db",
        notify=NotifySettings(workflows=[str(tmp_path / "w.yaml")]),
    )
    settings.worker = WorkerSettings(enabled=False)
    migrate(settings)
    rt = build_runtime(settings, clock=clock)
    await rt.start()
    try:
        yield rt, clock
    finally:
        await rt.stop()


async def drain(rt: Runtime) -> None:
    for _ in range(50):
        if not await rt.pools[-1].run_once(100):
            return


@pytest.mark.parametrize("priority", [Priority.TRANSACTIONAL, Priority.BULK])
async def test_signed_verified_retried_with_the_same_id_and_sent_once(
    runtime: tuple[Runtime, ManualClock], receiver: Receiver, priority: Priority
) -> None:
    """Transactional: a delivery job per message; bulk: one batch delivery job for both,
    the refused one going on as a job of its own."""
    rt, clock = runtime
    endpoint = await rt.services.webhooks.create(receiver.url, event_types=("invoice.paid",))
    other = await rt.services.webhooks.create(receiver.url, event_types=("something.else",))
    receiver.answers = [(503, {})]  # the first attempt fails
    event = await rt.services.ingest.ingest(
        EventInput(
            type="invoice.paid",
            payload={"invoice": 7},
            recipients=("ann", "bob"),
            priority=priority,
        )
    )
    await drain(rt)
    clock.advance(2)  # past the first backoff (full jitter, at most 1 s)
    await drain(rt)
    clock.advance(60)
    await drain(rt)  # nothing left: a delivered message is not sent again

    assert len(receiver.requests) == 3  # one refused, then one per recipient
    ids = [headers["webhook-id"] for headers, _ in receiver.requests]
    assert ids[0] in ids[1:]  # the retry carries the refused attempt's id
    assert len(set(ids)) == 2
    recipients = set()
    for headers, body in receiver.requests:
        envelope = Webhook(endpoint.secret).verify(body, headers)
        assert envelope["type"] == "invoice.paid"
        data = envelope["data"]
        assert data["event"]["id"] == event.event.id
        assert data["payload"] == {"invoice": 7}
        recipients.add(data["recipient"]["id"])
    assert recipients == {"ann", "bob"}
    # the endpoint that does not take the event type heard nothing: every request verified
    # with the first endpoint's secret above
    assert other.secret != endpoint.secret

    report = await rt.services.notify.event_report(event.event.id)  # type: ignore[union-attr]
    assert sorted(m["status"] for m in report["messages"]) == ["sent", "sent"]
    attempts = [t for t in report["trail"] if t["type"] == "delivery"]
    assert sorted(a["status"] for a in attempts) == ["retrying", "sent", "sent"]
    async with rt.engine.connect() as conn:
        kinds = sorted((await conn.execute(select(jobs.c.kind))).scalars())
    deliveries = [k for k in kinds if k.startswith("notify.deliver")]
    if priority is Priority.BULK:
        assert deliveries == ["notify.deliver", "notify.deliver_batch"]  # one retried alone
    else:
        assert deliveries == ["notify.deliver", "notify.deliver"]


@pytest.mark.parametrize("priority", [Priority.TRANSACTIONAL, Priority.BULK])
async def test_a_webhook_step_carries_its_template_rendered_per_recipient(
    runtime: tuple[Runtime, ManualClock], receiver: Receiver, priority: Priority
) -> None:
    rt, _ = runtime
    endpoint = await rt.services.webhooks.create(receiver.url, event_types=("order.paid",))
    templates = rt.services.templates
    await templates.create("order-paid", "Order paid", "in_app")
    await templates.add_version(
        "order-paid",
        {
            "locales": {
                "en": {"title": "Paid {{ payload.order }}", "body": "Hi {{ subscriber.id }}"},
                "de": {"title": "Bezahlt {{ payload.order }}", "body": "Hallo"},
            }
        },
    )
    await templates.publish("order-paid", 1)
    await rt.services.subscribers.put("ann", {"locale": "de"})
    event = await rt.services.ingest.ingest(
        EventInput(
            type="order.paid", payload={"order": 42}, recipients=("ann", "bob"), priority=priority
        )
    )
    await drain(rt)
    by_recipient = {}
    for headers, body in receiver.requests:
        data = Webhook(endpoint.secret).verify(body, headers)["data"]
        by_recipient[data["recipient"]["id"]] = data["template"]
    assert by_recipient == {
        "ann": {
            "id": "order-paid",
            "version": 1,
            "channel": "in_app",
            "locale": "de",
            "variant": None,
            "fields": {"title": "Bezahlt 42", "body": "Hallo"},
        },
        "bob": {
            "id": "order-paid",
            "version": 1,
            "channel": "in_app",
            "locale": "en",
            "variant": None,
            "fields": {"title": "Paid 42", "body": "Hi bob"},
        },
    }
    report = await rt.services.notify.event_report(event.event.id)  # type: ignore[union-attr]
    assert sorted(m["status"] for m in report["messages"]) == ["sent", "sent"]
