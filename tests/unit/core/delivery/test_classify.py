"""HTTP and SMTP answers -> failure classes; Retry-After in both forms."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.core.delivery.classify import (
    classify_http,
    classify_smtp,
    enhanced_status,
    parse_retry_after,
)
from tidings.core.delivery.messages import Bounce
from tidings.core.retry import FailureClass

NOW = 1_700_000_000.0


def test_retry_after_delta_seconds_and_dates() -> None:
    assert parse_retry_after("120", NOW) == 120.0
    assert parse_retry_after(" 0 ", NOW) == 0.0
    when = datetime.fromtimestamp(NOW, UTC) + timedelta(seconds=90)
    assert parse_retry_after(format_datetime(when, usegmt=True), NOW) == 90.0
    # The obsolete forms RFC 9110 still asks recipients to accept.
    assert parse_retry_after(when.strftime("%A, %d-%b-%y %H:%M:%S GMT"), NOW) == 90.0
    assert parse_retry_after(when.strftime("%a %b %d %H:%M:%S %Y"), NOW) == 90.0
    past = datetime.fromtimestamp(NOW, UTC) - timedelta(hours=1)
    assert parse_retry_after(format_datetime(past, usegmt=True), NOW) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5", "12 seconds", "Mon, 99 Foo"])
def test_retry_after_garbage_is_none(value: str | None) -> None:
    assert parse_retry_after(value, NOW) is None


@given(st.integers(min_value=0, max_value=10**9))
def test_retry_after_delta_round_trips(seconds: int) -> None:
    assert parse_retry_after(str(seconds), NOW) == float(seconds)


@given(st.integers(min_value=0, max_value=10 * 365 * 86400))
def test_retry_after_http_date_round_trips(ahead: int) -> None:
    when = datetime.fromtimestamp(NOW + ahead, UTC)
    assert parse_retry_after(format_datetime(when, usegmt=True), NOW) == float(ahead)


@pytest.mark.parametrize(
    ("status", "headers", "failure", "retry_after", "disable"),
    [
        (200, {}, None, None, False),
        (204, {}, None, None, False),
        (410, {}, FailureClass.PERMANENT, None, True),
        (429, {"Retry-After": "30"}, FailureClass.RATE_LIMITED, 30.0, False),
        (429, {}, FailureClass.RATE_LIMITED, None, False),
        (503, {"retry-after": "7"}, FailureClass.RATE_LIMITED, 7.0, False),
        (503, {}, FailureClass.TRANSIENT, None, False),
        (500, {}, FailureClass.TRANSIENT, None, False),
        (502, {}, FailureClass.TRANSIENT, None, False),
        (408, {}, FailureClass.TRANSIENT, None, False),
        (301, {"location": "https://x"}, FailureClass.PERMANENT, None, False),
        (400, {}, FailureClass.PERMANENT, None, False),
        (404, {}, FailureClass.PERMANENT, None, False),
    ],
)
def test_http_classes(
    status: int,
    headers: dict[str, str],
    failure: FailureClass | None,
    retry_after: float | None,
    disable: bool,
) -> None:
    result = classify_http(status, headers, NOW)
    assert (result.failure, result.retry_after, result.disable, result.status) == (
        failure,
        retry_after,
        disable,
        status,
    )
    assert result.delivered is (failure is None)


@given(st.integers(min_value=100, max_value=599))
def test_every_http_status_has_a_class_and_only_2xx_delivers(status: int) -> None:
    result = classify_http(status, {}, NOW)
    assert result.delivered is (200 <= status < 300)


@pytest.mark.parametrize(
    ("code", "text", "failure", "bounce"),
    [
        (250, "2.0.0 OK", None, Bounce.NONE),
        (550, "5.1.1 <nobody@example.com>: user unknown", FailureClass.PERMANENT, Bounce.HARD),
        (550, "user unknown", FailureClass.PERMANENT, Bounce.HARD),
        (553, "5.1.3 bad address syntax", FailureClass.PERMANENT, Bounce.HARD),
        (552, "5.2.2 mailbox full", FailureClass.PERMANENT, Bounce.SOFT),
        (550, "5.7.1 message rejected as spam", FailureClass.PERMANENT, Bounce.NONE),
        (554, "transaction failed", FailureClass.PERMANENT, Bounce.NONE),
        (421, "4.3.2 service shutting down", FailureClass.TRANSIENT, Bounce.NONE),
        (451, "4.3.0 try again later", FailureClass.TRANSIENT, Bounce.NONE),
        (450, "4.2.1 mailbox busy", FailureClass.TRANSIENT, Bounce.NONE),
        (452, "4.5.3 too many recipients", FailureClass.RATE_LIMITED, Bounce.NONE),
        (452, "too many recipients", FailureClass.RATE_LIMITED, Bounce.NONE),
        (421, "4.7.28 rate limited", FailureClass.RATE_LIMITED, Bounce.NONE),
        (535, "5.7.8 authentication credentials invalid", FailureClass.TRANSIENT, Bounce.NONE),
        (530, "5.7.0 authentication required", FailureClass.TRANSIENT, Bounce.NONE),
    ],
)
def test_smtp_classes(code: int, text: str, failure: FailureClass | None, bounce: Bounce) -> None:
    result = classify_smtp(code, text)
    assert (result.failure, result.bounce, result.status) == (failure, bounce, code)


def test_enhanced_status_code_wins_over_the_basic_class() -> None:
    # A 5xx reply whose enhanced code says 4.x.x is a temporary failure (RFC 3463).
    assert classify_smtp(550, "4.2.0 temporarily unavailable").failure is FailureClass.TRANSIENT
    assert enhanced_status("5.1.1 user unknown") == (5, 1, 1)
    assert enhanced_status("user unknown") is None


@given(st.integers(min_value=200, max_value=599), st.text(max_size=40))
def test_every_smtp_reply_is_classified(code: int, text: str) -> None:
    result = classify_smtp(code, text)
    assert result.delivered is (200 <= code < 300)
    if code >= 400 and enhanced_status(text) is None and code not in (530, 534, 535, 538):
        expected = {4: {FailureClass.TRANSIENT, FailureClass.RATE_LIMITED}}
        assert result.failure in expected.get(code // 100, {FailureClass.PERMANENT})
