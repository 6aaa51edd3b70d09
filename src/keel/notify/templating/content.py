"""A template version's content, a tenant's library of partials and layouts, and locale choice.

The service stores :class:`TemplateContent` as JSON; validating it here means a version that
reaches rendering has a default locale among its locales and parts of bounded size.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_SOURCE_BYTES = 256 * 1024
Channel = Literal["email", "sms", "push", "chat"]
PartName = Literal["subject", "html", "text", "sms", "push_title", "push_body", "chat"]
PARTS: tuple[PartName, ...] = ("subject", "html", "text", "sms", "push_title", "push_body", "chat")
CHANNEL_PARTS: dict[Channel, tuple[PartName, ...]] = {
    "email": ("subject", "html", "text"),
    "sms": ("sms",),
    "push": ("push_title", "push_body"),
    "chat": ("chat",),
}

_LOCALE_TAG = re.compile(r"[A-Za-z]{2,8}(?:[-_][A-Za-z0-9]{1,8})*")


class TemplateError(ValueError):
    """A template that cannot be compiled or rendered, with where it failed.

    ``str(error)`` is one line that is safe to show to the API caller: it names the part,
    the locale, the line and the cause, never a value of the data (data is personal).
    """

    def __init__(
        self,
        reason: str,
        *,
        part: str | None = None,
        locale: str | None = None,
        line: int | None = None,
        template: str | None = None,
    ) -> None:
        self.reason = " ".join(reason.split())[:300]
        self.part = part
        self.locale = locale
        self.line = line
        self.template = template
        where = []
        if part is not None:
            where.append(f"part {part}")
        if locale is not None:
            where.append(f"locale {locale}")
        if template is not None:
            where.append(f"in {template}")
        if line is not None:
            where.append(f"line {line}")
        super().__init__(f"{', '.join(where)}: {self.reason}" if where else self.reason)


# -- content -------------------------------------------------------------------------------


class LocaleParts(BaseModel):
    """The parts of one locale; a locale has at least one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    subject: str | None = None
    html: str | None = None
    text: str | None = None
    sms: str | None = None
    push_title: str | None = None
    push_body: str | None = None
    chat: str | None = None

    @model_validator(mode="after")
    def _has_a_part(self) -> LocaleParts:
        if all(getattr(self, part) is None for part in PARTS):
            raise ValueError("a locale needs at least one part")
        for part in PARTS:
            source = getattr(self, part)
            if source is not None and len(source.encode()) > MAX_SOURCE_BYTES:
                raise ValueError(f"the {part} part exceeds {MAX_SOURCE_BYTES} bytes")
        return self


class TemplateContent(BaseModel):
    """One immutable template version's content, as the service stores it (JSON)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default_locale: str
    layout: str | None = Field(default=None, min_length=1, max_length=200)
    locales: dict[str, LocaleParts] = Field(min_length=1)
    sample_data: dict[str, Any] = Field(default_factory=dict)

    @field_validator("locales")
    @classmethod
    def _locale_tags(cls, locales: dict[str, LocaleParts]) -> dict[str, LocaleParts]:
        seen: set[str] = set()
        for tag in locales:
            if not _LOCALE_TAG.fullmatch(tag):
                raise ValueError(f"{tag[:40]!r} is not a locale tag (like en or pt-BR)")
            if _normalize_tag(tag) in seen:
                raise ValueError(f"the locale {tag} is given twice")
            seen.add(_normalize_tag(tag))
        return locales

    @model_validator(mode="after")
    def _default_is_present(self) -> TemplateContent:
        if self.default_locale not in self.locales:
            raise ValueError(f"the default locale {self.default_locale[:40]!r} has no parts")
        return self

    @cached_property
    def fingerprint(self) -> str:
        """What the compiled-template cache keys on: the sources, not the sample data."""
        sources = {"layout": self.layout, "locales": self.model_dump(mode="json")["locales"]}
        return hashlib.sha256(json.dumps(sources, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True, eq=False)
class Library:
    """A tenant's shared HTML: partials (``{% include "partials/footer.html" %}``) and layouts.

    Names are given without the folder (``footer`` or ``footer.html``). A partial named with
    ``.txt`` is not escaped, for inclusion in plain-text parts.
    """

    partials: Mapping[str, str] = field(default_factory=dict)
    layouts: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for kind, sources in (("partial", self.partials), ("layout", self.layouts)):
            for name, source in sources.items():
                if len(source.encode()) > MAX_SOURCE_BYTES:
                    raise TemplateError(
                        f"the {kind} {name[:80]!r} exceeds {MAX_SOURCE_BYTES} bytes"
                    )

    @cached_property
    def fingerprint(self) -> str:
        sources = {"partials": dict(self.partials), "layouts": dict(self.layouts)}
        return hashlib.sha256(json.dumps(sources, sort_keys=True).encode()).hexdigest()

    def source(self, name: str) -> str | None:
        """The source behind a template name (``partials/x.html``, ``layouts/base``)."""
        folder, _, short = name.partition("/")
        sources = {"partials": self.partials, "layouts": self.layouts}.get(folder)
        if sources is None or not short:
            return None
        if short in sources:
            return sources[short]
        stem, dot, extension = short.rpartition(".")
        return sources.get(stem) if dot and extension in ("html", "htm", "txt") else None


@dataclass(frozen=True)
class Rendered:
    """A message's rendered parts for one channel (the others are None)."""

    locale: str
    subject: str | None = None
    html: str | None = None
    text: str | None = None
    sms: str | None = None
    push_title: str | None = None
    push_body: str | None = None
    chat: str | None = None


# -- locale choice --------------------------------------------------------------------------


def _normalize_tag(tag: str) -> str:
    return tag.replace("_", "-").lower()


def has_channel(parts: LocaleParts, channel: Channel) -> bool:
    return any(getattr(parts, part) is not None for part in CHANNEL_PARTS[channel])


def choose_locale(
    content: TemplateContent, requested: str | None, *, channel: Channel | None = None
) -> str:
    """The locale to render for a recipient who asked for ``requested``.

    The exact tag (``pt_BR`` matches ``pt-BR``, any case), then its language (``pt``), then
    another region of that language (``pt-PT``), then the default locale. Given a
    ``channel``, only locales holding a part of that channel are candidates.
    """
    if requested:
        candidates = [
            tag
            for tag, parts in content.locales.items()
            if channel is None or has_channel(parts, channel)
        ]
        wanted = _normalize_tag(requested)
        language = wanted.split("-")[0]
        normalized = [(_normalize_tag(tag), tag) for tag in candidates]
        for normal, tag in normalized:
            if normal == wanted:
                return tag
        for normal, tag in normalized:
            if normal == language:
                return tag
        for normal, tag in normalized:
            if normal.split("-")[0] == language:
                return tag
    return content.default_locale
