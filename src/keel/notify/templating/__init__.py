"""Message templates: validated content, locale choice, and rendering in a hardened sandbox.

A template version's content (:class:`TemplateContent`) holds, per locale, the parts a
message may need (email subject, HTML and text; SMS; push title and body; chat). The service
stores it as JSON and calls :func:`check` when a version is published, :func:`check_data`
when a send is accepted, and :func:`render` when a message is delivered::

    content = TemplateContent.model_validate(version.content)
    library = Library(partials={"footer": "<p>…</p>"}, layouts={"base": "<html>…{{ content }}…"})
    rendered = render(content, locale="pt-BR", data={"name": "Ada"}, library=library,
                      channel="email")

Modules: ``content`` (the models and locale choice), ``sandbox`` (Jinja's immutable sandbox
with CPU and memory bounds), ``rendering`` (cached compilation, render and the checks),
``text`` (HTML to plain text).
"""

from jinja2.sandbox import MAX_RANGE

from keel.notify.templating.content import (
    CHANNEL_PARTS,
    MAX_SOURCE_BYTES,
    PARTS,
    Channel,
    Library,
    LocaleParts,
    PartName,
    Rendered,
    TemplateContent,
    TemplateError,
    choose_locale,
)
from keel.notify.templating.rendering import check, check_data, render, variables
from keel.notify.templating.sandbox import MAX_RENDERED_BYTES, MAX_STEPS, template_compilations
from keel.notify.templating.text import html_to_text

__all__ = [
    "CHANNEL_PARTS",
    "MAX_RANGE",
    "MAX_RENDERED_BYTES",
    "MAX_SOURCE_BYTES",
    "MAX_STEPS",
    "PARTS",
    "Channel",
    "Library",
    "LocaleParts",
    "PartName",
    "Rendered",
    "TemplateContent",
    "TemplateError",
    "check",
    "check_data",
    "choose_locale",
    "html_to_text",
    "render",
    "template_compilations",
    "variables",
]
