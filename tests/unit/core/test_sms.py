"""SMS encoding and segment counts as carriers count them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.core.sms import GSM7_BASIC, GSM7_EXTENSION, Encoding, check, count
from tidings.errors import InvalidInput


@pytest.mark.parametrize(
    ("text", "encoding", "units", "segments"),
    [
        ("", Encoding.GSM7, 0, 0),
        ("a" * 160, Encoding.GSM7, 160, 1),
        ("a" * 161, Encoding.GSM7, 161, 2),
        ("a" * 306, Encoding.GSM7, 306, 2),
        ("a" * 307, Encoding.GSM7, 307, 3),
        ("€" * 80, Encoding.GSM7, 160, 1),  # extension characters count twice
        ("€" * 81, Encoding.GSM7, 162, 2),
        ("a" * 152 + "€" + "a", Encoding.GSM7, 155, 1),  # 160 septets fit one segment
        ("Grüße à Ñandù", Encoding.GSM7, 13, 1),  # in the default alphabet
        ("ü" * 70 + "ĉ", Encoding.UCS2, 71, 2),  # one character outside: all UCS-2
        ("ĉ" * 70, Encoding.UCS2, 70, 1),
        ("ĉ" * 134, Encoding.UCS2, 134, 2),
        ("ĉ" * 135, Encoding.UCS2, 135, 3),
        ("😀" * 35, Encoding.UCS2, 70, 1),  # surrogate pairs count two
        ("😀" * 36, Encoding.UCS2, 72, 2),
    ],
)
def test_counts(text: str, encoding: Encoding, units: int, segments: int) -> None:
    got = count(text)
    assert (got.encoding, got.units, got.segments) == (encoding, units, segments)


def test_an_extension_character_is_not_split_across_segments() -> None:
    # 152 septets then a two-septet character: it cannot take the 153rd septet alone
    text = "a" * 152 + "€" + "a" * 152
    assert count(text).segments == 3  # 152 | 2+151 | 1


def test_a_surrogate_pair_is_not_split_across_segments() -> None:
    text = "ĉ" * 66 + "😀" + "ĉ" * 66
    assert count(text).segments == 3  # 66 | 2+65 | 1


@given(st.text(alphabet=sorted(GSM7_BASIC | GSM7_EXTENSION), max_size=700))
def test_gsm_texts_never_need_more_segments_than_units_allow(text: str) -> None:
    got = count(text)
    assert got.encoding is Encoding.GSM7
    if got.units > 160:
        assert got.segments >= -(-got.units // 153)
        assert got.segments <= -(-got.units // 152)
    else:
        assert got.segments == (1 if text else 0)


def test_check_refuses_with_a_reason() -> None:
    with pytest.raises(InvalidInput, match=r"3 segments .* the limit is 2"):
        check("a" * 400, max_segments=2)
    with pytest.raises(InvalidInput, match="not in the GSM-7 alphabet: 'ĉ'"):
        check("hello ĉ", max_segments=5, allow_unicode=False)
    with pytest.raises(InvalidInput, match="needs text"):
        check("", max_segments=1)
    assert check("hi", max_segments=1).segments == 1
