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
