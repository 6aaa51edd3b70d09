"""The action catalogue: Keel's own actions and those each tenant registers, and the check
of appended events against it.

An event names its action, ``service.resource.verb``; the catalogue gives the action's
category (which sets its retention), its sensitivity and the fields of its data to redact.
Keel's own actions, and every name in one of Keel's namespaces, are recorded by Keel only:
never appended over the API nor registered by a tenant.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.audit import (
    audit_actions,  # noqa: F401  (Keel's audit actions in the catalogue)
    schemas,
)
from keel.audit.audit_actions import REGISTER_ACTION
from keel.audit.models import AuditAction
from keel.core.audit import ActionSpec, Actor, build_document, builtin_action, record_event
from keel.core.errors import Conflict, ValidationFailed
from keel.core.tenancy import bind_tenant
from keel_client.audit import ACTION_PATTERN, Sensitivity

#: Namespaces of Keel's services: no tenant's action may start with one.
_RESERVED = {
    "auth",
    "audit",
    "secrets",
    "config",
    "flags",
    "notify",
    "jobs",
    "storage",
    "gateway",
    "keel",
}


def is_reserved(action: str) -> bool:
    """Keel's own actions and namespaces: recorded by Keel only, never appended or registered."""
    return builtin_action(action) is not None or action.split(".")[0] in _RESERVED


async def action(session: AsyncSession, tenant_id: str, name: str) -> ActionSpec:
    """The catalogue entry of ``name`` for this tenant, or a validation error."""
    spec = builtin_action(name)
    if spec is not None:
        return spec
    bind_tenant(session, tenant_id)
    row = await session.scalar(select(AuditAction).where(AuditAction.name == name))
    if row is None:
        raise ValidationFailed(
            f"Unknown action {name!r}: register it first (PUT /audit/v1/actions/{name})."
        )
    return _spec(row)


async def register_action(
    session: AsyncSession, tenant_id: str, spec: ActionSpec, *, actor: Actor
) -> tuple[ActionSpec, bool]:
    """Create or update a tenant's action; Keel's own names are reserved. A new or changed
    entry is recorded (``audit.action.register``, by ``actor``); the same entry again
    records nothing. Returns the entry and whether it is new."""
    if not ACTION_PATTERN.fullmatch(spec.name):
        raise ValidationFailed("An action is service.resource.verb: lowercase, dot-separated.")
    if is_reserved(spec.name):
        raise Conflict(f"{spec.name!r} is one of Keel's own actions.")
    bind_tenant(session, tenant_id)
    row = await session.scalar(select(AuditAction).where(AuditAction.name == spec.name))
    created = row is None
    entry = {
        "description": spec.description,
        "category": spec.category,
        "sensitivity": str(spec.sensitivity),
        "sensitive_fields": sorted(spec.sensitive_fields),
    }
    if row is None:
        row = AuditAction(name=spec.name)
        session.add(row)
    elif entry == {field: getattr(row, field) for field in entry}:
        return spec, False
    for field, value in entry.items():
        setattr(row, field, value)
    record_event(
        session,
        tenant_id=tenant_id,
        action=REGISTER_ACTION,
        actor=actor,
        target_type="audit_action",
        target_id=spec.name,
        data=entry,
    )
    await session.flush()
    return spec, created


async def tenant_actions(session: AsyncSession, tenant_id: str) -> list[ActionSpec]:
    """The actions the tenant registered, by name."""
    bind_tenant(session, tenant_id)
    rows = await session.scalars(select(AuditAction).order_by(AuditAction.name))
    return [_spec(row) for row in rows]


async def appended_documents(
    session: AsyncSession, tenant_id: str, events: Sequence[schemas.EventIn]
) -> list[dict[str, Any]]:
    """The documents of events appended over the API, each checked against the catalogue
    (a reserved or unknown action is a validation error naming the event's position) and
    redacted as its action says."""
    documents = []
    for position, event in enumerate(events):
        if is_reserved(event.action):
            raise ValidationFailed(
                f"events[{position}]: {event.action!r} is Keel's own action; only Keel records it."
            )
        try:
            spec = await action(session, tenant_id, event.action)
        except ValidationFailed as error:
            raise ValidationFailed(f"events[{position}]: {error.detail}") from None
        documents.append(
            build_document(
                tenant_id=tenant_id,
                action=event.action,
                spec=spec,
                event_id=event.id,
                time=event.time,
                outcome=event.outcome,
                actor=event.actor.model_dump() if event.actor else None,
                target=event.target.model_dump() if event.target else None,
                reason=event.reason,
                request_id=event.request_id,
                trace_id=event.trace_id,
                sensitivity=event.sensitivity,
                data=event.data,
            )
        )
    return documents


def _spec(row: AuditAction) -> ActionSpec:
    return ActionSpec(
        row.name,
        row.description,
        row.category,
        Sensitivity(row.sensitivity),
        frozenset(row.sensitive_fields),
    )
