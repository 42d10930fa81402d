"""Recipient ids follow the subscriber id rule: ingest refuses an event naming an id no
subscriber can have, and the dispatch of an event stored before it did records such an id as
not sent and notifies the other recipients instead of failing the whole event."""

from __future__ import annotations

import pytest

from tidings.adapters.clock import ManualClock
from tidings.adapters.memory import MemoryEventStore, MemoryJobQueue
from tidings.errors import InvalidInput
from tidings.services.dispatch import Dispatcher
from tidings.services.ingest import DISPATCH_JOB, EventInput, IngestService
from tidings.types import (
    EventRecord,
    EventState,
    Job,
    NewEvent,
    NewJob,
    Priority,
    Publication,
)

RULE = "must be 1..200 characters of A-Z a-z 0-9 _ . @ : = + -"


class NoFanout:
    async def publish(
        self, channel: str, data: bytes, *, idempotency_key: str | None = None
    ) -> Publication:
        raise AssertionError("no channel to publish to")


class Notify:
    """The orchestrator's `start`: records the events it is given; fails `failures` times."""

    def __init__(self, failures: int = 0) -> None:
        self.seen: list[EventRecord] = []
        self.failures = failures

    async def __call__(self, event: EventRecord) -> None:
        self.seen.append(event)
        if self.failures:
            self.failures -= 1
            raise ConnectionError("database went away")


@pytest.mark.parametrize(
    ("recipients", "field"),
    [
        (("u05", "bad id"), "recipients.1"),
        (("",), "recipients.0"),
        (("u1", "u2", "a#b"), "recipients.2"),
        (("x" * 201,), "recipients.0"),
    ],
)
async def test_ingest_refuses_a_bad_recipient_and_stores_nothing(
    recipients: tuple[str, ...], field: str
) -> None:
    clock = ManualClock()
    jobs = MemoryJobQueue(clock)
    events = MemoryEventStore(clock, jobs)
    ingest = IngestService(events, jobs, clock, max_payload_bytes=1024)
    with pytest.raises(InvalidInput) as caught:
        await ingest.ingest(EventInput(type="t", payload={}, recipients=recipients), "k")
    assert (caught.value.field, caught.value.message) == (field, RULE)
    assert await events.get_by_key("k") is None
    assert await jobs.claim("w", [Priority.TRANSACTIONAL], 10, 5.0) == []

    accepted = await ingest.ingest(EventInput(type="t", payload={}, recipients=("u05",)), "k")
    assert accepted.created and accepted.event.recipients == ("u05",)


async def stored(recipients: tuple[str, ...]) -> tuple[MemoryEventStore, Job]:
    """An event stored as an older version accepted it, and its dispatch job."""
    clock = ManualClock()
    events = MemoryEventStore(clock)
    event = NewEvent(
        id="e1",
        type="comment.created",
        idempotency_key="e1",
        body_hash="-",
        actor=None,
        recipients=recipients,
        topic=None,
        channels=(),
        payload={},
        priority=Priority.TRANSACTIONAL,
        send_at=None,
    )
    await events.append(event)
    job = Job.stored(NewJob(kind=DISPATCH_JOB, payload={"event_id": "e1"}), clock.now(), "j1")
    return events, job


async def test_dispatch_records_a_bad_recipient_once_and_notifies_the_others() -> None:
    events, job = await stored(("u05", "bad id", "u06", "bad id"))
    notify = Notify(failures=1)
    dispatcher = Dispatcher(events, NoFanout(), notify)

    with pytest.raises(ConnectionError):  # a transient failure: the job is retried
        await dispatcher.handle(job)
    await dispatcher.handle(job)

    assert [e.recipients for e in notify.seen] == [("u05", "u06"), ("u05", "u06")]
    event = await events.get("e1")
    assert event is not None and event.state is EventState.DISPATCHED
    assert event.recipients == ("u05", "bad id", "u06", "bad id")  # the stored event as sent
    assert [(o.kind, o.target, o.status, o.detail) for o in event.outcomes] == [
        ("recipient", "bad id", "not_sent", f"not a subscriber id: {RULE}")
    ]


async def test_dispatch_with_only_bad_recipients_notifies_nobody() -> None:
    events, job = await stored(("bad id", "a/b"))
    notify = Notify()
    await Dispatcher(events, NoFanout(), notify).handle(job)

    assert notify.seen == []
    event = await events.get("e1")
    assert event is not None and event.state is EventState.DISPATCHED
    assert [(o.target, o.status) for o in event.outcomes] == [
        ("bad id", "not_sent"),
        ("a/b", "not_sent"),
    ]


async def test_dispatch_passes_a_valid_event_on_unchanged() -> None:
    events, job = await stored(("u05", "u06"))
    notify = Notify()
    await Dispatcher(events, NoFanout(), notify).handle(job)

    assert [e.recipients for e in notify.seen] == [("u05", "u06")]
    event = await events.get("e1")
    assert event is not None and event.outcomes == ()
