"""Standard Webhooks signing (checked with the reference `standardwebhooks` library), URL
checks, the auto-disable rule and the MIME an email becomes."""

from __future__ import annotations

import base64
import email
import email.policy
import time
from datetime import UTC, datetime
from email.utils import parseaddr

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tidings.core.delivery.email import BoundaryInBody, address, message_id_header, render_mime
from tidings.core.delivery.messages import EmailMessage
from tidings.core.delivery.webhooks import (
    DisablePolicy,
    check_url,
    encode_secret,
    is_private_address,
    secret_bytes,
    sign_headers,
    signature,
)
from tidings.errors import InvalidInput

SECRET = encode_secret(bytes(range(32)))
OTHER = encode_secret(bytes(range(1, 33)))
BODY = '{"type":"order.paid","timestamp":"2026-01-01T00:00:00Z","data":{"n":1}}'


def test_signatures_verify_with_the_reference_library() -> None:
    now = int(time.time())
    headers = sign_headers((SECRET,), "msg_1", now, BODY)
    assert Webhook(SECRET).verify(BODY, headers) == {
        "type": "order.paid",
        "timestamp": "2026-01-01T00:00:00Z",
        "data": {"n": 1},
    }
    # The library's own signature for the same input is ours.
    expected = Webhook(SECRET).sign("msg_1", datetime.fromtimestamp(now, UTC), BODY)
    assert signature(SECRET, "msg_1", now, BODY) == expected
    with pytest.raises(WebhookVerificationError):
        Webhook(OTHER).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(BODY.replace("1}", "2}"), headers)


def test_every_secret_in_force_signs_so_either_verifies() -> None:
    now = int(time.time())
    headers = sign_headers((SECRET, OTHER), "msg_2", now, BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(SECRET).verify(BODY, headers)
    Webhook(OTHER).verify(BODY, headers)


def test_message_ids_with_a_dot_are_refused() -> None:
    with pytest.raises(ValueError):
        signature(SECRET, "msg.1", 1, BODY)


def test_secrets() -> None:
    assert secret_bytes(SECRET) == bytes(range(32))
    for bad in ("abc", "whsec_!!!", "whsec_" + base64.b64encode(b"short").decode()):
        with pytest.raises(InvalidInput) as err:
            secret_bytes(bad)
        assert err.value.field == "secret"


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "https://user:pw@example.com/hook",
        "https:///nohost",
        "https://example.com/hook#frag",
        "https://example.com:99999/",
        "https://exa mple.com/",
        "https://example.com/" + "a" * 3000,
        "javascript:alert(1)",
    ],
)
def test_bad_urls(url: str) -> None:
    with pytest.raises(InvalidInput) as err:
        check_url(url)
    assert err.value.field == "url"


def test_private_addresses_are_allowed_unless_blocked() -> None:
    for url in (
        "http://127.0.0.1:9000/h",
        "http://localhost/h",
        "http://[::1]/h",
        "http://169.254.169.254/latest",
        "http://10.1.2.3/",
        "http://[::ffff:10.0.0.1]/",
    ):
        assert check_url(url) == url
        with pytest.raises(InvalidInput):
            check_url(url, allow_private=False)
    assert check_url("https://hooks.example.com/x?y=1", allow_private=False)
    assert check_url("https://93.184.215.14/x", allow_private=False)
    assert is_private_address("192.168.1.1") and not is_private_address("8.8.8.8")


def test_disable_policy_needs_both_count_and_duration() -> None:
    p = DisablePolicy(after_failures=5, after_seconds=3600.0)
    assert not p.should_disable(100, 0.0, 3599.0)  # many failures, too short
    assert not p.should_disable(4, 0.0, 10_000.0)  # long, too few
    assert p.should_disable(5, 0.0, 3600.0)
    assert not p.should_disable(5, None, 3600.0)


def test_mime_is_multipart_alternative_with_text_first() -> None:
    msg = EmailMessage(
        sender="Tidings <noreply@example.com>",
        to="Zoë <zoe@example.org>",
        subject="Your order — shipped",
        text="Hello Zoë",
        html="<p>Hello <b>Zoë</b></p>",
        reply_to="help@example.com",
        headers={"List-Unsubscribe": "<https://example.com/u>"},
    )
    raw = render_mime(msg, message_id_header("abc", "example.com"), 1_700_000_000.0, "b0")
    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF only
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert not parsed.defects
    assert parsed.get_content_type() == "multipart/alternative"
    parts = [p.get_content_type() for p in parsed.iter_parts()]  # type: ignore[attr-defined]
    assert parts == ["text/plain", "text/html"]
    assert parsed["Message-ID"] == "<abc@example.com>"
    assert parsed["Subject"] == "Your order — shipped"
    assert parsed["Reply-To"] == "help@example.com"
    assert parsed["List-Unsubscribe"] == "<https://example.com/u>"
    assert parsed["Date"].datetime.timestamp() == 1_700_000_000.0
    assert parsed["From"].addresses[0].display_name == "Tidings"
    assert parsed["To"].addresses[0].display_name == "Zoë"
    body = parsed.get_body(("plain",))
    assert body is not None and body.get_content().strip() == "Hello Zoë"
    html = parsed.get_body(("html",))
    assert html is not None and html.get_content().strip() == "<p>Hello <b>Zoë</b></p>"


def test_long_and_multiline_content_round_trips() -> None:
    text = "line one\r\nline two\n\n" + "x" * 2000 + "\n.\nend"
    subject = "A rather long subject line " * 8
    msg = EmailMessage(
        sender="a@example.com",
        to="b@example.com",
        subject=subject,
        text=text,
        html="<p>" + "y" * 1500 + "</p>",
    )
    raw = render_mime(msg, "<x@example.com>", 0.0, "b1")
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Subject"] == subject
    plain = parsed.get_body(("plain",))
    assert plain is not None
    assert plain.get_content() == text.replace("\r\n", "\n")  # base64: exact bytes


def test_text_only_mail_is_plain() -> None:
    msg = EmailMessage(sender="a@example.com", to="b@example.com", subject="s", text="t")
    raw = render_mime(msg, "<x@example.com>", 0.0, "b")
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed.get_content_type() == "text/plain"
    assert parsed.get_content().strip() == "t"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"headers": {"Bcc": "spy@example.com"}}, "headers"),
        ({"headers": {"X-Evil": "a\r\nBcc: spy@example.com"}}, "headers"),
        ({"subject": "hi\r\nBcc: spy@example.com"}, "subject"),
        ({"to": "nobody"}, "to"),
    ],
)
def test_header_injection_is_refused(change: dict[str, object], field: str) -> None:
    base: dict[str, object] = {
        "sender": "a@example.com",
        "to": "b@example.com",
        "subject": "s",
        "text": "t",
    }
    with pytest.raises(InvalidInput) as err:
        render_mime(EmailMessage(**{**base, **change}), "<x@example.com>", 0.0, "b")  # type: ignore[arg-type]
    assert err.value.field == field


_ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+/=?^_`{|}~-"
_atoms = st.lists(st.text(_ATEXT, min_size=1, max_size=8), min_size=1, max_size=3)
_labels = st.lists(
    st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=8), min_size=1, max_size=3
)


@given(local=_atoms, domain=_labels)
def test_plain_addresses_parse_as_the_stdlib_parses_them(
    local: list[str], domain: list[str]
) -> None:
    value = ".".join(local) + "@" + ".".join(domain)
    name, addr = parseaddr(value)
    assert address(value, "to") == (name, addr) == ("", value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Zoë <zoe@example.org>", ("Zoë", "zoe@example.org")),
        ('"Doe, Jane" <jane@example.org>', ("Doe, Jane", "jane@example.org")),
        ("<bare@example.org>", ("", "bare@example.org")),
    ],
)
def test_addresses_with_names_or_brackets(value: str, expected: tuple[str, str]) -> None:
    assert address(value, "to") == expected


@pytest.mark.parametrize(
    "value", ["not an address", "a@b.com\r\nBcc: x@y.z", "a@@b.com", "zoë@example.org", ""]
)
def test_bad_addresses_are_refused(value: str) -> None:
    with pytest.raises(InvalidInput):
        address(value, "to")


def test_a_boundary_found_in_a_body_is_refused() -> None:
    msg = EmailMessage(
        sender="noreply@example.com", to="zoe@example.org", subject="s", text="x =_b0 y", html="h"
    )
    with pytest.raises(BoundaryInBody):
        render_mime(msg, message_id_header("abc", "example.com"), 0.0, "b0")
    assert b"=_b1" in render_mime(msg, message_id_header("abc", "example.com"), 0.0, "b1")
