"""MIME for an `EmailMessage`, rendered straight to the bytes sent over SMTP:
multipart/alternative (text, then HTML) when there is HTML, a single text/plain part
otherwise; CRLF line ends; headers with non-ASCII text as RFC 2047 encoded words, long ones
folded; bodies 7bit when they are short-lined ASCII and base64 otherwise.

The stdlib's `email.message.EmailMessage` builds the same structure, but spends about half a
millisecond a message in header parsing and policy machinery: more than the whole SMTP
transaction. This renderer uses the stdlib only for the pieces (address formatting, encoded
words, dates), and tests check its output by parsing it back with the stdlib.
"""

from __future__ import annotations

import base64
import functools
import re
from email.header import Header
from email.utils import formataddr, formatdate, parseaddr

from tidings.core.delivery.messages import EmailMessage
from tidings.errors import InvalidInput

# Headers the renderer sets itself; a message's own `headers` cannot override them.
RESERVED = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "subject",
        "reply-to",
        "message-id",
        "date",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
    }
)
_HEADER_NAME = re.compile(r"^[!-9;-~]{1,76}$")  # RFC 5322 ftext
_LOCAL_ID = re.compile(r"^[A-Za-z0-9._+=-]{1,200}$")
_ADDRESS = re.compile(r"^[^@\s<>()\[\]\\,;:\"]+@[A-Za-z0-9.-]+$")
_MAX_LINE = 998
_FOLD_AT = 78

# A plain addr-spec (RFC 5322 dot-atom local part, a host name): what `parseaddr` returns
# as it is, with no display name. Parsing is a tenth of an SMTP delivery's CPU otherwise.
_DOT_ATOM = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*$"
)
# A bulk send has one sender, parsed for every message and rendered as a header each time.
_parseaddr = functools.lru_cache(maxsize=1024)(parseaddr)


class BoundaryInBody(ValueError):
    """`render_mime`'s boundary occurs in a body part: render again with another one."""


def message_id_header(local: str, domain: str) -> str:
    """`<local@domain>`; `local` is the message's own id or a random token."""
    if not _LOCAL_ID.match(local):
        raise InvalidInput("a message id is 1-200 of [A-Za-z0-9._+=-]", field="message_id")
    return f"<{local}@{domain}>"


def _no_breaks(value: str, field: str) -> None:
    if "\r" in value or "\n" in value:
        raise InvalidInput(f"{field} has a line break", field=field)


def address(value: str, field: str) -> tuple[str, str]:
    """(display name, addr-spec) of one mailbox; raises `InvalidInput(field=...)`."""
    if _DOT_ATOM.match(value):
        return "", value
    _no_breaks(value, field)
    name, addr = _parseaddr(value)
    if not addr or not _ADDRESS.match(addr) or not addr.isascii():
        raise InvalidInput(f"{field} is not an address", field=field)
    return name, addr


@functools.lru_cache(maxsize=1024)
def _mailbox(value: str, field: str) -> str:
    name, addr = address(value, field)
    return formataddr((name, addr), charset="utf-8") if name else addr


@functools.lru_cache(maxsize=4)
def _date(second: int) -> str:
    return formatdate(second, usegmt=True)


def _header(name: str, value: str) -> str:
    line = f"{name}: {value}"
    if value.isascii() and len(line) <= _FOLD_AT:
        return line + "\r\n"
    charset = None if value.isascii() else "utf-8"
    encoded = Header(value, charset, header_name=name).encode(linesep="\r\n")
    return f"{name}: {encoded}\r\n"


def _body(text: str, subtype: str) -> str:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if text.isascii() and all(len(x) <= _MAX_LINE for x in lines):
        head = f'Content-Type: text/{subtype}; charset="us-ascii"\r\n'
        return head + "Content-Transfer-Encoding: 7bit\r\n\r\n" + "\r\n".join(lines) + "\r\n"
    data = base64.encodebytes("\n".join(lines).encode()).decode("ascii").replace("\n", "\r\n")
    head = f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
    return head + "Content-Transfer-Encoding: base64\r\n\r\n" + data


def render_mime(message: EmailMessage, message_id: str, now: float, boundary: str) -> bytes:
    """The message as sent. `message_id` is the full `<...>` value; `now` the Date;
    `boundary` a random token of [A-Za-z0-9] (it is prefixed with `=_`, which neither 7bit
    parts checked below nor base64 can contain)."""
    for name, value in message.headers.items():
        if not _HEADER_NAME.match(name) or name.lower() in RESERVED:
            raise InvalidInput(f"header {name!r} cannot be set", field="headers")
        _no_breaks(value, "headers")
    _no_breaks(message.subject, "subject")
    out = [
        _header("From", _mailbox(message.sender, "sender")),
        _header("To", _mailbox(message.to, "to")),
    ]
    if message.reply_to:
        out.append(_header("Reply-To", _mailbox(message.reply_to, "reply_to")))
    out.append(_header("Subject", message.subject))
    out.append(f"Date: {_date(int(now))}\r\n")
    out.append(f"Message-ID: {message_id}\r\n")
    out.extend(_header(name, value) for name, value in message.headers.items())
    out.append("MIME-Version: 1.0\r\n")
    text = _body(message.text, "plain")
    if message.html is None:
        return ("".join(out) + text).encode("ascii")
    html = _body(message.html, "html")
    mark = f"=_{boundary}"
    if mark in text or mark in html:
        raise BoundaryInBody("the boundary occurs in the body; pick another")
    out.append(f'Content-Type: multipart/alternative; boundary="{mark}"\r\n\r\n')
    out.append(f"--{mark}\r\n{text}--{mark}\r\n{html}--{mark}--\r\n")
    return "".join(out).encode("ascii")
