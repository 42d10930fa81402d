from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.core.sse import (
    KEEPALIVE,
    CursorError,
    decode_cursor,
    encode_comment,
    encode_cursor,
    encode_event,
    encode_retry,
)
from tidings.types import StreamPosition


def test_event_fields_and_multi_line_data() -> None:
    assert encode_event(b'{"a":1}', event="pub", id="c1", retry=3000) == (
        b'id: c1\nevent: pub\nretry: 3000\ndata: {"a":1}\n\n'
    )
    assert encode_event("one\r\ntwo\rthree\nfour") == (
        b"data: one\ndata: two\ndata: three\ndata: four\n\n"
    )
    assert encode_event("") == b"data: \n\n"
    assert encode_event("end\n") == b"data: end\ndata: \n\n"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"id": "a\nb"},
        {"id": "a\rb"},
        {"id": "a\0b"},
        {"event": "a\nb"},
        {"event": ""},
        {"retry": -1},
        {"retry": True},
    ],
)
def test_event_refuses_fields_that_would_break_framing(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        encode_event("x", **kwargs)  # type: ignore[arg-type]


def test_comments_and_retry() -> None:
    assert KEEPALIVE == b":\n\n"
    assert encode_comment() == b":\n\n"
    assert encode_comment("ping") == b": ping\n\n"
    assert encode_comment("a\nb") == b": a\n: b\n\n"
    assert encode_retry(500) == b"retry: 500\n\n"


def _parse(stream: bytes) -> list[str]:
    """What an EventSource hands to `onmessage`: data lines joined with LF."""
    events: list[str] = []
    data: list[str] = []
    for line in stream.decode().split("\n"):
        if line == "":
            if data:
                events.append("\n".join(data))
            data = []
        elif line.startswith("data: "):
            data.append(line[6:])
    return events


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=50))
def test_data_survives_the_round_trip_with_normalised_line_breaks(text: str) -> None:
    expected = text.replace("\r\n", "\n").replace("\r", "\n")
    assert _parse(encode_event(text)) == [expected]


channels = st.from_regex(r"[A-Za-z0-9_\-.:@#$,=+!~;/|]{1,40}", fullmatch=True)
positions = st.dictionaries(
    channels,
    st.builds(
        StreamPosition,
        offset=st.integers(0, 2**64 - 1),
        epoch=st.text(max_size=16),
    ),
    max_size=20,
)


@given(positions)
def test_cursor_round_trip(value: dict[str, StreamPosition]) -> None:
    cursor = encode_cursor(value)
    assert decode_cursor(cursor) == value
    assert cursor == "" or (cursor[0] == "1" and cursor.isascii() and "=" not in cursor)
    assert all(c.isalnum() or c in "-_" for c in cursor)


def test_cursor_is_deterministic() -> None:
    a = {"b": StreamPosition(1, "x"), "a": StreamPosition(2, "y")}
    assert encode_cursor(a) == encode_cursor(dict(reversed(list(a.items()))))


def _packed(rows: object) -> str:
    return "1" + base64.urlsafe_b64encode(json.dumps(rows).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "2abc",
        "1",
        "1***",
        "1a",
        "1" + "A" * 20_000,
        "1" + base64.urlsafe_b64encode(b"not json").decode(),
        _packed({"news": [1, "e"]}),
        _packed([]),
        _packed([["news", "e"]]),
        _packed([["news", "e", -1]]),
        _packed([["news", "e", 2**64]]),
        _packed([["news", "e", 1.5]]),
        _packed([["news", "e", True]]),
        _packed([["news", 5, 1]]),
        _packed([["news", "e" * 65, 1]]),
        _packed([[7, "e", 1]]),
        _packed([["bad channel", "e", 1]]),
        _packed([["", "e", 1]]),
        _packed([["news", "e", 1], ["news", "f", 2]]),
        _packed([["c", "e", 1]] * 257),
    ],
)
def test_malformed_cursors_are_rejected(cursor: str) -> None:
    with pytest.raises(CursorError) as info:
        decode_cursor(cursor)
    assert info.value.field == "cursor"


def test_empty_cursor_means_no_positions() -> None:
    assert encode_cursor({}) == "" and decode_cursor("") == {}
