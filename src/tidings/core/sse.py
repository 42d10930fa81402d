"""Server-sent events encoding and the stream-position cursor.

An SSE event is a block of `field: value` lines ended by a blank line. Data spanning several
lines becomes several `data:` lines (the browser joins them back with `\\n`); a line starting
with `:` is a comment, which keeps idle connections open.

The cursor packs `{channel: StreamPosition}` into one compact, URL-safe token. SSE sends it
as the event `id`, so a reconnecting `EventSource` returns it in `Last-Event-ID`; long-poll
clients pass it back as a query parameter. Decoding is strict: anything malformed raises
`CursorError` rather than resuming from a wrong place.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping

import orjson

from tidings.core.channels import ChannelError, validate_channel
from tidings.errors import InvalidInput
from tidings.types import StreamPosition

KEEPALIVE = b":\n\n"
CURSOR_VERSION = "1"
MAX_CURSOR_LENGTH = 16 * 1024
MAX_CURSOR_CHANNELS = 256
MAX_EPOCH_LENGTH = 64
MAX_OFFSET = 2**64 - 1

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def encode_event(
    data: bytes | str,
    *,
    event: str | None = None,
    id: str | None = None,
    retry: int | None = None,
) -> bytes:
    """One SSE event. `data` may span lines (CRLF, CR or LF); `event` and `id` may not, and
    `id` may not contain NUL (browsers ignore such ids). `retry` is in milliseconds."""
    text = data.decode() if isinstance(data, bytes) else data
    parts: list[str] = []
    if id is not None:
        if _LINE_BREAK.search(id) or "\0" in id:
            raise ValueError("SSE id may not contain line breaks or NUL")
        parts.append(f"id: {id}\n")
    if event is not None:
        if not event or _LINE_BREAK.search(event):
            raise ValueError("SSE event must be one non-empty line")
        parts.append(f"event: {event}\n")
    if retry is not None:
        parts.append(_retry_line(retry))
    parts.extend(f"data: {line}\n" for line in _LINE_BREAK.split(text))
    parts.append("\n")
    return "".join(parts).encode()


def encode_comment(text: str = "") -> bytes:
    """A comment block (ignored by clients), e.g. a keepalive. Multi-line text is allowed."""
    lines = _LINE_BREAK.split(text)
    return ("".join(f":{' ' if line else ''}{line}\n" for line in lines) + "\n").encode()


def encode_retry(milliseconds: int) -> bytes:
    """Tell the client how long to wait before reconnecting."""
    return (_retry_line(milliseconds) + "\n").encode()


def _retry_line(milliseconds: int) -> str:
    if isinstance(milliseconds, bool) or not isinstance(milliseconds, int) or milliseconds < 0:
        raise ValueError("SSE retry must be a non-negative integer of milliseconds")
    return f"retry: {milliseconds}\n"


class CursorError(InvalidInput):
    """A cursor (`Last-Event-ID` or long-poll `cursor`) that cannot be trusted."""

    code = "invalid_cursor"

    def __init__(self, message: str) -> None:
        super().__init__(message, field="cursor")


def encode_cursor(positions: Mapping[str, StreamPosition]) -> str:
    """`"1"` + unpadded base64url of `[[channel, epoch, offset], ...]` sorted by channel; the
    empty mapping is the empty string."""
    if not positions:
        return ""
    rows = [[ch, pos.epoch, pos.offset] for ch, pos in sorted(positions.items())]
    packed = base64.urlsafe_b64encode(orjson.dumps(rows)).rstrip(b"=").decode()
    return CURSOR_VERSION + packed


def decode_cursor(cursor: str) -> dict[str, StreamPosition]:
    """Inverse of `encode_cursor`; raises `CursorError` for anything malformed."""
    if not cursor:
        return {}
    if len(cursor) > MAX_CURSOR_LENGTH:
        raise CursorError("cursor too long")
    if not cursor.startswith(CURSOR_VERSION):
        raise CursorError("unknown cursor version")
    packed = cursor[len(CURSOR_VERSION) :]
    if not _B64URL.fullmatch(packed) or len(packed) % 4 == 1:
        raise CursorError("cursor is not base64url")
    try:
        raw = base64.urlsafe_b64decode(packed + "=" * (-len(packed) % 4))
        rows = orjson.loads(raw)
    except (binascii.Error, ValueError):
        raise CursorError("cursor does not decode") from None
    if not isinstance(rows, list) or not rows or len(rows) > MAX_CURSOR_CHANNELS:
        raise CursorError("cursor must list 1..256 positions")
    positions: dict[str, StreamPosition] = {}
    for row in rows:
        positions.update([_position(row)])
    if len(positions) != len(rows):
        raise CursorError("cursor repeats a channel")
    return positions


def _position(row: object) -> tuple[str, StreamPosition]:
    if not isinstance(row, list) or len(row) != 3:
        raise CursorError("cursor entries are [channel, epoch, offset]")
    channel, epoch, offset = row
    if not isinstance(channel, str):
        raise CursorError("cursor channel must be a string")
    try:
        validate_channel(channel)
    except ChannelError as exc:
        raise CursorError(f"cursor channel: {exc.message}") from None
    if not isinstance(epoch, str) or len(epoch) > MAX_EPOCH_LENGTH:
        raise CursorError(f"cursor epoch must be a string of at most {MAX_EPOCH_LENGTH}")
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
        raise CursorError("cursor offset must be an integer in 0..2**64-1")
    return channel, StreamPosition(offset=offset, epoch=epoch)
