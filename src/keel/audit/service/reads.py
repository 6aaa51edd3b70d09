"""Reading a tenant's events back: one by id, or a filtered page in log order."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.audit.models import AuditEvent, AuditPayload
from keel.core.errors import NotFound
from keel.core.tenancy import bind_tenant


@dataclass(frozen=True)
class EventFilter:
    """What a listing or an export keeps: each given field must match (``action_prefix``
    starts the action's name); ``since`` included, ``until`` excluded."""

    since: datetime | None = None
    until: datetime | None = None
    actor_id: str | None = None
    actor_type: str | None = None
    action_prefix: str | None = None
    target_type: str | None = None
    target_id: str | None = None
    outcome: str | None = None
    sensitivity: str | None = None

    def apply(self, statement: Any) -> Any:
        conditions = []
        if self.since is not None:
            conditions.append(AuditEvent.time >= self.since)
        if self.until is not None:
            conditions.append(AuditEvent.time < self.until)
        if self.actor_id is not None:
            conditions.append(AuditEvent.actor_id == self.actor_id)
        if self.actor_type is not None:
            conditions.append(AuditEvent.actor_type == self.actor_type)
        if self.action_prefix:
            conditions.append(AuditEvent.action.startswith(self.action_prefix, autoescape=True))
        if self.target_type is not None:
            conditions.append(AuditEvent.target_type == self.target_type)
        if self.target_id is not None:
            conditions.append(AuditEvent.target_id == self.target_id)
        if self.outcome is not None:
            conditions.append(AuditEvent.outcome == self.outcome)
        if self.sensitivity is not None:
            conditions.append(AuditEvent.sensitivity == self.sensitivity)
        return statement.where(*conditions) if conditions else statement


@dataclass(frozen=True)
class StoredEvent:
    """An event of the log: its leaf and, unless retention erased it, its document."""

    leaf_index: int
    leaf_hash: bytes
    event_id: str
    action: str
    document: dict[str, Any] | None

    def __getattr__(self, name: str) -> Any:
        """The document's fields as attributes (``outcome``, ``reason``, ``data``...), and the
        actor's and target's as ``actor_id``, ``ip_address``, ``target_type``..."""
        document = self.__dict__.get("document") or {}
        if name in _FLAT:
            part, key = _FLAT[name]
            return (document.get(part) or {}).get(key)
        if name in (
            "outcome",
            "reason",
            "data",
            "time",
            "tenant",
            "sensitivity",
            "request_id",
            "trace_id",
            "actor",
            "target",
        ):
            return document.get(name, {} if name == "data" else None)
        raise AttributeError(name)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = dict(self.document or {"id": self.event_id, "action": self.action})
        body["leaf_index"] = self.leaf_index
        body["leaf_hash"] = base64.b64encode(self.leaf_hash).decode()
        if self.document is None:
            body["erased"] = True
        return body


_FLAT = {
    "actor_type": ("actor", "type"),
    "actor_id": ("actor", "id"),
    "ip_address": ("actor", "ip"),
    "user_agent": ("actor", "user_agent"),
    "target_type": ("target", "type"),
    "target_id": ("target", "id"),
}


def events_query() -> Any:
    """Events with their documents (None once erased), for one tenant's session."""
    return select(
        AuditEvent.leaf_index,
        AuditEvent.leaf_hash,
        AuditEvent.event_id,
        AuditEvent.action,
        AuditPayload.document,
    ).join(
        AuditPayload,
        (AuditPayload.tenant_id == AuditEvent.tenant_id)
        & (AuditPayload.leaf_index == AuditEvent.leaf_index),
        isouter=True,
    )


async def read_event(session: AsyncSession, tenant_id: str, event_id: str) -> StoredEvent:
    """The tenant's event of id ``event_id``; :class:`NotFound` if the log has none."""
    bind_tenant(session, tenant_id)
    row = (await session.execute(events_query().where(AuditEvent.event_id == event_id))).first()
    if row is None:
        raise NotFound(f"No audit event {event_id!r}.")
    return _stored(row)


async def read_events(
    session: AsyncSession,
    tenant_id: str,
    *,
    filters: EventFilter | None = None,
    after_index: int | None = None,
    limit: int = 100,
    newest_first: bool = False,
) -> list[StoredEvent]:
    """Up to ``limit`` of the tenant's events that ``filters`` keeps, in log order (or
    ``newest_first``), after the leaf ``after_index`` in that order."""
    bind_tenant(session, tenant_id)
    statement = (filters or EventFilter()).apply(events_query())
    if after_index is not None:
        statement = statement.where(
            AuditEvent.leaf_index < after_index
            if newest_first
            else AuditEvent.leaf_index > after_index
        )
    order = AuditEvent.leaf_index.desc() if newest_first else AuditEvent.leaf_index
    rows = await session.execute(statement.order_by(order).limit(limit))
    return [_stored(row) for row in rows]


def _stored(row: Any) -> StoredEvent:
    document = json.loads(row.document) if row.document is not None else None
    return StoredEvent(row.leaf_index, row.leaf_hash, row.event_id, row.action, document)
