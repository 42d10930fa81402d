"""Digest windows, ids and payloads.

Windows are aligned to the Unix epoch: a 1 h window runs from one full UTC hour to the next, so
every run that reaches a digest step for the same workflow, recipient and key within one
window computes the same window start and therefore the same digest id, without asking a
store. The store only has to make the join atomic (insert-if-absent on the id) for exactly one
run to become the leader that sends the digest.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

from tidings.core.notify.conditions import MISSING, resolve
from tidings.core.notify.model import canonical
from tidings.records import record


def digest_window(window: float, at: float) -> tuple[float, float]:
    """The ``[start, end)`` of the epoch-aligned window of length ``window`` holding ``at``."""
    start = math.floor(at / window) * window
    return start, start + window


def key_value(path: Sequence[str] | None, context: Mapping[str, Any]) -> str:
    """The digest or throttle key of a run: the canonical JSON of the value at ``path``; the
    empty string when there is no path or the field is missing (all such runs share a key)."""
    if path is None:
        return ""
    value = resolve(path, context)
    if value is MISSING:
        return ""
    try:
        return canonical(value).decode()
    except TypeError:
        return repr(value)


def digest_id(workflow: str, step: str, subscriber: str, key: str, window_start: float) -> str:
    """Deterministic id of one digest: SHA-256 over workflow, step, subscriber, key and the
    window start, hex (the first 32 characters)."""
    body = canonical([workflow, step, subscriber, key, repr(float(window_start))])
    return hashlib.sha256(body).hexdigest()[:32]


@record
class DigestEvent:
    """One event collected into a digest."""

    event_id: str
    at: float
    payload: Mapping[str, Any]
    actor: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "at": self.at,
            "actor": self.actor,
            "payload": self.payload,
        }


def build_digest(events: Sequence[DigestEvent], max_events: int = 50) -> dict[str, Any]:
    """The digest payload templates see as ``digest``.

    Events are ordered by (time, id) and de-duplicated by id (a join may be retried).
    ``count`` is exact; ``events`` lists the first ``max_events``; ``truncated`` says whether
    some were left out; ``first`` and ``last`` are the earliest and latest event; ``actors``
    lists distinct actors in order of first appearance (at most ``max_events``)."""
    unique: dict[str, DigestEvent] = {}
    for event in sorted(events, key=lambda e: (e.at, e.event_id)):
        unique.setdefault(event.event_id, event)
    ordered = list(unique.values())
    actors: list[str] = []
    for event in ordered:
        if event.actor is not None and event.actor not in actors and len(actors) < max_events:
            actors.append(event.actor)
    return {
        "count": len(ordered),
        "events": [e.to_json() for e in ordered[:max_events]],
        "truncated": len(ordered) > max_events,
        "first": ordered[0].to_json() if ordered else None,
        "last": ordered[-1].to_json() if ordered else None,
        "actors": actors,
    }
