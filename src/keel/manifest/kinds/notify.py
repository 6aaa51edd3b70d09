"""Notification templates: a template whose published content, category or description
differs from the manifest's gets a new version, published."""

from __future__ import annotations

from typing import Any

from keel.core.audit import record_event
from keel.core.errors import NotFound
from keel.manifest.plan import Change, Target
from keel.notify.service import templates


async def plan(target: Target) -> list[Change]:
    session, tenant_id, actor = target.session, target.tenant_id, target.actor
    changes: list[Change] = []
    for name, content in target.loaded.templates.items():
        section = target.loaded.manifest.templates[name]
        fields: list[str] = []
        try:
            current = await templates.get_template(session, tenant_id, name)
        except NotFound:
            current = None
        if current is not None:
            if current.kind != section.kind:
                target.refuse(
                    ("templates", name, "kind"),
                    f"the template is a {current.kind}; its kind cannot change",
                )
                continue
            published: dict[str, Any] | None = None
            if current.published_version is not None:
                _, version = await templates.get_version(
                    session, tenant_id, name, current.published_version
                )
                published = version.content
            if published != content:
                fields.append("content")
            if section.category is not None and current.category != section.category:
                fields.append("category")
            if section.description is not None and current.description != section.description:
                fields.append("description")
            if not fields:
                continue

        async def publish(name: str = name, content: dict[str, Any] = content) -> None:
            section = target.loaded.manifest.templates[name]
            outcome = await templates.publish(
                session,
                tenant_id,
                name,
                content,
                kind=templates.TemplateKind(section.kind),
                category=section.category,
                description=section.description,
                note="keel apply",
                created_by=actor.id,
            )
            record_event(
                session,
                tenant_id=tenant_id,
                action="notify.template.publish",
                actor=actor,
                target_type="notify_template",
                target_id=name,
                data={"version": outcome.version.number, "kind": section.kind},
            )

        changes.append(Change("~" if current else "+", "template", name, publish, fields))
    return changes
