"""Idempotency keys and request fingerprints."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson


def fingerprint(body: Any) -> str:
    """SHA-256 of the canonical JSON of a request body (keys sorted), hex encoded.

    Two bodies that differ only in key order or whitespace have one fingerprint.
    """
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def effect_key(event_id: str, recipient: str, channel: str, template_version: str) -> str:
    """The one-effect key: one user-visible effect per event, recipient, channel and version."""
    raw = "\x1f".join((event_id, recipient, channel, template_version))
    return hashlib.sha256(raw.encode()).hexdigest()
