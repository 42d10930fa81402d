"""SMS encoding and segment count (pure), as carriers count them.

A message is GSM-7 when every character is in the GSM 03.38 default alphabet or its extension
table; extension characters (``^ { } \\ [ ~ ] | €`` and form feed) take two septets (an escape
plus the character). Otherwise it goes as UCS-2 and every UTF-16 code unit counts (an emoji
outside the Basic Multilingual Plane is two).

One segment holds 160 septets or 70 UCS-2 units. A longer message is split into segments of
153 septets or 67 units (the rest of each holds the concatenation header), and a two-septet
extension character or a surrogate pair is never split across segments, so a segment may hold
one unit less.
"""

from __future__ import annotations

import enum

from tidings.errors import InvalidInput
from tidings.records import record

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")


class Encoding(enum.StrEnum):
    GSM7 = "gsm7"
    UCS2 = "ucs2"


@record
class SmsCount:
    encoding: Encoding
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    segments: int
    per_segment: int  # capacity of one segment in this message's encoding
    non_gsm: tuple[str, ...] = ()  # the characters that forced UCS-2, first few


def _units(text: str) -> tuple[Encoding, list[int], tuple[str, ...]]:
    """Each character's size in units, in the encoding the text needs."""
    outside = [c for c in text if c not in GSM7_BASIC and c not in GSM7_EXTENSION]
    if not outside:
        return Encoding.GSM7, [2 if c in GSM7_EXTENSION else 1 for c in text], ()
    sizes = [2 if ord(c) > 0xFFFF else 1 for c in text]
    return Encoding.UCS2, sizes, tuple(dict.fromkeys(outside))[:5]


def count(text: str) -> SmsCount:
    encoding, sizes, non_gsm = _units(text)
    single, multi = (160, 153) if encoding is Encoding.GSM7 else (70, 67)
    total = sum(sizes)
    if total <= single:
        return SmsCount(encoding, total, 1 if total else 0, single, non_gsm)
    segments, used = 1, 0
    for size in sizes:  # greedy, never splitting a character
        if used + size > multi:
            segments, used = segments + 1, 0
        used += size
    return SmsCount(encoding, total, segments, multi, non_gsm)


def check(text: str, *, max_segments: int, allow_unicode: bool = True) -> SmsCount:
    """`count`, refusing a message over `max_segments` (or needing UCS-2 when not allowed)
    with `InvalidInput` that says why."""
    result = count(text)
    if not text:
        raise InvalidInput("an SMS needs text", field="text")
    if result.encoding is Encoding.UCS2 and not allow_unicode:
        chars = ", ".join(repr(c) for c in result.non_gsm)
        raise InvalidInput(f"not in the GSM-7 alphabet: {chars}", field="text")
    if result.segments > max_segments:
        raise InvalidInput(
            f"{result.segments} segments ({result.units} {result.encoding.value} units); "
            f"the limit is {max_segments}",
            field="text",
        )
    return result
