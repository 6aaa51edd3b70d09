"""The one internal audit recorder every Keel service writes through.

``record_event(session, ...)`` adds the event to the caller's session, so it commits or rolls
back with the change it records (same transaction). Until the tamper-evident audit log service
lands, events are stored in ``audit_records``; that service will take over this function's
storage without any caller changing. Event data passes the log redaction first: secrets,
tokens and passwords never reach the audit trail.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import structlog
from sqlalchemy import JSON, String, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from keel.core.db import Base, UTCDateTime, utcnow
from keel.core.ids import new_id
from keel.core.logging import redact
from keel.core.tenancy import TenantScoped, bind_tenant, bound_tenant
from keel_client.auth import Principal


@dataclass(frozen=True)
class Actor:
    """Who performs an operation, for the audit trail."""

    type: str | None = None
    id: str | None = None
    ip_address: str | None = None
    user_agent: str | None = None

    @classmethod
    def of(cls, principal: Principal | None, ip_address: str | None = None) -> Actor:
        if principal is None:
            return cls(ip_address=ip_address)
        return cls(principal.principal_type, principal.subject, ip_address)


#: Keel itself: the CLI, start-up and scheduled work.
SYSTEM = Actor("system", "keel")


class Outcome(StrEnum):
    success = "success"
    failure = "failure"
    denied = "denied"


class AuditRecord(TenantScoped, Base):
    __tablename__ = "audit_records"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    action: Mapped[str] = mapped_column(String(100), index=True)
    outcome: Mapped[str] = mapped_column(String(10))
    actor_type: Mapped[str | None] = mapped_column(String(20), nullable=True)
    actor_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    target_type: Mapped[str | None] = mapped_column(String(50), nullable=True)
    target_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    ip_address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reason: Mapped[str | None] = mapped_column(String(200), nullable=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


def record_event(
    session: AsyncSession,
    *,
    tenant_id: str,
    action: str,
    outcome: Outcome = Outcome.success,
    actor: Actor | None = None,
    actor_type: str | None = None,
    actor_id: str | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    ip_address: str | None = None,
    reason: str | None = None,
    data: dict[str, Any] | None = None,
) -> AuditRecord:
    """Add an audit event to ``session``; it lands with the caller's transaction.

    ``actor`` fills the actor fields and address; an explicit ``actor_type``, ``actor_id`` or
    ``ip_address`` wins over it.
    """
    if actor is not None:
        actor_type = actor_type or actor.type
        actor_id = actor_id or actor.id
        ip_address = ip_address or actor.ip_address
    context = structlog.contextvars.get_contextvars()
    event = AuditRecord(
        tenant_id=tenant_id,
        action=action,
        outcome=str(outcome),
        actor_type=actor_type,
        actor_id=actor_id,
        target_type=target_type,
        target_id=target_id,
        request_id=context.get("request_id"),
        ip_address=ip_address,
        reason=reason,
        data=redact(data or {}),
    )
    if bound_tenant(session) not in (None, tenant_id):
        raise ValueError("an audit event must belong to the session's tenant")
    session.add(event)
    return event


async def list_events(
    session: AsyncSession, tenant_id: str, *, action_prefix: str = "", limit: int = 100
) -> list[AuditRecord]:
    """Recent events of a tenant, newest first (used by tests and the CLI until issue 5)."""
    bind_tenant(session, tenant_id)
    statement = select(AuditRecord).order_by(AuditRecord.occurred_at.desc()).limit(limit)
    if action_prefix:
        statement = statement.where(AuditRecord.action.startswith(action_prefix))
    return list(await session.scalars(statement))
