"""The config service's tables: applications, their environments and immutable revisions.

Every revision keeps the environment's whole snapshot of values (capped at
``MAX_SNAPSHOT_BYTES``), so history, diff and rollback read one row each and never replay a
chain of changes. A revision is never updated: a rollback or a promotion is a new revision.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from keel.core.db import Base, UTCDateTime, utcnow
from keel.core.ids import new_id
from keel.core.tenancy import TenantScoped


class ConfigApplication(TenantScoped, Base):
    """An application of a tenant (``billing``): its environments and optional JSON Schema."""

    __tablename__ = "config_applications"
    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_config_applications_name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(63))
    description: Mapped[str] = mapped_column(Text, default="")
    #: The JSON Schema every environment's snapshot must satisfy (``None``: anything goes).
    json_schema: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    #: Bumped by every change of the application itself: its ETag, checked by ``If-Match``.
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ConfigEnvironment(TenantScoped, Base):
    """An environment of an application (``production``) and its current revision."""

    __tablename__ = "config_environments"
    __table_args__ = (
        UniqueConstraint("tenant_id", "application_id", "name", name="uq_config_environments_name"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    application_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("config_applications.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(63))
    #: The number of the current revision: the environment's ETag.
    revision: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ConfigRevision(TenantScoped, Base):
    """One immutable revision of an environment: the whole snapshot and what changed."""

    __tablename__ = "config_revisions"
    __table_args__ = (
        UniqueConstraint("environment_id", "number", name="uq_config_revisions_number"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    environment_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("config_environments.id", ondelete="CASCADE")
    )
    #: 1 for the environment's creation (no values), then one more per change set.
    number: Mapped[int] = mapped_column(Integer)
    #: The environment's values at this revision (secret references stay references).
    values: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: ``{"set": [keys], "unset": [keys]}``: names only.
    changes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: ``create``, ``write``, ``rollback`` or ``promote``.
    operation: Mapped[str] = mapped_column(String(16))
    #: Where the values came from: ``revision 3`` (rollback), ``staging@7`` (promotion).
    source: Mapped[str | None] = mapped_column(String(200), nullable=True)
    message: Mapped[str] = mapped_column(Text, default="")
    author_type: Mapped[str | None] = mapped_column(String(32), nullable=True)
    author_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
