"""The Python SDK's notification calls against the app: subscribers and topics, a workflow,
an event, its report, a status report, cancellation and the problems it raises."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.api.conftest import Api
from tidings.sdk import Tidings, TidingsApiError

WORKFLOW: dict[str, Any] = {
    "steps": [
        {"id": "inapp", "type": "in_app", "content": {"title": "Hi", "body": "{{ payload.n }}"}},
        {
            "id": "later",
            "type": "in_app",
            "content": {"body": "still unread"},
            "wait_for": {"step": "inapp", "status": "read", "timeout": "1h"},
        },
    ]
}


def sdk(api: Api) -> Tidings:
    transport = api.client._transport  # the app, in process
    return Tidings("http://tidings", api.publish_key, transport=transport)


async def report_when(t: Tidings, event_id: str, done: Any) -> dict[str, Any]:
    for _ in range(200):
        report = await t.notifications(event_id)
        if report["runs"] and done(report):
            return report
        await asyncio.sleep(0.02)
    raise AssertionError(f"not settled: {report}")


async def test_sdk_subscribers_workflow_event_report_status_and_cancel(api: Api) -> None:
    async with sdk(api) as t:
        made = await t.put_subscriber("ana+1@x", email="ana@example.com", timezone="UTC")
        assert made["id"] == "ana+1@x"
        assert (await t.update_subscriber("ana+1@x", data={"vip": True}))["data"] == {"vip": True}
        assert (await t.get_subscriber("ana+1@x"))["email"] == "ana@example.com"
        await t.put_subscriber("bo")
        await t.create_topic("team", "Team")
        assert await t.add_to_topic("team", ["ana+1@x", "bo"]) == 2
        assert await t.remove_from_topic("team", ["bo"]) == 1
        await t.put_workflow("billing/paid@v2", WORKFLOW)
        assert (await t.get_workflow("billing/paid@v2"))["key"] == "billing/paid@v2"

        accepted = await t.send_event(
            "billing/paid@v2", topic="team", payload={"n": 7}, idempotency_key="evt-sdk-1"
        )
        assert accepted["idempotency_key"] == "evt-sdk-1"
        again = await t.send_event(
            "billing/paid@v2", topic="team", payload={"n": 7}, idempotency_key="evt-sdk-1"
        )
        assert again["id"] == accepted["id"]
        report = await report_when(
            t, accepted["id"], lambda r: {run["state"] for run in r["runs"]} == {"waiting"}
        )
        assert [run["recipient"] for run in report["runs"]] == ["ana+1@x"]
        [message] = report["messages"]
        assert (await t.message(message["id"]))["status"] == "delivered"
        reported = await t.report_status(message["id"], "read")
        assert set(reported["engagement"]) == {"seen", "read"}
        report = await report_when(
            t, accepted["id"], lambda r: {run["state"] for run in r["runs"]} == {"done"}
        )
        later = [e for e in report["trail"] if e["type"] == "step" and e["step"] == "later"]
        assert [(e["outcome"], e["reason"]) for e in later] == [("not_needed", "inapp_read")]
        mine = await t.subscriber_notifications("ana+1@x", limit=1)
        assert len(mine["trail"]) == 1 and mine["next_cursor"]

        held = await t.send_event(
            "billing/paid@v2", recipients=["bo"], payload={"n": 8}, priority="bulk"
        )
        await t.cancel_event(held["id"])
        with pytest.raises(TidingsApiError) as again:
            await t.cancel_event(held["id"])
        assert again.value.status == 409
        assert len(await t.subscriber_token("ana+1@x", ttl=60)) > 20
        assert await t.delete_subscriber("ana+1@x") == 1
        with pytest.raises(TidingsApiError) as gone:
            await t.get_subscriber("ana+1@x")
        assert gone.value.status == 404
        assert gone.value.problem["status"] == 404
        await t.delete_workflow("billing/paid@v2")
        with pytest.raises(TidingsApiError) as bad:
            await t.send_event("x", recipients=["not an id"])
        assert bad.value.status == 422 and bad.value.problem["errors"][0]["field"] == "recipients.0"
