"""Opaque pagination cursors: a position packed into a short URL-safe token.

A cursor is base64url of compact JSON; it is opaque to clients (they only hand back what a
page gave them) but not secret. A token that does not decode to the expected shape raises
`InvalidInput(field="cursor")` instead of paging from a wrong place.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson

from tidings.errors import InvalidInput

MAX_CURSOR_LENGTH = 1024


def encode_cursor(position: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(position)).rstrip(b"=").decode()


def decode_cursor(cursor: str, keys: dict[str, type], field: str = "cursor") -> dict[str, Any]:
    """The position in `cursor`; it must hold exactly `keys`, each of the given type."""
    if len(cursor) > MAX_CURSOR_LENGTH:
        raise InvalidInput("cursor too long", field=field)
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        position = orjson.loads(raw)
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise InvalidInput("not a cursor this API gave out", field=field) from None
    if not isinstance(position, dict) or set(position) != set(keys):
        raise InvalidInput("not a cursor this API gave out", field=field)
    for key, kind in keys.items():
        value = position[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise InvalidInput("not a cursor this API gave out", field=field)
    return position
