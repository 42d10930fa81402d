"""Notification API (scope `publish`): workflows, the per-event and per-subscriber trail of
decisions and deliveries, and delivery/engagement reports for messages."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from tidings.api.auth import require, services
from tidings.api.problems import problem_responses
from tidings.errors import InvalidInput, NotFound
from tidings.services.notify import Orchestrator, message_json
from tidings.types import Scope

router = APIRouter(tags=["notifications"], dependencies=[Depends(require(Scope.PUBLISH))])
PROBLEM = problem_responses(401, 403, 404, 409, 422)
Key = Annotated[str, Field(min_length=1, max_length=200)]


def orchestrator(request: Request) -> Orchestrator:
    found = services(request).notify
    if found is None:  # pragma: no cover - the runtime always builds one
        raise NotFound("notifications are not configured")
    return found


def _cursor(value: str | None) -> int:
    if value is None:
        return 0
    if not value.isdigit() or len(value) > 18:
        raise InvalidInput("not a cursor from this API", field="cursor")
    return int(value)


@router.get("/v1/workflows", summary="Every workflow: from files and defined through the API")
async def list_workflows(request: Request) -> dict[str, Any]:
    return {"items": await orchestrator(request).workflows.listing()}


@router.get("/v1/workflows/{key:path}", responses=PROBLEM, summary="One workflow's definition")
async def get_workflow(request: Request, key: str) -> dict[str, Any]:
    for item in await orchestrator(request).workflows.listing():
        if item["key"] == key:
            return item
    raise NotFound(f"workflow {key} not found")


@router.put(
    "/v1/workflows/{key:path}",
    responses=PROBLEM,
    summary="Define or replace a workflow (the key is the event type that triggers it)",
)
async def put_workflow(
    request: Request,
    key: str,
    definition: Annotated[dict[str, Any], Body(description="See docs/workflows.md")],
) -> dict[str, Any]:
    if "key" in definition and definition["key"] != key:
        raise InvalidInput("differs from the key in the path", field="key")
    notify = orchestrator(request)
    record = await notify.workflows.put(
        key, definition, templates=notify.templates.store, endpoints=notify.webhooks.store
    )
    return {
        "key": record.key,
        "source": "api",
        "revision": record.revision,
        "workflow": dict(record.definition),
    }


@router.delete("/v1/workflows/{key:path}", status_code=204, responses=PROBLEM)
async def delete_workflow(request: Request, key: str) -> None:
    await orchestrator(request).workflows.delete(key)


@router.get(
    "/v1/events/{event_id}/notifications",
    responses=PROBLEM,
    summary="Why each message of an event was sent, held, suppressed or failed",
)
async def event_notifications(
    request: Request,
    event_id: str,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> dict[str, Any]:
    if await services(request).ingest.get(event_id) is None:
        raise NotFound(f"event {event_id} not found")
    return await orchestrator(request).event_report(event_id, after=cursor, limit=limit)


@router.get(
    "/v1/subscribers/{subscriber_id}/notifications",
    responses=PROBLEM,
    summary="A subscriber's messages and trail, oldest trail entries first",
)
async def subscriber_notifications(
    request: Request,
    subscriber_id: str,
    cursor: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> dict[str, Any]:
    return await orchestrator(request).recipient_report(
        subscriber_id, after=_cursor(cursor), limit=limit
    )


@router.get("/v1/messages/{message_id}", responses=PROBLEM, summary="One message")
async def get_message(request: Request, message_id: str) -> dict[str, Any]:
    message = await orchestrator(request).runs.message(message_id)
    if message is None:
        raise NotFound(f"message {message_id} not found")
    return message_json(message)


class ReportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: Annotated[
        str,
        Field(description="delivered | bounced | failed | seen | read | clicked | archived"),
    ]
    at: Annotated[float | None, Field(ge=0, description="epoch seconds; default now")] = None


@router.post(
    "/v1/messages/{message_id}/status",
    responses=PROBLEM,
    summary="Report delivery or engagement (provider callbacks, clients)",
)
async def report_status(request: Request, message_id: str, body: ReportIn) -> dict[str, Any]:
    message = await orchestrator(request).report(message_id, body.status, body.at)
    return message_json(message)
