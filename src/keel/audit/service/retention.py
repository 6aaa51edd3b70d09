"""Retention: erase the documents of expired events, keep their leaves.

Every action has a category in the catalogue (``ActionSpec.category``: ``security``,
``access``, ``change``, ``finance``...) and every category a retention period
(``KEEL_AUDIT__RETENTION_DAYS``, ``KEEL_AUDIT__DEFAULT_RETENTION_DAYS``; 0 keeps forever). An
event whose time is older than its category's period loses its document: its row of
``audit_payloads``, the one table of the log that allows DELETE, goes. Its leaf hash in
``audit_events`` stays, so every inclusion and consistency proof still verifies, and reads
and exports show the event as erased.

Each transaction that erases records one ``audit.retention.erase`` event in that same
transaction, listing the erased leaf indexes as ranges with each category's cutoff.
``keel audit verify`` accepts a missing document only where such an event covers it; the
erasure events are therefore never erased themselves. An action the catalogue no longer
knows falls under the default period (recorded with category ``null``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.audit.audit_actions import ERASE_ACTION
from keel.audit.models import AuditAction, AuditEvent, AuditPayload
from keel.audit.service.log import AUDIT_RESOURCE
from keel.core.audit import SYSTEM, builtin_action, event_time, record_event
from keel.core.db import utcnow
from keel.core.tenancy import Tenant, bind_tenant
from keel.settings import AuditSettings

if TYPE_CHECKING:
    from keel.core.context import AppContext

#: Leaf indexes one DELETE names at most: far below every driver's bound-parameter limit.
_DELETE_CHUNK = 1_000

LeafRange = tuple[int, int]
"""Leaf indexes ``first`` to ``last``, both included."""


@dataclass(frozen=True)
class RetentionPolicy:
    """Retention periods in days per action category; 0 keeps forever."""

    days: Mapping[str, int] = field(default_factory=dict)
    default_days: int = 0

    @classmethod
    def from_settings(cls, settings: AuditSettings) -> RetentionPolicy:
        return cls(dict(settings.retention_days), settings.default_retention_days)

    @property
    def keeps_everything(self) -> bool:
        return self.default_days == 0 and not any(self.days.values())

    def days_for(self, category: str | None) -> int:
        return self.default_days if category is None else self.days.get(category, self.default_days)

    def cutoff(self, category: str | None, now: datetime) -> datetime | None:
        """Events of ``category`` older than this are expired; ``None``: kept forever."""
        days = self.days_for(category)
        return None if days == 0 else now - timedelta(days=days)


@dataclass(frozen=True)
class CategoryErasure:
    """The documents of one category a retention transaction erased (or would erase)."""

    category: str | None
    retention_days: int
    cutoff: datetime
    leaf_ranges: list[LeafRange]

    @property
    def count(self) -> int:
        return sum(last - first + 1 for first, last in self.leaf_ranges)

    def to_json(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "retention_days": self.retention_days,
            "cutoff": event_time(self.cutoff),
            "erased": self.count,
            "leaf_ranges": [[first, last] for first, last in self.leaf_ranges],
        }


@dataclass(frozen=True)
class RetentionRun:
    """One retention transaction of a tenant."""

    tenant_id: str
    is_dry_run: bool
    erasures: list[CategoryErasure]
    #: The ``audit.retention.erase`` event recording it (``None``: nothing erased, or a dry run).
    event_id: str | None = None
    #: The batch size cut it short: more expired documents wait for the next transaction.
    has_more: bool = False

    @property
    def erased(self) -> int:
        return sum(erasure.count for erasure in self.erasures)

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant_id,
            "dry_run": self.is_dry_run,
            "erased": self.erased,
            "event_id": self.event_id,
            "has_more": self.has_more,
            "categories": [erasure.to_json() for erasure in self.erasures],
        }


def leaf_ranges(indexes: Iterable[int]) -> list[LeafRange]:
    """Leaf indexes as sorted inclusive ranges: ``[5, 0, 1, 2]`` -> ``[(0, 2), (5, 5)]``."""
    ranges: list[LeafRange] = []
    for index in sorted(set(indexes)):
        if ranges and ranges[-1][1] == index - 1:
            ranges[-1] = (ranges[-1][0], index)
        else:
            ranges.append((index, index))
    return ranges


def erased_ranges(data: Mapping[str, Any]) -> list[tuple[LeafRange, datetime]]:
    """The ranges an ``audit.retention.erase`` event's data covers, each with its cutoff;
    ``ValueError`` if the data is not of that shape."""
    covered = []
    try:
        for entry in data["categories"]:
            cutoff = datetime.fromisoformat(entry["cutoff"])
            for first, last in entry["leaf_ranges"]:
                if not (isinstance(first, int) and isinstance(last, int) and first <= last):
                    raise ValueError(f"bad leaf range {[first, last]!r}")
                covered.append(((first, last), cutoff))
    except (KeyError, TypeError) as error:
        raise ValueError(f"not an erasure record: {error!r}") from None
    return covered


async def erase_expired(
    session: AsyncSession,
    tenant_id: str,
    policy: RetentionPolicy,
    *,
    now: datetime | None = None,
    limit: int = 10_000,
    dry_run: bool = False,
) -> RetentionRun:
    """Erase (at most ``limit``, oldest first per category) the documents of the tenant's
    expired events on ``session``, and record the erasure there; nothing commits here.

    A dry run finds the same documents and changes nothing.
    """
    now = now or utcnow()
    bind_tenant(session, tenant_id)
    if policy.keeps_everything:
        return RetentionRun(tenant_id, dry_run, [])
    # No event is expired unless older than the shortest period.
    shortest = min(days for days in (*policy.days.values(), policy.default_days) if days)
    actions = await session.scalars(
        select(AuditEvent.action)
        .distinct()
        .where(AuditEvent.time < now - timedelta(days=shortest), AuditEvent.action != ERASE_ACTION)
    )
    by_category: dict[str | None, list[str]] = {}
    for action, category in (await _categories(session, list(actions))).items():
        by_category.setdefault(category, []).append(action)

    found: list[tuple[str | None, datetime, list[int]]] = []
    remaining = limit
    has_more = False
    for category in sorted(by_category, key=lambda name: name or ""):
        cutoff = policy.cutoff(category, now)
        if cutoff is None:
            continue
        indexes = list(
            await session.scalars(
                select(AuditEvent.leaf_index)
                .join(
                    AuditPayload,
                    (AuditPayload.tenant_id == AuditEvent.tenant_id)
                    & (AuditPayload.leaf_index == AuditEvent.leaf_index),
                )
                .where(AuditEvent.action.in_(by_category[category]), AuditEvent.time < cutoff)
                .order_by(AuditEvent.leaf_index)
                .limit(remaining + 1)  # one more tells whether the limit cut it short
            )
        )
        if len(indexes) > remaining:
            has_more, indexes = True, indexes[:remaining]
        remaining -= len(indexes)
        if indexes:
            found.append((category, cutoff, indexes))

    if not dry_run and found:
        erased = await _delete_payloads(
            session, tenant_id, [i for _, _, indexes in found for i in indexes]
        )
        # Only what this transaction deleted: a concurrent run may have taken some first.
        found = [
            (category, cutoff, [i for i in indexes if i in erased])
            for category, cutoff, indexes in found
        ]
        found = [entry for entry in found if entry[2]]
    erasures = [
        CategoryErasure(category, policy.days_for(category), cutoff, leaf_ranges(indexes))
        for category, cutoff, indexes in found
    ]
    if dry_run or not erasures:
        return RetentionRun(tenant_id, dry_run, erasures, has_more=has_more)
    document = record_event(
        session,
        tenant_id=tenant_id,
        action=ERASE_ACTION,
        actor=SYSTEM,
        target_type="audit_log",
        target_id=tenant_id,
        data={
            "erased": sum(erasure.count for erasure in erasures),
            "categories": [erasure.to_json() for erasure in erasures],
        },
    )
    return RetentionRun(tenant_id, dry_run, erasures, document["id"], has_more)


async def run_retention(
    context: AppContext,
    *,
    tenant_id: str | None = None,
    dry_run: bool = False,
    now: datetime | None = None,
) -> list[RetentionRun]:
    """Apply the retention periods of ``context.settings.audit`` to one tenant or to all.

    What the daily background task calls. Each transaction erases at most
    ``retention_batch_size`` documents and records its ``audit.retention.erase`` event; a
    tenant's backlog takes as many as it needs. After each, the tenant's outbox is sequenced
    (when the audit service runs in this process) so the erasure is in the log at once.
    Returns the transactions run, per tenant in order; a dry run runs one per tenant.
    """
    settings = context.settings.audit
    policy = RetentionPolicy.from_settings(settings)
    now = now or utcnow()
    if tenant_id is not None:
        tenants = [tenant_id]
    else:
        async with context.database.session() as session:
            tenants = list(await session.scalars(select(Tenant.id).order_by(Tenant.slug)))
    audit = context.resources.get(AUDIT_RESOURCE)
    runs = []
    for tenant in tenants:
        while True:
            async with context.database.session() as session:
                run = await erase_expired(
                    session,
                    tenant,
                    policy,
                    now=now,
                    limit=settings.retention_batch_size,
                    dry_run=dry_run,
                )
            runs.append(run)
            if run.event_id is not None and audit is not None:
                await audit.sequence_outbox(tenant)
            if dry_run or not run.has_more or not run.erased:
                break
    return runs


async def _categories(session: AsyncSession, actions: list[str]) -> dict[str, str | None]:
    """The catalogue category of each action: Keel's own, else the tenant's registration,
    else ``None`` (an action no longer in the catalogue)."""
    own = {
        name: category
        for name, category in await session.execute(select(AuditAction.name, AuditAction.category))
    }
    categories: dict[str, str | None] = {}
    for action in actions:
        spec = builtin_action(action)
        categories[action] = spec.category if spec is not None else own.get(action)
    return categories


async def _delete_payloads(session: AsyncSession, tenant_id: str, indexes: list[int]) -> set[int]:
    deleted: set[int] = set()
    for start in range(0, len(indexes), _DELETE_CHUNK):
        chunk = indexes[start : start + _DELETE_CHUNK]
        result = await session.execute(
            delete(AuditPayload)
            # (The session's tenant scope adds this too; a DELETE says it itself.)
            .where(AuditPayload.tenant_id == tenant_id, AuditPayload.leaf_index.in_(chunk))
            .returning(AuditPayload.leaf_index)
            .execution_options(synchronize_session=False)
        )
        deleted.update(result.scalars())
    return deleted
