"""Subscriber profile rules and opaque cursors (pure)."""

from __future__ import annotations

import pytest

from tidings.core.paging import decode_cursor, encode_cursor
from tidings.core.subscribers import (
    normalize_locale,
    normalize_phone,
    normalize_timezone,
    subscriber_id,
    suppression_key,
)
from tidings.errors import InvalidInput


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("en", "en"),
        ("pt_br", "pt-BR"),
        ("zh-hant-tw", "zh-Hant-TW"),
        ("es-419", "es-419"),
        ("de-DE-1996", "de-DE-1996"),
        ("en-US-x-Twain", "en-US-x-twain"),
        ("fil", "fil"),
    ],
)
def test_locales_are_canonical_bcp47(raw: str, canonical: str) -> None:
    assert normalize_locale(raw) == canonical


@pytest.mark.parametrize("raw", ["", "e", "english", "zz", "en--US", "en-US-", "qq-XX", "en US"])
def test_bad_locales_name_the_field(raw: str) -> None:
    with pytest.raises(InvalidInput) as err:
        normalize_locale(raw)
    assert err.value.field == "locale"


@pytest.mark.parametrize(
    ("raw", "e164"),
    [
        ("+1 (650) 253-0000", "+16502530000"),
        ("+44 20 7946 0958", "+442079460958"),
        ("+351912345678", "+351912345678"),
    ],
)
def test_phones_are_e164(raw: str, e164: str) -> None:
    assert normalize_phone(raw) == e164


@pytest.mark.parametrize("raw", ["650 253 0000", "+1 555", "+999 123456", "call me", ""])
def test_bad_phones(raw: str) -> None:
    with pytest.raises(InvalidInput) as err:
        normalize_phone(raw)
    assert err.value.field == "phone"


def test_timezones_and_ids() -> None:
    assert normalize_timezone("America/Sao_Paulo") == "America/Sao_Paulo"
    for bad in ("", "Mars/Base", " Europe/Paris", "../etc/passwd"):
        with pytest.raises(InvalidInput):
            normalize_timezone(bad)
    assert subscriber_id("user@example.com") == "user@example.com"
    for bad in ("", "a/b", "a#b", "a,b", "a b", "x" * 201):
        with pytest.raises(InvalidInput):
            subscriber_id(bad)


def test_cursors_round_trip_and_refuse_foreign_tokens() -> None:
    token = encode_cursor({"seq": 42})
    assert decode_cursor(token, {"seq": int}) == {"seq": 42}
    for bad in ("", "!!!", encode_cursor({"seq": "42"}), encode_cursor({"after": "x"}), "x" * 2000):
        with pytest.raises(InvalidInput) as err:
            decode_cursor(bad, {"seq": int})
        assert err.value.field == "cursor"


@pytest.mark.parametrize(
    ("channel", "address", "key"),
    [
        ("email", "Ann@Example.COM", "ann@example.com"),
        ("sms", "+14155550123", "+14155550123"),
        ("push", "AbCdEfGh12345678", "AbCdEfGh12345678"),
        ("webpush", "https://push.example/Ab", "https://push.example/Ab"),
    ],
)
def test_suppression_keys_fold_case_for_email_only(channel: str, address: str, key: str) -> None:
    assert suppression_key(channel, address) == key
