"""Templates: sandboxed, strict rendering; locale fallback and Babel formatting; variable
contracts; per-channel validation; stable A/B assignment."""

from __future__ import annotations

from collections import Counter

import pytest

from tidings.core.templates import (
    Channel,
    Content,
    Renderer,
    RenderError,
    TemplateVersion,
    action_url_ok,
    assign_variant,
    check_variables,
    html_to_text,
    locale_chain,
)
from tidings.errors import InvalidInput

SCHEMA = {
    "type": "object",
    "required": ["name", "order"],
    "properties": {
        "name": {"type": "string"},
        "order": {"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}},
    },
}


def email(**locales: Content) -> TemplateVersion:
    return TemplateVersion(
        template="order-shipped",
        version=3,
        channel=Channel.EMAIL,
        locales=locales,
        default_locale="en",
        variables=SCHEMA,
    )


EN = Content(
    {
        "subject": "Order {{ payload.order.id }} shipped",
        "html": "<p>Hi {{ payload.name }}, it left on {{ payload.at | format_date }}.</p>",
    }
)
PT = Content(
    {"subject": "Pedido {{ payload.order.id }} enviado", "html": "<p>Olá {{ payload.name }}</p>"}
)
PAYLOAD = {"name": "Ana <b>", "order": {"id": 42}, "at": "2026-03-01T23:30:00Z"}


def test_render_escapes_html_and_derives_the_text_part() -> None:
    r = Renderer().render(email(en=EN), PAYLOAD, locale="en-US", timezone="America/New_York")
    assert r.fields["subject"] == "Order 42 shipped"
    assert r.fields["html"] == "<p>Hi Ana &lt;b&gt;, it left on Mar 1, 2026.</p>"
    assert r.fields["text"] == "Hi Ana <b>, it left on Mar 1, 2026."
    assert (r.template, r.version, r.locale, r.rtl) == ("order-shipped", 3, "en", False)


def test_dates_follow_the_recipient_time_zone_and_locale() -> None:
    r = Renderer().render(email(en=EN), PAYLOAD, locale="de-DE", timezone="Europe/Berlin")
    assert "02.03.2026" in r.fields["html"]  # 23:30Z is already March 2 in Berlin


def test_locale_fallback_chain() -> None:
    assert locale_chain("pt-BR", "en") == ["pt-BR", "pt", "en"]
    v = email(en=EN, pt=PT)
    assert Renderer().render(v, PAYLOAD, locale="pt-BR").fields["subject"] == "Pedido 42 enviado"
    assert Renderer().render(v, PAYLOAD, locale="pt-BR").locale == "pt"
    assert Renderer().render(v, PAYLOAD, locale="fr").locale == "en"
    # the direction is the rendered content's: English for an Arabic reader is not rtl
    en_only = TemplateVersion("t", 1, Channel.IN_APP, {"en": Content({"body": "x"})})
    assert Renderer().render(en_only, {}, locale="ar-EG").rtl is False
    ar = TemplateVersion(
        "t", 1, Channel.IN_APP, {"en": Content({"body": "x"}), "ar": Content({"body": "س"})}
    )
    shown = Renderer().render(ar, {}, locale="ar-EG")
    assert (shown.locale, shown.rtl) == ("ar", True)


def test_an_unknown_variant_is_refused_and_a_fallback_says_so() -> None:
    v = TemplateVersion(
        "t",
        1,
        Channel.IN_APP,
        {"en": Content({"body": "base"}), "pt": Content({"body": "base pt"})},
        variants={"b": {"en": Content({"body": "b"})}},
    )
    with pytest.raises(RenderError) as unknown:
        Renderer().render(v, {}, locale="en", variant="zzz")
    assert unknown.value.field == "variant" and "'zzz'" in unknown.value.message
    b = Renderer().render(v, {}, locale="en", variant="b")
    assert (b.variant, b.fields["body"]) == ("b", "b")


def test_babel_numbers_and_currency() -> None:
    v = TemplateVersion(
        "t",
        1,
        Channel.SMS,
        {
            "en": Content(
                {
                    "text": "{{ payload.n | format_number }} / "
                    "{{ payload.p | format_currency('EUR') }}"
                }
            )
        },
    )
    assert Renderer().render(v, {"n": 1234.5, "p": 9.99}, locale="de").fields["text"] == (
        "1.234,5 / 9,99\xa0€"
    )


def test_missing_variables_and_sandbox_escapes_fail_permanently() -> None:
    strict = TemplateVersion(
        "t", 1, Channel.SMS, {"en": Content({"text": "Hi {{ payload.nope }}"})}
    )
    with pytest.raises(RenderError, match="nope"):
        Renderer().render(strict, {})
    sneaky = TemplateVersion(
        "t",
        1,
        Channel.SMS,
        {"en": Content({"text": "{{ ''.__class__.__mro__[1].__subclasses__() }}"})},
    )
    with pytest.raises(RenderError):
        Renderer().render(sneaky, {})


def test_the_variable_contract_is_checked_before_rendering() -> None:
    with pytest.raises(InvalidInput) as err:
        check_variables(email(en=EN), {"name": "x", "order": {"id": "42"}})
    assert err.value.field == "payload.order.id"
    with pytest.raises(InvalidInput, match="'order' is a required property"):
        Renderer().render(email(en=EN), {"name": "x"})
    with pytest.raises(InvalidInput, match="variables"):
        TemplateVersion("t", 1, Channel.SMS, {"en": Content({"text": "x"})}, variables={"type": 5})


def test_layouts_wrap_the_body() -> None:
    renderer = Renderer({"brand": "<header>ACME</header>{{ content }}<footer>bye</footer>"})
    v = TemplateVersion(
        "t",
        1,
        Channel.EMAIL,
        {"en": Content({"subject": "s", "html": "<b>{{ payload.x }}</b>"}, "brand")},
    )
    r = renderer.render(v, {"x": "<i>"})
    assert r.fields["html"] == "<header>ACME</header><b>&lt;i&gt;</b><footer>bye</footer>"
    missing = TemplateVersion(
        "t", 1, Channel.EMAIL, {"en": Content({"subject": "s", "html": "x"}, "nope")}
    )
    with pytest.raises(RenderError, match="unknown layout"):
        renderer.render(missing, {})


@pytest.mark.parametrize(
    ("channel", "fields", "field"),
    [
        (Channel.EMAIL, {"subject": "", "html": "x"}, "subject"),
        (Channel.EMAIL, {"subject": "a\nb", "html": "x"}, "subject"),
        (Channel.EMAIL, {"subject": "s" * 300, "html": "x"}, "subject"),
        (Channel.EMAIL, {"subject": "s", "html": "x" * 200_000}, "html"),
        (Channel.SMS, {"text": "a" * 500}, "text"),
        (Channel.PUSH, {"title": "t", "body": "é" * 3000}, "body"),
        (Channel.PUSH, {"title": "", "body": ""}, "body"),
        (Channel.IN_APP, {"body": ""}, "body"),
        (Channel.IN_APP, {"body": "x", "action_url": "javascript:alert(1)"}, "action_url"),
    ],
)
def test_channel_rules(channel: Channel, fields: dict[str, str], field: str) -> None:
    v = TemplateVersion(
        "t", 1, channel, {"en": Content({k: "{{ payload." + k + " }}" for k in fields})}
    )
    with pytest.raises(RenderError) as err:
        Renderer().render(v, fields)
    assert err.value.field == field


def test_sms_counts_are_reported() -> None:
    v = TemplateVersion(
        "t", 1, Channel.SMS, {"en": Content({"text": "{{ payload.t }}"})}, sms_max_segments=2
    )
    r = Renderer().render(v, {"t": "€" * 100})
    assert r.sms is not None and (r.sms.encoding.value, r.sms.segments) == ("gsm7", 2)


def test_unknown_fields_and_missing_default_locale_are_refused() -> None:
    with pytest.raises(InvalidInput, match="no field 'subject'"):
        TemplateVersion("t", 1, Channel.SMS, {"en": Content({"subject": "x"})})
    with pytest.raises(InvalidInput, match="default locale"):
        TemplateVersion("t", 1, Channel.SMS, {"de": Content({"text": "x"})})


def test_variants_are_stable_and_weighted() -> None:
    weights = {"a": 1, "b": 3}
    picks = Counter(assign_variant("promo", f"user-{i}", weights) for i in range(4000))
    assert 0.2 < picks["a"] / 4000 < 0.3
    assert all(
        assign_variant("promo", "user-7", weights) == assign_variant("promo", "user-7", weights)
        for _ in range(3)
    )
    assert assign_variant("promo", "u", {}) is None
    v = TemplateVersion(
        "t",
        1,
        Channel.SMS,
        {"en": Content({"text": "A"})},
        variants={"b": {"en": Content({"text": "B"})}},
    )
    assert Renderer().render(v, {}, variant="b").fields["text"] == "B"
    assert Renderer().render(v, {}, variant="b").variant == "b"


def test_html_to_text_keeps_links_and_paragraphs() -> None:
    html = '<p>Hello&nbsp;<b>Ana</b></p><p>See <a href="https://x.test/o/1">your order</a>.</p>'
    assert html_to_text(html) == "Hello\xa0Ana\nSee your order (https://x.test/o/1)."


# -- plain lookups are filled in directly, exactly as Jinja renders them ----------------------

LOOKUP_CONTEXT = {
    "payload": {
        "name": "Ana <b>",
        "n": 42,
        "ratio": 0.5,
        "flag": True,
        "none": None,
        "order": {"id": 7, "items": ["a"], "lines": {"first": "x"}},
        "list": [1, 2],
        "nested": {"keys": "shadowed by dict.keys"},
    },
    "subscriber": {"id": "s1", "email": "a@example.com"},
    "locale": "en",
}

SOURCES = [
    "plain text only",
    "",
    "Hello {{ subscriber.id }}, {{ payload.name }}",
    "{{ payload.n }} / {{ payload.ratio }} / {{ payload.flag }} / {{ payload.none }}",
    "{{payload.order.id}}{{ payload.order.lines.first }}",
    "{{ payload.list }}",  # not a plain value: the full render
    "{{ payload.order.items }}",  # `items` is the dict method in Jinja
    "{{ payload.nested.keys }}",
    "{{ locale }} trailing newline is dropped\n",
    "line one\r\nline two {{ subscriber.email }}",
    "{{ payload.name | upper }}",
    "{% if payload.flag %}yes{% endif %}",
    "{{ payload['name'] }}",
    "{{ 'literal' }}",
    "{{ range }}",
    "{% raw %}{{ not a lookup }}{% endraw %}",
]


@pytest.mark.parametrize("source", SOURCES)
def test_a_plain_lookup_renders_as_jinja_does(source: str) -> None:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    jinja = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
    expected = jinja.from_string(source).render(LOOKUP_CONTEXT)
    renderer = Renderer()
    assert renderer._render_one(renderer._text, source, LOOKUP_CONTEXT, "body") == expected


def test_the_direct_fill_takes_only_plain_lookups() -> None:
    from tidings.core.templates import _fill, _plan

    renderer = Renderer()
    plan = _plan(renderer._text, "Hi {{ subscriber.id }}!")
    assert plan == ("Hi ", ("subscriber", "id"), "!")
    assert _fill(plan, {"subscriber": {"id": 5}}) == "Hi 5!"
    # anything else goes to the full render
    assert _plan(renderer._text, "{{ payload.x | upper }}") is None
    assert _plan(renderer._text, "{% for x in y %}{{ x }}{% endfor %}") is None
    assert _fill(plan, {"subscriber": {"id": [1]}}) is None
    assert _fill(plan, {"subscriber": {}}) is None
    assert _fill(plan, {}) is None


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("{{ payload.missing }}", "has no attribute 'missing'"),
        ("{{ nothing.at.all }}", "'nothing' is undefined"),
        ("{{ payload.none.x }}", "has no attribute 'x'"),
    ],
)
def test_a_missing_lookup_is_still_a_render_error(source: str, says: str) -> None:
    version = TemplateVersion(
        template="t",
        version=1,
        channel=Channel.IN_APP,
        locales={"en": Content({"title": "t", "body": source})},
        default_locale="en",
    )
    with pytest.raises(RenderError) as err:
        Renderer().render(version, {"none": None}, locale="en")
    assert err.value.field == "body"
    assert says in str(err.value)


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("/orders/42", True),
        ("https://shop.example/o?id=1", True),
        ("/\\evil.example", False),  # browsers read it as //evil.example
        ("//evil.example", False),
        ("/a\nb", False),
        ("javascript:alert(1)", False),
        ("https:no-host", False),
    ],
)
def test_an_in_app_action_url_stays_on_the_site_or_names_a_host(url: str, ok: bool) -> None:
    assert action_url_ok(url) is ok
    v = TemplateVersion("t", 1, Channel.IN_APP, {"en": Content({"body": "b", "action_url": url})})
    if ok:
        assert Renderer().render(v, {}).fields["action_url"] == url
    else:
        with pytest.raises(RenderError) as refused:
            Renderer().render(v, {})
        assert refused.value.field == "action_url"
