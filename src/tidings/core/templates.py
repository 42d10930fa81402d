"""Message templates: sandboxed rendering, localization, variable contracts and per-channel
validation (pure: no I/O; the template store and the delivery steps call in).

- Rendering is Jinja2's `SandboxedEnvironment` with `StrictUndefined`: a template cannot
  reach Python internals, and a missing variable is an error, not an empty string. HTML
  fields (email `html`) are autoescaped; plain-text fields are not. An email without a text
  part gets one derived from the HTML.
- Layouts (shared header and footer) wrap a channel's body: the layout is a template that
  places `{{ content }}` (already rendered, marked safe).
- Localization: translations per locale with the fallback chain ``pt-BR -> pt -> default``;
  Babel filters format dates, numbers and currency in the recipient's locale and time zone
  (`format_datetime`, `format_date`, `format_number`, `format_currency`), and `rtl` tells
  whether the locale writes right to left.
- A version declares its variables as a JSON Schema: a payload that breaks it is refused
  before any rendering or fanout (`check_variables`).
- Per-channel validation of the rendered message: email subject and size, SMS encoding and
  segments, the 4 KB push payload limit of APNs and FCM, in-app title, body and action URL.
- Rendering and validation failures are `RenderError`: permanent, never retried.
- A/B variants: `assign_variant` is a stable hash of template and recipient.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import html as html_lib
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import field
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import jsonschema
import orjson
from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_datetime
from babel.numbers import format_currency, format_decimal
from jinja2 import StrictUndefined, Template, TemplateError, meta, nodes
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup

from tidings.core import sms
from tidings.errors import InvalidInput
from tidings.records import record

PUSH_PAYLOAD_LIMIT = 4096  # bytes: APNs and FCM both refuse more
EMAIL_SIZE_LIMIT = 100 * 1024  # bytes of HTML; larger mails are clipped by common clients
SUBJECT_LIMIT = 255
COMPILED_CACHE = 512  # compiled template sources kept per renderer

# A plain-text source made only of text and `{{ root.key.key }}` lookups is filled in
# directly, without running the compiled template: (text | lookup path) parts.
_Plan = tuple[str | tuple[str, ...], ...]
_DICT_ATTRIBUTES = frozenset(dir(dict))  # `x.items` is the method, in Jinja too
_PLAIN_VALUES = (str, int, float, bool, type(None))


class Channel(enum.StrEnum):
    EMAIL = "email"
    SMS = "sms"
    PUSH = "push"
    IN_APP = "in_app"


# The fields each channel's content has; `html` is the only autoescaped one.
FIELDS: dict[Channel, tuple[str, ...]] = {
    Channel.EMAIL: ("subject", "html", "text"),
    Channel.SMS: ("text",),
    Channel.PUSH: ("title", "body"),
    Channel.IN_APP: ("title", "body", "action_url"),
}
HTML_FIELDS = frozenset({"html"})


# The formatting filters every rendering has (`Renderer._filters` binds them to the
# recipient's locale and zone).
FILTERS = ("format_datetime", "format_date", "format_number", "format_currency")


class RenderError(InvalidInput):
    """A template that cannot be rendered or whose result breaks the channel's rules.
    Permanent: retrying renders the same thing."""

    code = "render_failed"


@record
class Content:
    """A channel message's templates in one locale: field name -> template source."""

    fields: Mapping[str, str]
    layout: str | None = None  # name of a layout wrapping the body field


@record
class TemplateVersion:
    template: str  # the template's id
    version: int
    channel: Channel
    locales: Mapping[str, Content]  # by BCP 47 tag; `default_locale` must be there
    default_locale: str = "en"
    variables: Mapping[str, Any] | None = None  # JSON Schema of the payload
    sms_max_segments: int = 3
    variants: Mapping[str, Mapping[str, Content]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.default_locale not in self.locales:
            raise InvalidInput(
                f"no content for the default locale {self.default_locale!r}", field="locales"
            )
        for tag, content in self.locales.items():
            unknown = set(content.fields) - set(FIELDS[self.channel])
            if unknown:
                name = sorted(unknown)[0]
                raise InvalidInput(
                    f"{self.channel.value} has no field {name!r}; its fields are "
                    + ", ".join(FIELDS[self.channel]),
                    field=f"locales.{tag}.{name}",
                )
        if self.variables is not None:
            try:
                jsonschema.Draft202012Validator.check_schema(dict(self.variables))
            except jsonschema.SchemaError as exc:
                raise InvalidInput(f"variables: {exc.message}", field="variables") from None


@record
class Rendered:
    channel: Channel
    template: str
    version: int
    locale: str  # the locale actually used (after fallback)
    variant: str | None
    fields: Mapping[str, str]
    rtl: bool
    sms: sms.SmsCount | None = None


def locale_chain(requested: str | None, default: str) -> list[str]:
    """``pt-BR`` -> ``["pt-BR", "pt", default]`` (duplicates dropped)."""
    chain: list[str] = []
    if requested:
        parts = requested.replace("_", "-").split("-")
        for n in range(len(parts), 0, -1):
            chain.append("-".join(parts[:n]))
    chain.append(default)
    return list(dict.fromkeys(chain))


def pick_locale(available: Mapping[str, Any], requested: str | None, default: str) -> str:
    return _pick_locale(tuple(available), requested, default)


@functools.lru_cache(maxsize=4096)
def _pick_locale(available: tuple[str, ...], requested: str | None, default: str) -> str:
    """`pick_locale` for the tags a content has: each recipient of a fanout asks again."""
    lowered = {k.lower(): k for k in available}
    for tag in locale_chain(requested, default):
        if tag.lower() in lowered:
            return lowered[tag.lower()]
    return default


@functools.lru_cache(maxsize=512)
def _locale_facts(tag: str) -> tuple[Locale, str, bool]:
    """The Babel locale of a tag, its name and whether it is written right to left."""
    locale = _babel_locale(tag)
    return locale, str(locale), locale.text_direction == "rtl"


@functools.lru_cache(maxsize=512)
def _babel_locale(tag: str) -> Locale:
    try:
        return Locale.parse(tag.replace("-", "_"))
    except (UnknownLocaleError, ValueError):
        return Locale.parse("en")


def assign_variant(template: str, recipient: str, weights: Mapping[str, int]) -> str | None:
    """A stable choice among variants by weight: the same recipient always gets the same
    variant of a template; None when there are no variants."""
    if not weights:
        return None
    total = sum(max(0, w) for w in weights.values())
    if total <= 0:
        return None
    digest = hashlib.sha256(f"{template}\x00{recipient}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") % total
    for name in sorted(weights):
        point -= max(0, weights[name])
        if point < 0:
            return name
    return None  # pragma: no cover


@functools.lru_cache(maxsize=256)
def _validator(schema: bytes) -> jsonschema.Draft202012Validator:
    """Compiled validators by schema (building one costs far more than validating)."""
    return jsonschema.Draft202012Validator(orjson.loads(schema))


def check_variables(version: TemplateVersion, payload: Mapping[str, Any]) -> None:
    """Refuse a payload that breaks the version's variable contract, naming the path."""
    if version.variables is None:
        return
    validator = _validator(orjson.dumps(version.variables, option=orjson.OPT_SORT_KEYS))
    errors = sorted(validator.iter_errors(dict(payload)), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        path = ".".join(str(p) for p in first.absolute_path)
        where = f"payload.{path}" if path else "payload"
        raise InvalidInput(f"{where}: {first.message}", field=where)


@functools.lru_cache(maxsize=2)
def _check_env(html: bool) -> SandboxedEnvironment:
    env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=html)
    env.filters.update(dict.fromkeys(FILTERS, str))  # their names; never called here
    return env


def check_source(source: str, *, html: bool = False) -> None:
    """Compile a field's template source as the renderer does, without rendering: raises
    `RenderError` for a source that could never render (a syntax error, an unknown filter or
    test), naming the line when the source has more than one. `html`: the field is
    autoescaped (email `html`). A missing variable is found only when rendering."""
    try:
        _check_env(html).from_string(source)
    except TemplateError as exc:
        reason = (exc.message or str(exc)).rstrip(".")
        line = getattr(exc, "lineno", None)
        where = f" (line {line})" if line and "\n" in source else ""
        raise RenderError(f"not a valid template: {reason}{where}") from None


_TAGS = re.compile(r"<[^>]+>")
_BLOCK_END = re.compile(r"</(p|div|h[1-6]|li|tr|table)>|<br\s*/?>", re.IGNORECASE)
_SPACES = re.compile(r"[ \t]+")


def html_to_text(html: str) -> str:
    """A plain-text alternative: block ends become line breaks, tags go, entities decode,
    links keep their address after the text."""
    text = re.sub(
        r'<a\s[^>]*href="([^"]+)"[^>]*>(.*?)</a>',
        lambda m: f"{m.group(2)} ({m.group(1)})" if m.group(1) != m.group(2) else m.group(1),
        html,
        flags=re.IGNORECASE | re.DOTALL,
    )
    text = _BLOCK_END.sub("\n", text)
    text = html_lib.unescape(_TAGS.sub("", text))
    lines = [_SPACES.sub(" ", line).strip() for line in text.splitlines()]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip()


class Renderer:
    """Renders template versions. `layouts` are named templates that place `{{ content }}`."""

    def __init__(self, layouts: Mapping[str, str] | None = None) -> None:
        self.layouts = dict(layouts or {})
        self._text = self._env(autoescape=False)
        self._html = self._env(autoescape=True)
        # Compiling a template costs ~1 ms, rendering a compiled one ~20 us: keep the most
        # recent compilations. Filters are looked up when rendering, so one compiled template
        # serves every locale and zone.
        self._compiled: OrderedDict[tuple[bool, str], tuple[Template, _Plan | None]] = OrderedDict()
        self._roots: dict[str, frozenset[str]] = {}
        self._filters_for: dict[int, tuple[Locale, ZoneInfo]] = {}

    @staticmethod
    def _env(*, autoescape: bool) -> SandboxedEnvironment:
        return SandboxedEnvironment(undefined=StrictUndefined, autoescape=autoescape)

    def _filters(self, env: SandboxedEnvironment, locale: Locale, tz: ZoneInfo) -> None:
        """Point the formatting filters at the recipient's locale and zone (kept while the
        next rendering uses the same ones)."""
        if self._filters_for.get(id(env)) == (locale, tz):
            return
        self._filters_for[id(env)] = (locale, tz)

        def as_datetime(value: Any) -> datetime:
            if isinstance(value, datetime):
                return value if value.tzinfo else value.replace(tzinfo=UTC)
            if isinstance(value, int | float):
                return datetime.fromtimestamp(value, UTC)
            if isinstance(value, str):
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
                return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
            raise TypeError(f"not a date or time: {value!r}")

        def f_datetime(value: Any, fmt: str = "medium") -> str:
            return format_datetime(as_datetime(value), fmt, tzinfo=tz, locale=locale)

        def f_date(value: Any, fmt: str = "medium") -> str:
            if isinstance(value, date) and not isinstance(value, datetime):
                return format_date(value, fmt, locale=locale)
            return format_date(as_datetime(value).astimezone(tz).date(), fmt, locale=locale)

        def f_number(value: Any) -> str:
            return format_decimal(value, locale=locale)

        def f_currency(value: Any, currency: str) -> str:
            return format_currency(value, currency, locale=locale)

        env.filters.update(
            format_datetime=f_datetime,
            format_date=f_date,
            format_number=f_number,
            format_currency=f_currency,
        )

    def render(
        self,
        version: TemplateVersion,
        payload: Mapping[str, Any],
        *,
        locale: str | None = None,
        timezone: str = "UTC",
        recipient: Mapping[str, Any] | None = None,
        variant: str | None = None,
        extra: Mapping[str, Any] | None = None,
        checked: bool = False,
    ) -> Rendered:
        """Render and validate `version` for one recipient; raises `RenderError`. `extra`
        adds roots to the template context (a workflow's `digest`, `actor`, `event`,
        `steps`); it cannot replace `payload`, `subscriber`, `locale` or `rtl`. `checked`:
        the caller has checked `payload` against the version's contract already (a fanout
        checks an event's payload once, not per recipient)."""
        if not checked:
            check_variables(version, payload)
        source = version.locales
        if variant is not None:
            if variant not in version.variants:
                known = ", ".join(sorted(version.variants)) or "none"
                raise RenderError(
                    f"no variant {variant!r} in this version (its variants: {known})",
                    field="variant",
                )
            source = version.variants[variant]
        tag = pick_locale(source, locale, version.default_locale)
        if tag not in source:  # a variant without the default locale: the base content
            source = version.locales
            tag = pick_locale(source, locale, version.default_locale)
            variant = None  # the answer says what was rendered
        content = source[tag]
        # numbers and dates in the reader's locale; the direction is the content's own
        babel_locale, locale_name, _ = _locale_facts(locale or tag)
        rtl = _locale_facts(tag)[2]
        try:
            tz = ZoneInfo(timezone)
        except (KeyError, ValueError):
            tz = ZoneInfo("UTC")
        context = {
            **(extra or {}),
            "payload": dict(payload),
            "subscriber": dict(recipient or {}),
            "locale": locale_name,
            "rtl": rtl,
        }
        fields: dict[str, str] = {}
        for name, text in content.fields.items():
            env = self._html if name in HTML_FIELDS else self._text
            self._filters(env, babel_locale, tz)
            fields[name] = self._render_one(env, text, context, f"{name}")
        body_field = {Channel.EMAIL: "html", Channel.IN_APP: "body", Channel.PUSH: "body"}.get(
            version.channel, "text"
        )
        if content.layout is not None and body_field in fields:
            layout = self.layouts.get(content.layout)
            if layout is None:
                raise RenderError(f"unknown layout {content.layout!r}", field="layout")
            env = self._html if body_field in HTML_FIELDS else self._text
            # The body was rendered (and, for HTML, escaped) just above: safe to place as is.
            body = Markup(fields[body_field])  # noqa: S704
            fields[body_field] = self._render_one(
                env, layout, {**context, "content": body}, "layout"
            )
        if version.channel is Channel.EMAIL and "text" not in fields and "html" in fields:
            fields["text"] = html_to_text(fields["html"])
        counted = validate(version.channel, fields, sms_max_segments=version.sms_max_segments)
        return Rendered(
            channel=version.channel,
            template=version.template,
            version=version.version,
            locale=tag,
            variant=variant,
            fields=fields,
            rtl=bool(context["rtl"]),
            sms=counted,
        )

    def roots(self, version: TemplateVersion) -> frozenset[str]:
        """The context roots (`payload`, `subscriber`, `digest`...) any content of `version`
        or a layout it uses refers to. A version that does not refer to `subscriber` renders
        the same for every recipient with the same locale, zone and variant."""
        sources = [
            text
            for content in [*version.locales.values()]
            + [c for v in version.variants.values() for c in v.values()]
            for text in [*content.fields.values(), self.layouts.get(content.layout or "", "")]
        ]
        key = hashlib.sha256("\x00".join(sources).encode()).hexdigest()
        found = self._roots.get(key)
        if found is None:
            names: set[str] = set()
            for text in sources:
                try:
                    names |= meta.find_undeclared_variables(self._text.parse(text))
                except TemplateError:
                    names.add("*")  # renders to an error anyway; never shared
            found = self._roots[key] = frozenset(names)
            if len(self._roots) > COMPILED_CACHE:
                self._roots.pop(next(iter(self._roots)))
        return found

    def _compile(self, env: SandboxedEnvironment, source: str) -> tuple[Template, _Plan | None]:
        key = (env is self._html, source)
        found = self._compiled.get(key)
        if found is not None:
            self._compiled.move_to_end(key)
            return found
        compiled = env.from_string(source)
        plan = None if env is self._html else _plan(env, source)
        self._compiled[key] = (compiled, plan)
        if len(self._compiled) > COMPILED_CACHE:
            self._compiled.popitem(last=False)
        return compiled, plan

    def _render_one(
        self, env: SandboxedEnvironment, source: str, context: Mapping[str, Any], name: str
    ) -> str:
        try:
            compiled, plan = self._compile(env, source)
            if plan is not None:
                filled = _fill(plan, context)
                if filled is not None:
                    return filled
            return compiled.render(context)
        except TemplateError as exc:
            raise RenderError(f"{name}: {exc.message or exc}", field=name) from None
        except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
            raise RenderError(f"{name}: {exc}", field=name) from None


def _plan(env: SandboxedEnvironment, source: str) -> _Plan | None:
    """The parts of a source that is only text and attribute lookups on a context root
    (``Hello {{ subscriber.first_name }}``), or None for anything else (filters, tests,
    calls, control structures, subscripts)."""
    parts: list[str | tuple[str, ...]] = []
    for node in env.parse(source).body:
        if not isinstance(node, nodes.Output):
            return None
        for child in node.nodes:
            if isinstance(child, nodes.TemplateData):
                parts.append(child.data)
                continue
            path: list[str] = []
            while isinstance(child, nodes.Getattr):
                path.append(child.attr)
                child = child.node
            if not isinstance(child, nodes.Name):
                return None
            path.append(child.name)
            parts.append(tuple(reversed(path)))
    return tuple(parts)


def _fill(plan: _Plan, context: Mapping[str, Any]) -> str | None:
    """`plan` filled from `context` as the sandboxed Jinja render would (``str()`` of the
    value), or None when a lookup is anything but a key of a plain dict holding a plain
    value: the full render then decides, raising for a missing key under
    `StrictUndefined`."""
    out: list[str] = []
    for part in plan:
        if type(part) is str:
            out.append(part)
            continue
        value = context.get(part[0], _MISSING)
        for key in part[1:]:
            if type(value) is not dict or key in _DICT_ATTRIBUTES or key not in value:
                return None
            value = value[key]
        if type(value) not in _PLAIN_VALUES:
            return None
        out.append(value if type(value) is str else str(value))
    return "".join(out)


_MISSING = object()


def validate(
    channel: Channel, fields: Mapping[str, str], *, sms_max_segments: int = 3
) -> sms.SmsCount | None:
    """The channel's rules for a rendered message; raises `RenderError` naming the field."""
    match channel:
        case Channel.EMAIL:
            subject = fields.get("subject", "")
            if not subject.strip():
                raise RenderError("the subject is empty", field="subject")
            if "\n" in subject or "\r" in subject:
                raise RenderError("the subject has a line break", field="subject")
            if len(subject) > SUBJECT_LIMIT:
                raise RenderError(
                    f"the subject has {len(subject)} characters; the limit is {SUBJECT_LIMIT}",
                    field="subject",
                )
            size = len(fields.get("html", "").encode())
            if size > EMAIL_SIZE_LIMIT:
                raise RenderError(
                    f"the HTML is {size} bytes; the limit is {EMAIL_SIZE_LIMIT}", field="html"
                )
            if not fields.get("html") and not fields.get("text"):
                raise RenderError("the email has no body", field="html")
        case Channel.SMS:
            try:
                return sms.check(fields.get("text", ""), max_segments=sms_max_segments)
            except InvalidInput as exc:
                raise RenderError(exc.message, field="text") from None
        case Channel.PUSH:
            if not fields.get("title") and not fields.get("body"):
                raise RenderError("a push needs a title or a body", field="body")
            payload = orjson.dumps(
                {
                    "aps": {
                        "alert": {"title": fields.get("title", ""), "body": fields.get("body", "")}
                    }
                }
            )
            if len(payload) > PUSH_PAYLOAD_LIMIT:
                raise RenderError(
                    f"the push payload is {len(payload)} bytes; the limit is {PUSH_PAYLOAD_LIMIT}",
                    field="body",
                )
        case Channel.IN_APP:
            if not fields.get("body", "").strip():
                raise RenderError("the in-app message has no body", field="body")
            if len(fields.get("title", "")) > 200:
                raise RenderError("the title is over 200 characters", field="title")
            if len(fields.get("body", "")) > 5000:
                raise RenderError("the body is over 5000 characters", field="body")
            url = fields.get("action_url", "")
            if url and not action_url_ok(url):
                raise RenderError(
                    "the action URL must be an http(s) URL with a host or a path starting "
                    "with / (no backslash or control character)",
                    field="action_url",
                )
    return None


_UNSAFE_IN_URL = re.compile(r"[\\\x00-\x1f\x7f]")


def action_url_ok(url: str) -> bool:
    """Whether an in-app item's `action_url` may go to a browser: an http(s) URL with a
    host, or a path on the app's own site (`/...`, not `//host`). A backslash or a control
    character is refused anywhere: browsers read `/\\host` as `//host`, another site."""
    if _UNSAFE_IN_URL.search(url):
        return False
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        return bool(parts.netloc)
    return not parts.scheme and not parts.netloc and url.startswith("/")
