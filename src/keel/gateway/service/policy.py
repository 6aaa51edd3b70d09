"""A tenant's edge policy: read it, write a new revision, list and read revisions, roll back.

A write validates the whole document (:mod:`.validation`), then moves the head's revision on
with a compare-and-set (``UPDATE ... WHERE revision = :read``) and adds the immutable revision
row, its change event (stream ``gateway``, subject ``policy``, data ``{"revision": n}``) and
its audit event (``gateway.policy.update``: counts and comment, never the document) in the
caller's unit of work. A write that loses the race to another writer builds its document
again from the newer policy (so two route changes at once both land), unless it named the
revision it read in ``If-Match``: then it fails with 412.

Writes are idempotent: a document equal to the current policy (after validation, so key order
and defaults do not count) makes no revision and answers the current one (``created`` false).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.audit import Actor, record_event
from keel.core.changes import record_change
from keel.core.db import utcnow
from keel.core.errors import Conflict, NotFound, PreconditionFailed, ValidationFailed
from keel.core.http import check_if_match
from keel.core.tenancy import bind_tenant
from keel.gateway.models import GatewayPolicy, GatewayPolicyRevision
from keel.gateway.service.validation import CheckedPolicy, UpstreamAddressRules, check_policy
from keel_client.edge._model import EdgePolicy

#: The change stream of policy changes; its one subject is :data:`POLICY_SUBJECT`.
GATEWAY_STREAM = "gateway"
POLICY_SUBJECT = "policy"
MAX_COMMENT_LENGTH = 2000
#: Attempts of a write that keeps losing the compare-and-set to concurrent writers.
_WRITE_ATTEMPTS = 5


@dataclass(frozen=True)
class PolicySnapshot:
    """The policy at one revision (0: the tenant never wrote one; the empty policy)."""

    revision: int
    policy: EdgePolicy
    updated_at: datetime | None


@dataclass(frozen=True)
class WriteOutcome:
    """The policy after a write. ``created`` is false when the document equalled the current
    policy (no revision was made); ``warnings`` are what was accepted but noticed (a host name
    that did not resolve)."""

    snapshot: PolicySnapshot
    created: bool
    warnings: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class RevisionInfo:
    """One stored revision: its document and who wrote it when."""

    revision: int
    document: dict[str, Any]
    comment: str
    created_by: str
    created_at: datetime


#: Builds the new document from the current policy (re-run if another writer got there first).
DocumentBuilder = Callable[[EdgePolicy], Awaitable[dict[str, Any]] | dict[str, Any]]


async def current_revision(session: AsyncSession, tenant_id: str) -> tuple[int, datetime | None]:
    """The current revision number and when it was written: one small query, the ETag."""
    bind_tenant(session, tenant_id)
    row = (await session.execute(select(GatewayPolicy.revision, GatewayPolicy.updated_at))).first()
    if row is None:
        return 0, None
    return int(row[0]), row[1]


async def read_policy(session: AsyncSession, tenant_id: str) -> PolicySnapshot:
    """The tenant's current policy (revision 0 and the empty policy when it has none)."""
    revision, updated_at = await current_revision(session, tenant_id)
    if revision == 0:
        return PolicySnapshot(0, EdgePolicy(), None)
    document = await _document_of(session, revision)
    return PolicySnapshot(revision, _stored_policy(document), updated_at)


async def validate_policy(document: Any, *, rules: UpstreamAddressRules) -> CheckedPolicy:
    """A dry run of :func:`write_policy`'s checks: the policy and warnings, or the 422."""
    return await check_policy(document, rules)


async def write_policy(
    session: AsyncSession,
    tenant_id: str,
    document: Mapping[str, Any],
    *,
    actor: Actor,
    if_match: str | int | None = None,
    comment: str = "",
    rules: UpstreamAddressRules | None = None,
) -> WriteOutcome:
    """Replace the tenant's policy with ``document`` as a new revision (see the module)."""
    replacement = dict(document)
    return await write_built_policy(
        session,
        tenant_id,
        lambda _current: replacement,
        actor=actor,
        if_match=if_match,
        comment=comment,
        rules=rules,
        audit={"operation": "replace"},
    )


async def write_built_policy(
    session: AsyncSession,
    tenant_id: str,
    build: DocumentBuilder,
    *,
    actor: Actor,
    if_match: str | int | None,
    comment: str,
    rules: UpstreamAddressRules | None,
    audit: Mapping[str, Any],
    action: str = "gateway.policy.update",
) -> WriteOutcome:
    """The one write path: ``build`` the document from the current policy, check it, store it
    as the next revision. ``audit`` adds to the audit event's data (what kind of change)."""
    _check_comment(comment)
    rules = rules or UpstreamAddressRules.default()
    bind_tenant(session, tenant_id)
    for _ in range(_WRITE_ATTEMPTS):
        current = await read_policy(session, tenant_id)
        _check_if_match(if_match, current.revision)
        built = build(current.policy)
        document = await built if isinstance(built, Awaitable) else built
        checked = await check_policy(document, rules)
        stored = _stored_document(checked.policy)
        if stored == _stored_document(current.policy):
            return WriteOutcome(current, created=False, warnings=checked.warnings)
        number = current.revision + 1
        now = utcnow()
        if await _move_head(session, tenant_id, current.revision, number, now):
            break
        # Another writer moved the policy on: build again from it (a named revision now fails).
    else:
        raise Conflict("The policy is changing too often; try again.")
    session.add(
        GatewayPolicyRevision(
            tenant_id=tenant_id,
            revision=number,
            document=stored,
            comment=comment,
            created_by=actor_name(actor),
            created_at=now,
        )
    )
    await _flush_or_precondition(session)
    record_event(
        session,
        tenant_id=tenant_id,
        action=action,
        actor=actor,
        target_type="gateway_policy",
        target_id=POLICY_SUBJECT,
        data={
            "revision": number,
            "routes": len(checked.policy.routes),
            "upstreams": len(checked.policy.upstreams),
            "comment": comment,
            **audit,
        },
        reason=comment or None,
    )
    record_change(session, tenant_id, GATEWAY_STREAM, POLICY_SUBJECT, {"revision": number})
    snapshot = PolicySnapshot(number, checked.policy, now)
    return WriteOutcome(snapshot, created=True, warnings=checked.warnings)


async def list_revisions(
    session: AsyncSession, tenant_id: str, limit: int = 50, before: int | None = None
) -> list[RevisionInfo]:
    """The revisions, newest first: at most ``limit``, older than ``before`` when given."""
    bind_tenant(session, tenant_id)
    statement = select(GatewayPolicyRevision).order_by(GatewayPolicyRevision.revision.desc())
    if before is not None:
        statement = statement.where(GatewayPolicyRevision.revision < before)
    rows = await session.scalars(statement.limit(max(1, min(limit, 500))))
    return [_info(row) for row in rows]


async def read_revision(session: AsyncSession, tenant_id: str, revision: int) -> RevisionInfo:
    bind_tenant(session, tenant_id)
    row = await session.scalar(
        select(GatewayPolicyRevision).where(GatewayPolicyRevision.revision == revision)
    )
    if row is None:
        raise NotFound(f"No revision {revision} of the gateway policy.")
    return _info(row)


async def rollback(
    session: AsyncSession,
    tenant_id: str,
    to_revision: int,
    *,
    actor: Actor,
    if_match: str | int | None = None,
    comment: str = "",
    rules: UpstreamAddressRules | None = None,
) -> WriteOutcome:
    """A new revision holding the document of ``to_revision``, checked against today's rules
    (an upstream address blocked since is refused, as a new write would be)."""
    target = await read_revision(session, tenant_id, to_revision)
    return await write_built_policy(
        session,
        tenant_id,
        lambda _current: dict(target.document),
        actor=actor,
        if_match=if_match,
        comment=comment or f"rollback to revision {to_revision}",
        rules=rules,
        audit={"operation": "rollback", "to_revision": to_revision},
        action="gateway.policy.rollback",
    )


def actor_name(actor: Actor) -> str:
    """``<type>:<id>``, as a revision's ``created_by`` names its writer."""
    return f"{actor.type or 'unknown'}:{actor.id or 'unknown'}"[:200]


# -- helpers --------------------------------------------------------------------------------


def _check_comment(comment: str) -> None:
    if len(comment) > MAX_COMMENT_LENGTH:
        raise ValidationFailed(f"A comment is at most {MAX_COMMENT_LENGTH} characters.")


def _check_if_match(if_match: str | int | None, revision: int) -> None:
    if isinstance(if_match, int):
        if if_match != revision:
            raise PreconditionFailed(
                "The policy changed since it was read.", current_etag=f'"{revision}"'
            )
        return
    check_if_match(if_match, revision, required=False)


def _stored_document(policy: EdgePolicy) -> dict[str, Any]:
    """The policy as stored and compared: JSON types, key order fixed."""
    document: dict[str, Any] = json.loads(
        json.dumps(policy.model_dump(mode="json"), sort_keys=True)
    )
    return document


def _stored_policy(document: dict[str, Any]) -> EdgePolicy:
    # Cross-checks passed when it was written; reading skips them (a read stays cheap).
    return EdgePolicy.model_validate(document, context={"cross_checks": False})


async def _document_of(session: AsyncSession, revision: int) -> dict[str, Any]:
    document = await session.scalar(
        select(GatewayPolicyRevision.document).where(GatewayPolicyRevision.revision == revision)
    )
    if document is None:
        raise NotFound(f"No revision {revision} of the gateway policy.")
    return dict(document)


async def _move_head(
    session: AsyncSession, tenant_id: str, read: int, number: int, now: datetime
) -> bool:
    """Compare-and-set the head from ``read`` to ``number`` (creating it for the first write);
    False when another writer moved it first."""
    if read == 0:
        exists = await session.scalar(select(GatewayPolicy.id))
        if exists is not None:
            return False
        session.add(GatewayPolicy(tenant_id=tenant_id, revision=number, updated_at=now))
        await _flush_or_precondition(session)
        return True
    moved = await session.execute(
        update(GatewayPolicy)
        .where(GatewayPolicy.revision == read)
        .values(revision=number, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return getattr(moved, "rowcount", 0) == 1


async def _flush_or_precondition(session: AsyncSession) -> None:
    """Flush; a unique key lost to a concurrent first write is a 412 (read again)."""
    try:
        await session.flush()
    except IntegrityError:
        raise PreconditionFailed("The policy changed since it was read.") from None


def _info(row: GatewayPolicyRevision) -> RevisionInfo:
    return RevisionInfo(
        revision=row.revision,
        document=dict(row.document),
        comment=row.comment,
        created_by=row.created_by,
        created_at=row.created_at,
    )
