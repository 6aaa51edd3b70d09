"""The one internal audit recorder every Keel service writes through.

``record_event(session, ...)`` turns a change into an audit event document and keeps it on
the caller's session; when that session commits, the documents are inserted into the audit
outbox (``audit_outbox``) *in the same transaction*, so an event exists exactly when the change
it records does. The audit service (``keel.audit``) then sequences outbox rows into its
tamper-evident log: leaf indexes, Merkle tree, signed tree heads. A rolled-back unit of work
leaves no event behind.

Every action comes from a catalogue (``register_actions``): an unknown action is a programming
error and raises. Event data passes the log redaction, and fields the catalogue marks
sensitive are replaced before anything is stored: secrets, tokens and passwords never reach
the audit trail.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import structlog
from sqlalchemy import BigInteger, Integer, LargeBinary, String, event, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, Session, mapped_column

from keel.core.db import Base, UTCDateTime, utcnow
from keel.core.ids import new_id
from keel.core.logging import REDACTED, redact
from keel.core.tenancy import bound_tenant
from keel_client.audit import canonical_json
from keel_client.auth import Principal

#: Version of the event document's shape, stored in every event.
SCHEMA_VERSION = 1
ACTION_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,39}(\.[a-z][a-z0-9_]{0,39}){2}$")


@dataclass(frozen=True)
class Actor:
    """Who performs an operation, for the audit trail."""

    type: str | None = None
    id: str | None = None
    ip_address: str | None = None
    user_agent: str | None = None
    display: str | None = None

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


class Sensitivity(StrEnum):
    public = "public"
    internal = "internal"
    confidential = "confidential"
    restricted = "restricted"


@dataclass(frozen=True)
class ActionSpec:
    """An entry of the action catalogue: ``service.resource.verb``."""

    name: str
    description: str
    #: Retention is set per category (``security``, ``access``, ``change``, ``finance``...).
    category: str = "change"
    sensitivity: Sensitivity = Sensitivity.internal
    #: Keys of ``data`` replaced by ``[REDACTED]`` before the event is stored.
    sensitive_fields: frozenset[str] = field(default_factory=frozenset)


#: The actions Keel's own services record, registered by each service at import.
_CATALOGUE: dict[str, ActionSpec] = {}


def register_actions(*specs: ActionSpec) -> None:
    for spec in specs:
        if not ACTION_PATTERN.fullmatch(spec.name):
            raise ValueError(f"{spec.name!r} is not service.resource.verb")
        _CATALOGUE[spec.name] = spec


def builtin_action(name: str) -> ActionSpec | None:
    return _CATALOGUE.get(name)


def builtin_actions() -> list[ActionSpec]:
    return sorted(_CATALOGUE.values(), key=lambda spec: spec.name)


class AuditOutbox(Base):
    """Committed events waiting to be sequenced into the log (insert, then delete once in)."""

    __tablename__ = "audit_outbox"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    tenant_id: Mapped[str] = mapped_column(String(36), index=True)
    event_id: Mapped[str] = mapped_column(String(64))
    document: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


def event_time(moment: datetime) -> str:
    """RFC 3339 UTC with microseconds: the one time format of event documents."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def build_document(
    *,
    tenant_id: str,
    action: str,
    spec: ActionSpec,
    event_id: str | None = None,
    time: datetime | None = None,
    outcome: str = Outcome.success,
    actor: dict[str, Any] | None = None,
    target: dict[str, Any] | None = None,
    reason: str | None = None,
    request_id: str | None = None,
    trace_id: str | None = None,
    sensitivity: str | None = None,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The event document as stored and hashed: absent fields omitted, data redacted."""
    clean = redact(data or {})
    for key in spec.sensitive_fields & clean.keys():
        clean[key] = REDACTED
    document: dict[str, Any] = {
        "id": event_id or new_id(),
        "time": event_time(time or utcnow()),
        "tenant": tenant_id,
        "action": action,
        "outcome": str(outcome),
        "sensitivity": str(sensitivity or spec.sensitivity),
        "schema_version": SCHEMA_VERSION,
        "data": clean,
    }
    optional = {
        "actor": _without_none(actor),
        "target": _without_none(target),
        "reason": reason,
        "request_id": request_id,
        "trace_id": trace_id,
    }
    document.update({key: value for key, value in optional.items() if value})
    return document


def _without_none(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if not value:
        return None
    return {key: item for key, item in value.items() if item is not None} or None


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
) -> dict[str, Any]:
    """Keep an audit event on ``session``; it is stored when, and only if, the session commits.

    ``actor`` fills the actor fields and address; an explicit ``actor_type``, ``actor_id`` or
    ``ip_address`` wins over it. Returns the event document.
    """
    spec = _CATALOGUE.get(action)
    if spec is None:
        raise ValueError(f"audit action {action!r} is not in the catalogue")
    if bound_tenant(session) not in (None, tenant_id):
        raise ValueError("an audit event must belong to the session's tenant")
    actor = actor or Actor()
    context = structlog.contextvars.get_contextvars()
    document = build_document(
        tenant_id=tenant_id,
        action=action,
        spec=spec,
        outcome=outcome,
        actor={
            "type": actor_type or actor.type,
            "id": actor_id or actor.id,
            "display": actor.display,
            "ip": ip_address or actor.ip_address,
            "user_agent": actor.user_agent,
        },
        target={"type": target_type, "id": target_id},
        reason=reason,
        request_id=context.get("request_id"),
        trace_id=context.get("trace_id"),
        data=data,
    )
    session.sync_session.info.setdefault(_PENDING, []).append(document)
    return document


_PENDING = "keel.audit.pending"
#: Called after a commit that stored events, with the tenants they belong to.
_on_recorded: list[Callable[[set[str]], None]] = []


def on_recorded(callback: Callable[[set[str]], None]) -> Callable[[], None]:
    """Be told (synchronously, keep it short) after a commit stored events; returns an undo."""
    _on_recorded.append(callback)
    return lambda: _on_recorded.remove(callback)


def outbox_rows(documents: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "tenant_id": document["tenant"],
            "event_id": document["id"],
            "document": canonical_json(document),
            "created_at": utcnow(),
        }
        for document in documents
    ]


@event.listens_for(Session, "before_commit")
def _store_pending_events(session: Session) -> None:
    documents = session.info.pop(_PENDING, None)
    if documents:
        session.connection().execute(insert(AuditOutbox), outbox_rows(documents))
        session.info["keel.audit.tenants"] = {document["tenant"] for document in documents}


@event.listens_for(Session, "after_commit")
def _announce_stored_events(session: Session) -> None:
    tenants = session.info.pop("keel.audit.tenants", None)
    if tenants:
        for callback in list(_on_recorded):
            callback(tenants)


@event.listens_for(Session, "after_rollback")
def _forget_pending_events(session: Session) -> None:
    session.info.pop(_PENDING, None)
    session.info.pop("keel.audit.tenants", None)
