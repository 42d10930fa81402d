"""Server-to-client WebSocket frames (RFC 6455 §5.2). Server frames are never masked, so one
encoded frame can be written to every subscriber of a channel as it is."""

from __future__ import annotations

import struct

OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8


def frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One final, unmasked frame carrying `payload`."""
    n = len(payload)
    first = 0x80 | opcode
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", first, 126, n) + payload
    return struct.pack("!BBQ", first, 127, n) + payload
