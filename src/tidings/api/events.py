"""POST /v1/events (exactly-once ingest), GET /v1/events/{id} and cancellation."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request, Response

from tidings.api.auth import require, services
from tidings.api.problems import problem_responses
from tidings.api.schemas import EventAccepted, EventCancelIn, EventIn, EventOut
from tidings.errors import NotFound
from tidings.services.ingest import EventInput
from tidings.types import ApiKey, Scope

router = APIRouter(prefix="/v1/events", tags=["events"])


@router.post(
    "",
    status_code=202,
    response_model=EventAccepted,
    responses=problem_responses(401, 403, 409, 413, 422),
    summary="Accept an authoritative event (exactly once per idempotency key)",
)
async def post_event(
    request: Request,
    response: Response,
    body: EventIn,
    _key: Annotated[ApiKey, Depends(require(Scope.PUBLISH))],
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)
    ] = None,
) -> EventAccepted:
    svc = services(request)
    result = await svc.ingest.ingest(
        EventInput(
            type=body.type,
            payload=body.payload,
            actor=body.actor,
            recipients=tuple(body.recipients),
            topic=body.topic,
            channels=tuple(body.channels),
            priority=body.priority,
            send_at=body.send_at.timestamp() if body.send_at else None,
            external_id=body.id,
        ),
        idempotency_key,
    )
    event = result.event
    accepted = EventAccepted.model_validate(
        {
            "id": event.id,
            "idempotency_key": event.idempotency_key,
            "state": "accepted",
            "created_at": EventOut.of(event).created_at,
            "href": f"/v1/events/{event.id}",
        }
    )
    response.headers["Location"] = accepted.href
    if not result.created:
        response.headers["Idempotent-Replayed"] = "true"
    return accepted


@router.get(
    "/{event_id}",
    response_model=EventOut,
    responses=problem_responses(401, 403, 404),
    summary="An event and what happened downstream of it",
)
async def get_event(
    request: Request,
    event_id: str,
    _key: Annotated[ApiKey, Depends(require(Scope.PUBLISH))],
) -> EventOut:
    event = await services(request).ingest.get(event_id)
    if event is None:
        raise NotFound(f"event {event_id} not found")
    return EventOut.of(event)


@router.post(
    "/cancel",
    response_model=EventOut,
    responses=problem_responses(401, 403, 404, 409, 422),
    summary="Cancel the event sent with an idempotency key",
)
async def cancel_event_by_key(
    request: Request,
    body: EventCancelIn,
    _key: Annotated[ApiKey, Depends(require(Scope.PUBLISH))],
) -> EventOut:
    return EventOut.of(await services(request).ingest.cancel_by_key(body.idempotency_key))


@router.post(
    "/{event_id}/cancel",
    response_model=EventOut,
    responses=problem_responses(401, 403, 404, 409),
    summary="Cancel an event: not dispatched yet, or its workflow runs still going",
)
async def cancel_event(
    request: Request,
    event_id: str,
    _key: Annotated[ApiKey, Depends(require(Scope.PUBLISH))],
) -> EventOut:
    return EventOut.of(await services(request).ingest.cancel(event_id))
