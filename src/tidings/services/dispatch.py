"""Dispatch: what happens to an event after it is stored. Each step is recorded as an outcome
on the event, so `GET /v1/events/{id}` explains what happened downstream."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import orjson

from tidings.core import subscribers as subscriber_rules
from tidings.errors import InvalidInput, NotFound
from tidings.ports.events import EventStore
from tidings.services.worker import PermanentJobError
from tidings.types import JSON, EventRecord, EventState, Job, Outcome, Publication

log = logging.getLogger(__name__)


class ChannelFanout(Protocol):
    """Publishes to real-time channels (the gateway implements it)."""

    async def publish(
        self, channel: str, data: bytes, *, idempotency_key: str | None = None
    ) -> Publication: ...


def channel_message(event: EventRecord) -> bytes:
    """The JSON a real-time subscriber receives for an event, encoded once per event."""
    body: JSON = {
        "event_id": event.id,
        "type": event.type,
        "actor": event.actor,
        "payload": event.payload,
        "created_at": event.created_at,
    }
    return orjson.dumps(body)


class Dispatcher:
    def __init__(
        self,
        events: EventStore,
        fanout: ChannelFanout,
        notify: Callable[[EventRecord], Awaitable[None]] | None = None,
    ) -> None:
        self._events = events
        self._fanout = fanout
        self.notify = notify

    async def handle(self, job: Job) -> None:
        event_id = str(job.payload.get("event_id", ""))
        event = await self._events.get(event_id)
        if event is None:
            raise PermanentJobError(f"event {event_id} not found")
        if event.state != EventState.ACCEPTED:
            return  # already dispatched by an earlier attempt
        done = {o.target for o in event.outcomes if o.kind == "channel" and o.status == "published"}
        data = channel_message(event)
        for channel in event.channels:
            if channel in done:
                continue
            # The idempotency key makes a retried attempt return the original publication.
            pub = await self._fanout.publish(channel, data, idempotency_key=event.id)
            await self._events.add_outcome(
                event.id,
                Outcome(
                    kind="channel",
                    target=channel,
                    status="published",
                    detail=f"epoch={pub.epoch} offset={pub.offset}",
                ),
            )
        if self.notify is not None and (event.recipients or event.topic):
            event = await self._valid_recipients(event)
            if event.recipients or event.topic:
                # The recipients' workflow runs, in batch jobs; repeating it enqueues nothing
                # new.
                await self.notify(event)
        if not await self._events.transition(event.id, EventState.ACCEPTED, EventState.DISPATCHED):
            log.info("event cancelled while dispatching", extra={"event_id": event.id})
            return
        log.debug("event dispatched", extra={"event_id": event.id})

    async def _valid_recipients(self, event: EventRecord) -> EventRecord:
        """The event without the recipient ids no subscriber can have (ingest refuses them;
        an event stored before it did may hold some): each is recorded once as a `recipient`
        outcome `not_sent`, and the others are notified as usual."""
        valid: list[str] = []
        recorded = {o.target for o in event.outcomes if o.kind == "recipient"}
        for recipient in event.recipients:
            try:
                valid.append(subscriber_rules.subscriber_id(recipient, field="recipients"))
            except InvalidInput as exc:
                if recipient in recorded:
                    continue
                recorded.add(recipient)
                await self._events.add_outcome(
                    event.id,
                    Outcome(
                        kind="recipient",
                        target=recipient,
                        status="not_sent",
                        detail=f"not a subscriber id: {exc.message}",
                    ),
                )
        if len(valid) == len(event.recipients):
            return event
        return dataclasses.replace(event, recipients=tuple(valid))

    async def fail(self, job: Job, reason: str) -> None:
        """Called when the dispatch job is dead-lettered."""
        event_id = str(job.payload.get("event_id", ""))
        try:
            await self._events.add_outcome(
                event_id, Outcome(kind="dispatch", target="event", status="failed", detail=reason)
            )
            await self._events.set_state(event_id, EventState.FAILED)
        except NotFound:
            log.warning("dead-lettered dispatch for unknown event", extra={"event_id": event_id})
