"""The gateway service's tables: a tenant's edge policy as immutable revisions, and a head row.

The policy is one document (``keel_client.edge._model.EdgePolicy``) per tenant. Every change
is a new row of ``gateway_policy_revisions`` holding the whole document, so history and
rollback read one row each. ``gateway_policies`` holds the current revision number: the
policy's ETag, moved on by a compare-and-set so two writers never make the same revision.
A tenant without a head row has revision 0 and the empty policy.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Integer, PrimaryKeyConstraint, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from keel.core.db import Base, UTCDateTime, utcnow
from keel.core.ids import new_id
from keel.core.tenancy import TenantScoped


class GatewayPolicy(TenantScoped, Base):
    """A tenant's current policy revision (the head of its history)."""

    __tablename__ = "gateway_policies"
    __table_args__ = (UniqueConstraint("tenant_id", name="uq_gateway_policies_tenant"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    #: The number of the current revision: the policy's ETag.
    revision: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class GatewayPolicyRevision(TenantScoped, Base):
    """One immutable revision of a tenant's policy: the whole document and who wrote it."""

    __tablename__ = "gateway_policy_revisions"
    __table_args__ = (
        PrimaryKeyConstraint("tenant_id", "revision", name="pk_gateway_policy_revisions"),
    )

    #: 1 for the tenant's first policy, then one more per change.
    revision: Mapped[int] = mapped_column(Integer)
    #: The validated policy as ``EdgePolicy.model_dump(mode="json")``.
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    comment: Mapped[str] = mapped_column(Text, default="")
    #: ``<principal type>:<id>`` of the writer (``system:keel`` for the CLI).
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
