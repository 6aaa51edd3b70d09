"""Templates: locales and their fallbacks, escaping, the sandbox and its bounds, partials and
layouts, CSS inlining, the publish and send checks, and the compiled-template cache."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
from pydantic import ValidationError

from keel.notify.templating import (
    MAX_RANGE,
    MAX_RENDERED_BYTES,
    Library,
    TemplateContent,
    TemplateError,
    check,
    check_data,
    choose_locale,
    html_to_text,
    render,
    template_compilations,
    variables,
)

NO_LIBRARY = Library()


def content(locales: dict[str, dict[str, str]], **extra: Any) -> TemplateContent:
    return TemplateContent.model_validate(
        {"default_locale": next(iter(locales)), "locales": locales, **extra}
    )


def sms(source: str, data: dict[str, Any] | None = None) -> str | None:
    return render(
        content({"en": {"sms": source}}),
        locale=None,
        data=data or {},
        library=NO_LIBRARY,
        channel="sms",
    ).sms


WELCOME = content(
    {
        "en": {"subject": "Welcome, {{ name }}", "html": "<p>Hi {{ name }}</p>"},
        "pt-BR": {"subject": "Bem-vinda, {{ name }}", "text": "Oi {{ name }}"},
        "fr": {"sms": "Salut {{ name }}"},
    },
    sample_data={"name": "Ada"},
)


class TestContent:
    def test_the_default_locale_must_have_parts(self) -> None:
        with pytest.raises(ValidationError, match="default locale"):
            TemplateContent.model_validate(
                {"default_locale": "de", "locales": {"en": {"sms": "x"}}}
            )

    def test_a_locale_needs_a_part(self) -> None:
        with pytest.raises(ValidationError, match="at least one part"):
            content({"en": {}})

    def test_a_source_part_is_bounded(self) -> None:
        with pytest.raises(ValidationError, match="exceeds"):
            content({"en": {"sms": "x" * (256 * 1024 + 1)}})

    def test_an_unknown_part_is_refused(self) -> None:
        with pytest.raises(ValidationError):
            content({"en": {"fax": "x"}})


class TestChooseLocale:
    LOCALES = content({"en": {"sms": "a"}, "pt-PT": {"sms": "b"}, "fr-CA": {"sms": "c"}})

    @pytest.mark.parametrize(
        ("requested", "chosen"),
        [
            ("pt-PT", "pt-PT"),
            ("PT_pt", "pt-PT"),  # case and underscore do not matter
            ("pt-BR", "pt-PT"),  # another region of the language
            ("pt", "pt-PT"),
            ("fr", "fr-CA"),
            ("de-DE", "en"),  # the default
            (None, "en"),
        ],
    )
    def test_fallbacks(self, requested: str | None, chosen: str) -> None:
        assert choose_locale(self.LOCALES, requested) == chosen

    def test_the_language_comes_before_another_region(self) -> None:
        locales = content({"en": {"sms": "a"}, "pt-PT": {"sms": "b"}, "pt": {"sms": "c"}})
        assert choose_locale(locales, "pt-BR") == "pt"

    def test_only_locales_with_the_channel_are_candidates(self) -> None:
        assert choose_locale(WELCOME, "fr", channel="email") == "en"
        assert choose_locale(WELCOME, "fr", channel="sms") == "fr"


class TestRender:
    def test_english_email(self) -> None:
        rendered = render(
            WELCOME, locale="en-GB", data={"name": "Ada"}, library=NO_LIBRARY, channel="email"
        )
        assert rendered.locale == "en"
        assert rendered.subject == "Welcome, Ada"
        assert rendered.html is not None
        assert "<p>Hi Ada</p>" in rendered.html
        assert rendered.text == "Hi Ada"  # derived from the HTML
        assert rendered.sms is None

    def test_portuguese_email_falls_back_to_its_language(self) -> None:
        rendered = render(
            WELCOME, locale="pt_br", data={"name": "Ada"}, library=NO_LIBRARY, channel="email"
        )
        assert (rendered.locale, rendered.subject, rendered.text) == (
            "pt-BR",
            "Bem-vinda, Ada",
            "Oi Ada",
        )
        assert rendered.html is None

    def test_html_is_escaped_and_plain_parts_are_not(self) -> None:
        rendered = render(
            WELCOME, locale="en", data={"name": "<script>"}, library=NO_LIBRARY, channel="email"
        )
        assert rendered.html is not None
        assert "&lt;script&gt;" in rendered.html
        assert "<script>" not in rendered.html
        assert rendered.subject == "Welcome, <script>"
        assert rendered.text == "Hi <script>"

    def test_the_subject_is_one_line_whatever_the_data(self) -> None:
        rendered = render(
            WELCOME,
            locale="en",
            data={"name": "Ada\r\nBcc: all@example.com"},
            library=NO_LIBRARY,
            channel="email",
        )
        assert rendered.subject == "Welcome, Ada Bcc: all@example.com"

    def test_a_channel_without_its_parts_is_an_error(self) -> None:
        with pytest.raises(TemplateError, match="no sms for channel sms in locale en"):
            render(
                content({"en": {"chat": "x"}}),
                locale=None,
                data={},
                library=NO_LIBRARY,
                channel="sms",
            )

    def test_push_and_chat(self) -> None:
        template = content(
            {"en": {"push_title": "Hi {{ n }}", "push_body": "Body", "chat": "*{{ n }}*"}}
        )
        push = render(template, locale=None, data={"n": 1}, library=NO_LIBRARY, channel="push")
        chat = render(template, locale=None, data={"n": 1}, library=NO_LIBRARY, channel="chat")
        assert (push.push_title, push.push_body, chat.chat) == ("Hi 1", "Body", "*1*")

    def test_an_undefined_variable_is_named(self) -> None:
        with pytest.raises(TemplateError, match="'name' is undefined") as caught:
            render(WELCOME, locale="en", data={}, library=NO_LIBRARY, channel="email")
        assert (caught.value.part, caught.value.locale, caught.value.line) == ("subject", "en", 1)

    def test_an_error_reports_its_line(self) -> None:
        with pytest.raises(TemplateError) as caught:
            sms("line one\nline two {{ user.emial }}", {"user": {"email": "a@b.test"}})
        assert caught.value.line == 2
        assert "'emial'" in str(caught.value)

    def test_an_error_never_shows_the_data(self) -> None:
        with pytest.raises(TemplateError) as caught:
            sms("{{ codes.index(secret) }}", {"codes": ["a"], "secret": "hunter2"})
        assert "hunter2" not in str(caught.value)
        assert "ValueError" in str(caught.value)
        with pytest.raises(TemplateError) as caught:
            sms("{{ lookup[email].x }}", {"lookup": {}, "email": "ada@example.com"})
        assert "ada@example.com" not in str(caught.value)

    @pytest.mark.parametrize(
        "payload",
        [
            "{{ ''.__class__.__mro__ }}",
            "{{ cycler.__init__.__globals__ }}",
            "{{ joiner.__init__.__globals__.os }}",
            "{{ namespace.__init__.__globals__ }}",
            "{{ ''|attr('__class__') }}",
            "{{ '{0.__class__.__base__}'.format('') }}",
            "{{ self._TemplateReference__context }}",
            "{{ range.__self__ }}",
            "{% set xs = [1] %}{% for x in xs %}{{ xs.append(x) }}{% endfor %}",
            "{{ lipsum.__globals__ }}",
        ],
    )
    def test_sandbox_escapes_are_errors(self, payload: str) -> None:
        with pytest.raises(TemplateError):
            sms(payload)

    @pytest.mark.parametrize(
        "payload",
        [
            "{{ 'x' * 2000000 }}",
            "{{ 'x'.center(10 ** 9) }}",
            "{{ 'x'|center(10 ** 9) }}",
            "{{ 2 ** 10000000 }}",
            "{{ '%999999999d' % 1 }}",
            "{{ '{:>999999999}'.format(1) }}",
            "{% set s = 'x' * 1000000 %}{{ ([s] * 100)|join }}",
            "{% set s = 'x' * 1000000 %}{% set ns = namespace(s=s) %}"
            "{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
            "{% set s = 'x' * 100000 %}{% set b %}{% for i in range(100) %}{{ s }}"
            "{% endfor %}{% endset %}",
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
            "{{ f(60) }}",
        ],
    )
    def test_resource_abuse_stops_quickly(self, payload: str) -> None:
        started = time.perf_counter()
        with pytest.raises(TemplateError):
            sms(payload)
        assert time.perf_counter() - started < 3

    def test_ranges_keep_the_sandbox_bound(self) -> None:
        assert MAX_RANGE == 100_000
        with pytest.raises(TemplateError, match="too large"):
            sms("{% for i in range(10 ** 9) %}{% endfor %}")

    def test_output_is_bounded(self) -> None:
        padding = "y" * 1000
        # Each piece is small; the whole output is not.
        with pytest.raises(TemplateError, match="exceeds"):
            sms("{% for i in range(2000) %}{{ p }}{% endfor %}", {"p": padding})
        assert len(sms("{% for i in range(1000) %}{{ p }}{% endfor %}", {"p": padding}) or "") < (
            MAX_RENDERED_BYTES
        )


class TestLibrary:
    LIBRARY = Library(
        partials={"footer": "<footer>Bye {{ name }}, from {{ brand }}</footer>"},
        layouts={
            "base": "<html><head><style>p { color: red } @media (max-width: 600px) "
            "{ p { color: blue } }</style></head><body>{{ content }}"
            "<small>{{ brand }}</small></body></html>"
        },
    )

    def test_partial_included(self) -> None:
        template = content(
            {
                "en": {
                    "subject": "s",
                    "html": '<p>{{ name }}</p>{% include "partials/footer.html" %}',
                }
            }
        )
        rendered = render(
            template,
            locale=None,
            data={"name": "<b>", "brand": "Acme"},
            library=self.LIBRARY,
            channel="email",
        )
        assert rendered.html is not None
        assert "<footer>Bye &lt;b&gt;, from Acme</footer>" in rendered.html

    def test_layout_wraps_and_css_is_inlined(self) -> None:
        template = content({"en": {"subject": "s", "html": "<p>Hi {{ name }}</p>"}}, layout="base")
        rendered = render(
            template,
            locale=None,
            data={"name": "<i>", "brand": "Acme"},
            library=self.LIBRARY,
            channel="email",
        )
        html = rendered.html
        assert html is not None
        assert '<p style="color: red;">Hi &lt;i&gt;</p>' in html  # content placed, not re-escaped
        assert "<small>Acme</small>" in html
        assert "@media (max-width: 600px)" in html  # media queries stay in a <style>
        assert rendered.text == "Hi <i>\n\nAcme"

    def test_a_missing_partial_is_an_error(self) -> None:
        template = content({"en": {"sms": '{% include "partials/nope.html" %}'}})
        with pytest.raises(TemplateError, match=r"partials/nope\.html does not exist"):
            render(template, locale=None, data={}, library=self.LIBRARY, channel="sms")

    def test_variables_include_partials_and_layout(self) -> None:
        template = content(
            {
                "en": {"subject": "{{ subject_line }}", "html": '{% include "partials/footer" %}'},
                "pt": {"sms": "{% for item in items %}{{ item }}{% endfor %}{{ range(2) }}"},
            },
            layout="base",
        )
        assert variables(template, self.LIBRARY) == {"subject_line", "name", "brand", "items"}
        assert variables(template, self.LIBRARY, channel="sms") == {"items"}


class TestCheck:
    def test_a_good_template_passes(self) -> None:
        check(WELCOME, NO_LIBRARY)

    def test_sample_data_lacking_a_variable_is_refused(self) -> None:
        template = content({"en": {"sms": "{{ name }} {{ code }}"}}, sample_data={"name": "A"})
        with pytest.raises(TemplateError, match="'code' is undefined"):
            check(template, NO_LIBRARY)

    def test_a_syntax_error_is_refused_with_its_line(self) -> None:
        template = content({"en": {"sms": "ok"}, "de": {"html": "<p>\n\n{{ x | }}</p>"}})
        with pytest.raises(TemplateError) as caught:
            check(template, NO_LIBRARY)
        assert (caught.value.part, caught.value.locale, caught.value.line) == ("html", "de", 3)
        assert "syntax error" in str(caught.value)

    def test_a_missing_layout_is_refused(self) -> None:
        template = content({"en": {"subject": "s", "html": "x"}}, layout="gone")
        with pytest.raises(TemplateError, match="layout 'gone' does not exist"):
            check(template, NO_LIBRARY)

    def test_a_missing_partial_is_refused(self) -> None:
        template = content(
            {"en": {"sms": "{% if false %}{% include 'partials/gone' %}{% endif %}"}}
        )
        with pytest.raises(TemplateError, match="partials/gone does not exist"):
            check(template, NO_LIBRARY)

    def test_an_email_part_without_a_subject_is_refused(self) -> None:
        with pytest.raises(TemplateError, match="no subject for channel email"):
            check(content({"en": {"html": "<p>x</p>"}}), NO_LIBRARY)

    def test_check_data_lists_what_is_missing(self) -> None:
        template = content({"en": {"sms": "{{ a }}{{ b }}{{ c }}"}})
        with pytest.raises(TemplateError, match="lacks variables: a, c"):
            check_data(template, NO_LIBRARY, {"b": 1})
        check_data(template, NO_LIBRARY, {"a": 1, "b": 2, "c": 3})


class TestCache:
    def test_rendering_a_version_again_does_not_recompile(self) -> None:
        template = content(
            {"en": {"subject": "s {{ n }}", "html": "<p>{{ n }}</p>", "sms": "{{ n }}"}}
        )
        library = Library(partials={"unique": "cache test"})
        before = template_compilations()
        render(template, locale=None, data={"n": 1}, library=library, channel="email")
        compiled = template_compilations() - before
        assert compiled == 2  # subject and html; not the sms part
        again = render(template, locale=None, data={"n": 2}, library=library, channel="email")
        assert template_compilations() - before == compiled
        assert again.subject == "s 2"

    def test_an_equal_version_shares_the_cache(self) -> None:
        source = {"en": {"sms": "shared {{ n }}"}}
        render(content(source), locale=None, data={"n": 1}, library=NO_LIBRARY, channel="sms")
        before = template_compilations()
        render(content(source), locale=None, data={"n": 1}, library=NO_LIBRARY, channel="sms")
        assert template_compilations() == before


class TestHtmlToText:
    def test_structure_survives(self) -> None:
        html = (
            "<html><head><title>T</title><style>p{}</style></head><body>"
            "<h1>Title</h1><p>One   two<br>three</p><ul><li>a</li><li>b</li></ul>"
            '<p><a href="https://x.test/?a=1&amp;b=2">Open</a> '
            '<a href="https://y.test">https://y.test</a></p><script>alert(1)</script>'
            "</body></html>"
        )
        assert html_to_text(html) == (
            "Title\n\nOne two\nthree\n\n- a\n- b\n\nOpen (https://x.test/?a=1&b=2) https://y.test"
        )

    @pytest.mark.parametrize(
        "html",
        [
            "<html><head><style>p { color: #333 }</style></head><body><h1>Hello Ada</h1>"
            "<p>Read the <a href='https://news.example/item?id=3&amp;ref=mail'>full story</a>"
            ".</p><p>Plain   text &lt;here&gt; &amp; there</p></body></html>",
            '<p>a<br/>b<br />c<img src=x.png alt="x > y"/></p><pre>  kept\n  as is </pre>',
            "<ul><li>one<li>two</ul><table><tr><td>1<td>2</table><hr>"
            "<a href=https://x.test/ title='t'>https://x.test/</a>"
            "<a href='mailto:a@b.test'>mail</a>",
            "<div\nclass='a'\n>line</div ><SCRIPT>if (a<b) {}</SCRIPT>after",
        ],
    )
    def test_well_formed_html_reads_as_the_standard_parser_reads_it(self, html: str) -> None:
        # A comment sends the HTML to the standard library's parser (the fast reader takes
        # only tags and text); the text comes out the same either way.
        assert html_to_text(html) == html_to_text(f"<!-- -->{html}")

    def test_paragraphs_read_before_give_the_text_the_standard_parser_gives(self) -> None:
        # Documents made of shared pieces, so most of each one's paragraphs were read in an
        # earlier one (the kept pieces' text is reused): each reads as the standard
        # library's parser reads it, including pieces whose "</p>" sits in an attribute
        # value, a script, a pre or a link that runs past it.
        fragments = [
            "<p>Plain text &amp; more</p>",
            "<p>Read the <a href='https://x.test/?id=1&amp;r=m'>story</a>.</p>",
            "<h1>Hello Ada</h1>",
            "<p><a href='https://x.test/'>open ",
            "</a> closed</p>",
            "<pre>  kept </p>  as is</pre>",
            "<p><img alt='a </p> b' src=x.png></p>",
            '<p title="x</p>">quoted</p>',
            "<style>p { color: red } </p></style><p>after</p>",
            "<script>if (a<b) {}</script>",
            "<ul><li>one<li>two</ul>",
            "<div class=a>line</div>",
            "<p>a<br/>b</p>",
            "text without tags ",
            "</p>",
            "<p>",
        ]
        rng = random.Random(19)
        for _ in range(1500):
            html = "".join(rng.choice(fragments) for _ in range(rng.randint(1, 12)))
            assert html_to_text(html) == html_to_text(f"<!-- -->{html}"), html

    def test_a_newsletter_reads_the_same_for_every_recipient(self) -> None:
        # The second recipient's paragraphs are the first's (read from the kept pieces);
        # only the heading differs.
        body = "".join(
            f"<p>Item {i}: <a href='https://news.example/item?id={i}'>more</a></p>"
            for i in range(30)
        )
        first = html_to_text(f"<h1>Hello Ada</h1>{body}")
        second = html_to_text(f"<h1>Hello Grace</h1>{body}")
        assert second == first.replace("Hello Ada", "Hello Grace")
        assert second == html_to_text(f"<!-- --><h1>Hello Grace</h1>{body}")
