"""Provider answers -> failure classes.

HTTP follows the Standard Webhooks guidance: 2xx delivered; 3xx a failure (redirects are not
followed: the endpoint's URL should be updated); 410 Gone disables the endpoint; 429 and 503
with `Retry-After` are rate limits; 408, 425, 5xx and network errors are transient; other 4xx
permanent.

SMTP follows RFC 5321 reply codes refined by RFC 3463 enhanced status codes when present
(`550 5.1.1 ...`): 4xx transient (`4.5.3` too many recipients and `4.7.28` rate limits are
rate-limited), 5xx permanent, with `5.1.x` (bad mailbox, bad domain) a hard bounce and
`x.2.2` (mailbox full) a soft one. Authentication refusals (530, 534, 535, 538, `5.7.8`) are
our configuration, not the message's fault: transient, so messages wait for the fix instead
of being dropped, and the breaker opens.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from tidings.core.delivery.messages import Bounce, DeliveryResult
from tidings.core.retry import FailureClass

_DELTA = re.compile(r"^\s*(\d{1,10})\s*$")
_RFC850 = "%A, %d-%b-%y %H:%M:%S GMT"
_ASCTIME = "%a %b %d %H:%M:%S %Y"


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a `Retry-After` value (RFC 9110 section 10.2.3): delta-seconds or
    an HTTP-date (IMF-fixdate, or the obsolete RFC 850 and asctime forms). A date in the past
    is 0; anything unparseable is None."""
    if value is None:
        return None
    m = _DELTA.match(value)
    if m:
        return float(int(m.group(1)))
    text = value.strip()
    when: datetime | None = None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        for fmt in (_RFC850, _ASCTIME):
            try:
                when = datetime.strptime(" ".join(text.split()), fmt)
                break
            except ValueError:
                continue
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def classify_http(status: int, headers: Mapping[str, str], now: float) -> DeliveryResult:
    """The outcome of an HTTP answer with `status` and `headers` received at `now`."""
    if 200 <= status < 300:
        return DeliveryResult.ok(status=status)
    retry_after = parse_retry_after(_header(headers, "retry-after"), now)
    if status == 410:
        return DeliveryResult.failed(
            FailureClass.PERMANENT,
            "410 Gone: the endpoint asked to stop",
            status=status,
            disable=True,
        )
    if status == 429 or (status == 503 and retry_after is not None):
        return DeliveryResult.failed(
            FailureClass.RATE_LIMITED,
            f"{status}: rate limited",
            retry_after=retry_after,
            status=status,
        )
    if status in (408, 425) or status >= 500 or status < 200:
        return DeliveryResult.failed(
            FailureClass.TRANSIENT,
            f"{status}: server error",
            retry_after=retry_after,
            status=status,
        )
    if 300 <= status < 400:
        return DeliveryResult.failed(
            FailureClass.PERMANENT,
            f"{status}: redirects are not followed; update the URL",
            status=status,
        )
    return DeliveryResult.failed(FailureClass.PERMANENT, f"{status}: refused", status=status)


_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
_AUTH_CODES = frozenset({530, 534, 535, 538})


def enhanced_status(message: str) -> tuple[int, int, int] | None:
    """The RFC 3463 status code at the start of an SMTP reply text (`5.1.1 user unknown`)."""
    m = _ENHANCED.match(message)
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def classify_smtp(code: int, message: str = "") -> DeliveryResult:
    """The outcome of an SMTP reply `code` with its text (which may start with an enhanced
    status code). A 2xx reply is delivered."""
    enhanced = enhanced_status(message)
    text = f"{code} {message}".strip()
    if 200 <= code < 300:
        return DeliveryResult.ok(status=code)
    klass = enhanced[0] if enhanced is not None and enhanced[0] in (4, 5) else code // 100
    subject, detail = (enhanced[1], enhanced[2]) if enhanced is not None else (None, None)
    if code in _AUTH_CODES or (subject, detail) in ((7, 8), (7, 9), (7, 11), (7, 12)):
        return DeliveryResult.failed(
            FailureClass.TRANSIENT, f"authentication refused: {text}", status=code
        )
    if klass == 4:
        if (subject, detail) in ((5, 3), (7, 28)) or (code == 452 and subject is None):
            return DeliveryResult.failed(FailureClass.RATE_LIMITED, text, status=code)
        return DeliveryResult.failed(FailureClass.TRANSIENT, text, status=code)
    if klass == 5:
        if subject == 1 or (subject is None and code in (550, 551, 553)):
            bounce = Bounce.HARD if subject == 1 or code in (550, 551) else Bounce.NONE
            return DeliveryResult.failed(FailureClass.PERMANENT, text, status=code, bounce=bounce)
        if subject == 2 and detail == 2:
            return DeliveryResult.failed(
                FailureClass.PERMANENT, text, status=code, bounce=Bounce.SOFT
            )
        return DeliveryResult.failed(FailureClass.PERMANENT, text, status=code)
    return DeliveryResult.failed(FailureClass.TRANSIENT, f"unexpected reply {text}", status=code)
