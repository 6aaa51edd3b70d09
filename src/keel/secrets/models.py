"""The secrets service's tables: mounts, secrets (their metadata) and sealed versions.

A version's value never reaches the database in the clear: ``sealed`` is the JSON of its data
encrypted with a data key of its own (AES-256-GCM), the data key wrapped by the master key
(see :mod:`keel.core.crypto`); the associated data binds it to its tenant, mount, path and
version, so a ciphertext copied to another row does not open.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from keel.core.db import Base, UTCDateTime, utcnow
from keel.core.ids import new_id
from keel.core.tenancy import TenantScoped

MAX_POLICY_BYTES = 64 * 1024


class SecretMount(TenantScoped, Base):
    """A KV version 2 engine mounted at ``path`` (``secret`` exists from the first use)."""

    __tablename__ = "secrets_mounts"
    __table_args__ = (UniqueConstraint("tenant_id", "path", name="uq_secrets_mounts_path"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    path: Mapped[str] = mapped_column(String(128))
    description: Mapped[str] = mapped_column(Text, default="")
    #: Engine configuration (``config`` endpoint): versions kept, CAS required, auto-delete.
    max_versions: Mapped[int] = mapped_column(Integer, default=0)
    cas_required: Mapped[bool] = mapped_column(Boolean, default=False)
    delete_version_after_s: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Secret(TenantScoped, Base):
    """A path of a mount: its metadata, and the versions below it."""

    __tablename__ = "secrets_secrets"
    __table_args__ = (
        UniqueConstraint("tenant_id", "mount_id", "path", name="uq_secrets_secrets_path"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    mount_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("secrets_mounts.id", ondelete="CASCADE")
    )
    path: Mapped[str] = mapped_column(String(512))
    current_version: Mapped[int] = mapped_column(Integer, default=0)
    oldest_version: Mapped[int] = mapped_column(Integer, default=0)
    max_versions: Mapped[int] = mapped_column(Integer, default=0)
    cas_required: Mapped[bool] = mapped_column(Boolean, default=False)
    delete_version_after_s: Mapped[int] = mapped_column(Integer, default=0)
    custom_metadata: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SecretVersion(TenantScoped, Base):
    __tablename__ = "secrets_versions"
    __table_args__ = (UniqueConstraint("secret_id", "version", name="uq_secrets_versions_version"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    secret_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("secrets_secrets.id", ondelete="CASCADE")
    )
    version: Mapped[int] = mapped_column(Integer)
    #: None once destroyed.
    sealed: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: Soft deletion (undeletable); also set ahead of time by ``delete_version_after``.
    deletion_time: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    destroyed: Mapped[bool] = mapped_column(Boolean, default=False)


class SecretPolicy(TenantScoped, Base):
    __tablename__ = "secrets_policies"
    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_secrets_policies_name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64))
    #: The policy as sent (HCL or JSON), answered back on read.
    text: Mapped[str] = mapped_column(Text)
    #: ``[[pattern, [capability, ...]], ...]``, parsed once.
    rules: Mapped[list[Any]] = mapped_column(JSON)
