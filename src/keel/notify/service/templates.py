"""Templates: named, with immutable versions; a publish checks the content renders (with its
``sample_data``, every locale, every channel it has parts for) before any send can use it,
and a rollback points sends back at an earlier version.

A ``message`` template's content is :class:`keel.notify.templating.TemplateContent`; a
``layout`` or ``partial`` is one HTML source (``{"html": "..."}``), and the library every
message renders with is the tenant's layouts and partials at their published versions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.db import utcnow
from keel.core.errors import Conflict, NotFound, ValidationFailed
from keel.core.lazy import lazy_module
from keel.core.tenancy import bind_tenant
from keel.notify.models import NotifyTemplate, NotifyTemplateVersion

if TYPE_CHECKING:
    from keel.notify import templating
else:
    templating = lazy_module("keel.notify.templating")


_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")
#: Largest JSON content of one version.
MAX_CONTENT_BYTES = 512 * 1024


class TemplateKind(StrEnum):
    message = "message"
    layout = "layout"
    partial = "partial"


def validate_template_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValidationFailed(
            f"Template name {name!r} is not 1-128 lower-case letters, digits and _.- "
            "(starting with a letter or digit)."
        )
    return name


def _bad_template(error: templating.TemplateError) -> ValidationFailed:
    return ValidationFailed(f"The template does not render: {error}")


async def get_template(session: AsyncSession, tenant_id: str, name: str) -> NotifyTemplate:
    bind_tenant(session, tenant_id)
    template = await session.scalar(select(NotifyTemplate).where(NotifyTemplate.name == name))
    if template is None:
        raise NotFound(f"No template {name!r}.")
    return template


async def list_templates(
    session: AsyncSession, tenant_id: str, kind: TemplateKind | None = None
) -> list[NotifyTemplate]:
    bind_tenant(session, tenant_id)
    query = select(NotifyTemplate).order_by(NotifyTemplate.name)
    if kind is not None:
        query = query.where(NotifyTemplate.kind == kind.value)
    return list(await session.scalars(query))


async def get_version(
    session: AsyncSession, tenant_id: str, name: str, number: int | None = None
) -> tuple[NotifyTemplate, NotifyTemplateVersion]:
    """The template and its version ``number`` (default: the published one)."""
    template = await get_template(session, tenant_id, name)
    wanted = number if number is not None else template.published_version
    if wanted is None:
        raise NotFound(f"Template {name!r} has no published version.")
    version = await session.scalar(
        select(NotifyTemplateVersion).where(
            NotifyTemplateVersion.template_id == template.id,
            NotifyTemplateVersion.number == wanted,
        )
    )
    if version is None:
        raise NotFound(f"Template {name!r} has no version {wanted}.")
    return template, version


async def list_versions(
    session: AsyncSession, tenant_id: str, name: str
) -> list[NotifyTemplateVersion]:
    template = await get_template(session, tenant_id, name)
    return list(
        await session.scalars(
            select(NotifyTemplateVersion)
            .where(NotifyTemplateVersion.template_id == template.id)
            .order_by(NotifyTemplateVersion.number)
        )
    )


async def load_library(session: AsyncSession, tenant_id: str) -> templating.Library:
    """The tenant's layouts and partials at their published versions."""
    bind_tenant(session, tenant_id)
    rows = (
        await session.execute(
            select(NotifyTemplate.name, NotifyTemplate.kind, NotifyTemplateVersion.content)
            .join(
                NotifyTemplateVersion,
                (NotifyTemplateVersion.template_id == NotifyTemplate.id)
                & (NotifyTemplateVersion.number == NotifyTemplate.published_version),
            )
            .where(NotifyTemplate.kind.in_([TemplateKind.layout.value, TemplateKind.partial.value]))
        )
    ).all()
    layouts = {row.name: row.content["html"] for row in rows if row.kind == TemplateKind.layout}
    partials = {row.name: row.content["html"] for row in rows if row.kind == TemplateKind.partial}
    return templating.Library(partials=partials, layouts=layouts)


def parse_content(kind: str, content: Mapping[str, Any]) -> dict[str, Any]:
    """The content checked for its kind's shape (not yet for rendering), as stored."""
    if kind == TemplateKind.message:
        try:
            model = templating.TemplateContent.model_validate(content)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise ValidationFailed(f"content.{where}: {first['msg']}") from None
        return model.model_dump(mode="json", exclude_none=True)
    html = content.get("html")
    if not isinstance(html, str) or set(content) != {"html"}:
        raise ValidationFailed(f"A {kind}'s content is {{'html': '<source>'}}.")
    return {"html": html}


def check_renders(kind: str, content: Mapping[str, Any], library: templating.Library) -> None:
    """Refuse (422) content that does not render: what a publish checks."""
    try:
        if kind == TemplateKind.message:
            templating.check(templating.TemplateContent.model_validate(content), library)
        else:
            _check_fragment(content["html"])
    except templating.TemplateError as exc:
        raise _bad_template(exc) from None


def _check_fragment(source: str) -> None:
    """A layout or partial parses (it renders as part of the messages that use it, whose
    own publish renders it with their sample data)."""
    from jinja2 import Environment, TemplateSyntaxError

    try:
        Environment(autoescape=True).parse(source)
    except TemplateSyntaxError as exc:
        raise ValidationFailed(
            f"The template does not parse: line {exc.lineno}: {exc.message}"
        ) from None
    if len(source.encode()) > templating.MAX_SOURCE_BYTES:
        raise ValidationFailed(f"A template part is at most {templating.MAX_SOURCE_BYTES} bytes.")


async def check_messages_render_with(
    session: AsyncSession, tenant_id: str, kind: str, name: str, html: str
) -> None:
    """Refuse (422) a layout or partial under which a published message would no longer
    render: it renders inside the messages, so its publish (or rollback) is checked as
    theirs was — each published message with its sample data."""
    library = await load_library(session, tenant_id)
    partials, layouts = dict(library.partials), dict(library.layouts)
    (layouts if kind == TemplateKind.layout else partials)[name] = html
    candidate = templating.Library(partials=partials, layouts=layouts)
    messages = await session.execute(
        select(NotifyTemplate.name, NotifyTemplateVersion.content)
        .join(
            NotifyTemplateVersion,
            (NotifyTemplateVersion.template_id == NotifyTemplate.id)
            & (NotifyTemplateVersion.number == NotifyTemplate.published_version),
        )
        .where(NotifyTemplate.kind == TemplateKind.message.value)
        .order_by(NotifyTemplate.name)
    )
    for message_name, content in messages:
        try:
            templating.check(templating.TemplateContent.model_validate(content), candidate)
        except templating.TemplateError as exc:
            raise ValidationFailed(
                f"Template {message_name!r} would not render with this {kind}: {exc}"
            ) from None


@dataclass(frozen=True)
class Published:
    template: NotifyTemplate
    version: NotifyTemplateVersion
    created: bool


async def publish(
    session: AsyncSession,
    tenant_id: str,
    name: str,
    content: Mapping[str, Any],
    *,
    kind: TemplateKind = TemplateKind.message,
    category: str | None = None,
    description: str | None = None,
    note: str = "",
    created_by: str | None = None,
) -> Published:
    """A new version of template ``name`` (made on its first publish), checked to render,
    and published: sends use it from the commit on."""
    validate_template_name(name)
    bind_tenant(session, tenant_id)
    stored = parse_content(kind, content)
    check_renders(kind, stored, await load_library(session, tenant_id))
    if kind != TemplateKind.message:
        await check_messages_render_with(session, tenant_id, kind, name, stored["html"])
    template = await session.scalar(
        select(NotifyTemplate).where(NotifyTemplate.name == name).with_for_update()
    )
    created = template is None
    if template is None:
        template = NotifyTemplate(
            name=name, kind=kind.value, category=category, latest_version=0, version=0
        )
        session.add(template)
    elif template.kind != kind:
        raise Conflict(f"Template {name!r} is a {template.kind}, not a {kind}.")
    if category is not None:
        template.category = category
    if description is not None:
        template.description = description
    template.latest_version += 1
    template.published_version = template.latest_version
    template.version += 1
    template.updated_at = utcnow()
    await session.flush()
    version = NotifyTemplateVersion(
        template_id=template.id,
        number=template.latest_version,
        content=stored,
        note=note,
        created_by=created_by,
    )
    session.add(version)
    await session.flush()
    return Published(template, version, created)


async def rollback(session: AsyncSession, tenant_id: str, name: str, number: int) -> NotifyTemplate:
    """Sends use version ``number`` again (a version is never changed, only chosen)."""
    template, version = await get_version(session, tenant_id, name, number)
    if template.kind == TemplateKind.message:
        # The layouts and partials it names may have changed since: it must still render.
        check_renders(template.kind, version.content, await load_library(session, tenant_id))
    else:
        await check_messages_render_with(
            session, tenant_id, template.kind, name, version.content["html"]
        )
    template.published_version = version.number
    template.version += 1
    template.updated_at = utcnow()
    await session.flush()
    return template


async def preview(
    session: AsyncSession,
    tenant_id: str,
    name: str,
    *,
    channel: templating.Channel,
    data: Mapping[str, Any] | None,
    locale: str | None,
    number: int | None = None,
) -> templating.Rendered:
    """What a message of template ``name`` would be: its ``sample_data`` unless ``data``."""
    template, version = await get_version(session, tenant_id, name, number)
    if template.kind != TemplateKind.message:
        raise ValidationFailed(f"Template {name!r} is a {template.kind}: only messages render.")
    content = templating.TemplateContent.model_validate(version.content)
    library = await load_library(session, tenant_id)
    try:
        return templating.render(
            content,
            locale=locale,
            data=content.sample_data if data is None else data,
            library=library,
            channel=channel,
        )
    except templating.TemplateError as exc:
        raise _bad_template(exc) from None
