"""Reading a tenant's audit log back in tests."""

from __future__ import annotations

from fastapi import FastAPI

from keel.audit.service import AUDIT_RESOURCE, AuditLog, EventFilter, StoredEvent
from tests.support.apps import unit_of_work


async def audit_events(
    app: FastAPI, tenant_id: str, *, action_prefix: str = "", limit: int = 100
) -> list[StoredEvent]:
    """The tenant's audit events, newest first, once the outbox is sequenced into the log."""
    audit: AuditLog = app.state.keel.resources[AUDIT_RESOURCE]
    await audit.sequence_outbox(tenant_id)
    async with unit_of_work(app) as session:
        return await audit.events(
            session,
            tenant_id,
            filters=EventFilter(action_prefix=action_prefix),
            limit=limit,
            newest_first=True,
        )
