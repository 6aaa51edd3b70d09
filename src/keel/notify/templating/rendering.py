"""Rendering, and the checks publishing and sending run, over cached compiled templates.

Compiled parts are cached per library, content, locale and part (a batch renders one
version many times: it compiles once). :func:`check` stops at the first problem it finds.
Errors are :class:`TemplateError`, whose text never carries a value of the data.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any

import css_inline
from jinja2 import TemplateNotFound, meta, nodes
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import MAX_RANGE
from markupsafe import Markup

from keel.notify.templating.content import (
    CHANNEL_PARTS,
    PARTS,
    Channel,
    Library,
    PartName,
    Rendered,
    TemplateContent,
    TemplateError,
    choose_locale,
    has_channel,
)
from keel.notify.templating.sandbox import Sandbox, render_bounded
from keel.notify.templating.text import html_to_text

# -- compiled-template caches -------------------------------------------------------------


class _Compiler:
    """One library's sandbox and its compiled parts (an LRU: a batch renders one version)."""

    PART_CACHE_SIZE = 512

    def __init__(self, library: Library) -> None:
        self.environment = Sandbox(library)
        self._parts: OrderedDict[tuple[str, str, str], Any] = OrderedDict()
        self._lock = threading.Lock()

    def part(self, content: TemplateContent, locale: str, part: PartName) -> Any:
        key = (content.fingerprint, locale, part)
        with self._lock:
            template = self._parts.get(key)
            if template is not None:
                self._parts.move_to_end(key)
                return template
        source = getattr(content.locales[locale], part)
        extension = "html" if part == "html" else "txt"
        environment = self.environment
        try:
            code = environment.compile(source, name=f"{part}.{extension}", filename=f"<{part}>")
        except TemplateSyntaxError as error:
            raise _template_error(error, part=part, locale=locale) from None
        template = environment.template_class.from_code(
            environment, code, environment.make_globals(None), None
        )
        with self._lock:
            self._parts[key] = template
            while len(self._parts) > self.PART_CACHE_SIZE:
                self._parts.popitem(last=False)
        return template


_COMPILER_CACHE_SIZE = 64
_compilers: OrderedDict[str, _Compiler] = OrderedDict()
_compilers_lock = threading.Lock()


def _compiler(library: Library) -> _Compiler:
    key = library.fingerprint
    with _compilers_lock:
        compiler = _compilers.get(key)
        if compiler is None:
            compiler = _compilers[key] = _Compiler(library)
            while len(_compilers) > _COMPILER_CACHE_SIZE:
                _compilers.popitem(last=False)
        else:
            _compilers.move_to_end(key)
        return compiler


# -- rendering ------------------------------------------------------------------------------


def _template_frame(traceback: TracebackType | None) -> tuple[str | None, int | None]:
    """The innermost template frame of a rendering error: (included template or None, line)."""
    found: tuple[str | None, int | None] = (None, None)
    while traceback is not None:
        filename = traceback.tb_frame.f_code.co_filename
        if filename.startswith("<") and filename.endswith(">") and filename[1:-1] in PARTS:
            found = (None, traceback.tb_lineno)
        elif filename.startswith(("partials/", "layouts/")):
            found = (filename, traceback.tb_lineno)
        traceback = traceback.tb_next
    return found


def _template_error(error: Exception, *, part: str, locale: str) -> TemplateError:
    """A caller-safe error: Jinja's own messages name template things; others only a type."""
    if isinstance(error, TemplateError):
        return TemplateError(error.reason, part=part, locale=locale, line=error.line)
    if isinstance(error, TemplateNotFound):
        return TemplateError(f"{error.name!s} does not exist", part=part, locale=locale)
    if isinstance(error, TemplateSyntaxError):
        template = error.name if error.name and "/" in error.name else None
        return TemplateError(
            f"syntax error: {error.message}",
            part=part,
            locale=locale,
            line=error.lineno,
            template=template,
        )
    template, line = _template_frame(error.__traceback__)
    if isinstance(error, UndefinedError | SecurityError):
        reason = error.message or type(error).__name__
    elif isinstance(error, OverflowError):
        reason = f"a range or number is too large (ranges stop at {MAX_RANGE} items)"
    elif isinstance(error, RecursionError):
        reason = "the template recursed too deeply"
    else:
        # Other messages may quote a value of the data ("'x' is not in list").
        reason = f"the template failed while rendering ({type(error).__name__})"
    return TemplateError(reason, part=part, locale=locale, line=line, template=template)


_CSS_INLINER = css_inline.CSSInliner(load_remote_stylesheets=False, keep_at_rules=True)


def _render_locale(
    content: TemplateContent,
    locale: str,
    data: Mapping[str, Any],
    library: Library,
    channel: Channel,
) -> Rendered:
    parts = content.locales[locale]
    compiler = _compiler(library)

    def run(part: PartName) -> str | None:
        if getattr(parts, part) is None:
            return None
        template = compiler.part(content, locale, part)
        try:
            return render_bounded(template, data)
        except Exception as error:
            raise _template_error(error, part=part, locale=locale) from None

    def lacking(part: str) -> TemplateError:
        return TemplateError(
            f"the template has no {part} for channel {channel} in locale {locale}",
            part=part,
            locale=locale,
        )

    if channel == "sms":
        if parts.sms is None:
            raise lacking("sms")
        return Rendered(locale=locale, sms=run("sms"))
    if channel == "chat":
        if parts.chat is None:
            raise lacking("chat")
        return Rendered(locale=locale, chat=run("chat"))
    if channel == "push":
        if parts.push_title is None and parts.push_body is None:
            raise lacking("push_title or push_body")
        return Rendered(locale=locale, push_title=run("push_title"), push_body=run("push_body"))
    if parts.subject is None:
        raise lacking("subject")
    if parts.html is None and parts.text is None:
        raise lacking("html or text")
    subject = " ".join((run("subject") or "").split())  # one header line, whatever the data
    html = run("html")
    if html is not None:
        html = _apply_layout(content, compiler, html, data, locale)
        text: str | None = run("text") or html_to_text(html)
        try:
            html = _CSS_INLINER.inline(html)
        except ValueError:
            raise TemplateError(
                "the CSS could not be inlined", part="html", locale=locale
            ) from None
    else:
        text = run("text")
    return Rendered(locale=locale, subject=subject, html=html, text=text)


def _apply_layout(
    content: TemplateContent,
    compiler: _Compiler,
    html: str,
    data: Mapping[str, Any],
    locale: str,
) -> str:
    if content.layout is None:
        return html
    try:
        layout = compiler.environment.get_template(_layout_name(content.layout))
        # The message HTML is already escaped: the layout places it as it is.
        return render_bounded(layout, {**data, "content": Markup(html)})  # noqa: S704
    except TemplateNotFound:
        raise TemplateError(
            f"the layout {content.layout[:80]!r} does not exist", part="html", locale=locale
        ) from None
    except Exception as error:
        raise _template_error(error, part="html", locale=locale) from None


def _layout_name(layout: str) -> str:
    return f"layouts/{layout}" if "." in layout else f"layouts/{layout}.html"


def render(
    content: TemplateContent,
    *,
    locale: str | None,
    data: Mapping[str, Any],
    library: Library,
    channel: Channel,
) -> Rendered:
    """Render the parts of ``channel`` in the best locale for ``locale``.

    Email HTML is wrapped in its layout and has its CSS inlined; a text part is derived from
    the HTML when the locale has none. Raises :class:`TemplateError`.
    """
    chosen = choose_locale(content, locale, channel=channel)
    return _render_locale(content, chosen, data, library, channel)


# -- publish and send checks ----------------------------------------------------------------


def _referenced(tree: nodes.Template) -> Iterator[str]:
    for name in meta.find_referenced_templates(tree):
        if name is not None:  # a name computed at render time is checked by rendering
            yield name


def _undeclared(
    environment: Sandbox, source: str, seen: set[str], *, name: str | None = None
) -> set[str]:
    tree = environment.parse(source, name=name)
    found = meta.find_undeclared_variables(tree) - set(environment.globals)
    for include in _referenced(tree):
        included = environment.library.source(include)
        if included is not None and include not in seen:
            seen.add(include)
            found |= _undeclared(environment, included, seen, name=include)
    return found


def variables(
    content: TemplateContent, library: Library, *, channel: Channel | None = None
) -> set[str]:
    """The top-level names the parts use (those of ``channel`` only, when given), including
    what their partials and layout use; the layout's ``content`` is not one."""
    environment = _compiler(library).environment
    wanted = CHANNEL_PARTS[channel] if channel else PARTS
    found: set[str] = set()
    seen: set[str] = set()
    for tag, parts in content.locales.items():
        for part in wanted:
            source = getattr(parts, part)
            if source is None:
                continue
            try:
                found |= _undeclared(environment, source, seen)
            except TemplateSyntaxError as error:
                raise _template_error(error, part=part, locale=tag) from None
    if content.layout is not None and "html" in wanted:
        layout = library.source(_layout_name(content.layout))
        if layout is not None:
            found |= _undeclared(environment, layout, seen) - {"content"}
    return found


def check(content: TemplateContent, library: Library) -> None:
    """What publishing runs: stops at the first problem, as a :class:`TemplateError`.

    The layout exists; every part of every locale compiles and names partials that exist;
    each locale renders with ``sample_data`` for every channel it has a part of.
    """
    compiler = _compiler(library)
    if content.layout is not None and library.source(_layout_name(content.layout)) is None:
        raise TemplateError(f"the layout {content.layout[:80]!r} does not exist", part="html")
    for tag, parts in content.locales.items():
        for part in PARTS:
            source = getattr(parts, part)
            if source is None:
                continue
            compiler.part(content, tag, part)
            tree = compiler.environment.parse(source)
            for include in _referenced(tree):
                if library.source(include) is None:
                    raise TemplateError(f"{include[:80]} does not exist", part=part, locale=tag)
        for channel in CHANNEL_PARTS:
            if has_channel(parts, channel):
                _render_locale(content, tag, content.sample_data, library, channel)


def check_data(
    content: TemplateContent,
    library: Library,
    data: Mapping[str, Any],
    *,
    channel: Channel | None = None,
) -> None:
    """What accepting a send runs: every top-level variable has a value in ``data``."""
    absent = sorted(variables(content, library, channel=channel) - set(data))
    if absent:
        raise TemplateError(f"the data lacks variables: {', '.join(absent)}")
