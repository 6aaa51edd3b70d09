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
    Index,
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
    #: ``kv`` (version 2) or ``database`` (dynamic credentials).
    type: Mapped[str] = mapped_column(String(16), default="kv", server_default="kv")
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


class SecretRotation(TenantScoped, Base):
    """A secret's rotation policy: every ``interval_s`` a new version with one field renewed.

    The new value comes from the generator (``length`` characters of ``alphabet``) or from a
    registered rotation hook named by ``hook``.
    """

    __tablename__ = "secrets_rotations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    secret_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("secrets_secrets.id", ondelete="CASCADE"), unique=True
    )
    #: The field of the secret's data that rotation renews.
    field: Mapped[str] = mapped_column(String(128))
    interval_s: Mapped[int] = mapped_column(Integer)
    length: Mapped[int] = mapped_column(Integer, default=32)
    #: A named alphabet (``alphanumeric``, ``hex``...) or the characters themselves.
    alphabet: Mapped[str] = mapped_column(String(256), default="alphanumeric")
    hook: Mapped[str | None] = mapped_column(String(64), nullable=True)
    next_rotation_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    last_rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: The last failure of a hook, kept for ``GET`` (never a value).
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)


class DatabaseConnection(TenantScoped, Base):
    """A database a ``database`` mount creates credentials in (Vault's ``config/<name>``)."""

    __tablename__ = "secrets_db_connections"
    __table_args__ = (
        UniqueConstraint("tenant_id", "mount_id", "name", name="uq_secrets_db_connections_name"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    mount_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("secrets_mounts.id", ondelete="CASCADE")
    )
    name: Mapped[str] = mapped_column(String(128))
    plugin_name: Mapped[str] = mapped_column(String(64))
    #: With ``{{username}}`` and ``{{password}}`` placeholders, as Vault takes it.
    connection_url: Mapped[str] = mapped_column(Text)
    username: Mapped[str] = mapped_column(String(128), default="")
    #: The administrative password, sealed; never answered back.
    password_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    allowed_roles: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DatabaseRole(TenantScoped, Base):
    """How a ``database`` mount creates and revokes one kind of credential (``roles/<name>``)."""

    __tablename__ = "secrets_db_roles"
    __table_args__ = (
        UniqueConstraint("tenant_id", "mount_id", "name", name="uq_secrets_db_roles_name"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    mount_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("secrets_mounts.id", ondelete="CASCADE")
    )
    name: Mapped[str] = mapped_column(String(128))
    db_name: Mapped[str] = mapped_column(String(128))
    creation_statements: Mapped[list[str]] = mapped_column(JSON, default=list)
    revocation_statements: Mapped[list[str]] = mapped_column(JSON, default=list)
    renew_statements: Mapped[list[str]] = mapped_column(JSON, default=list)
    default_ttl_s: Mapped[int] = mapped_column(Integer, default=3600)
    max_ttl_s: Mapped[int] = mapped_column(Integer, default=86400)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Lease(TenantScoped, Base):
    """A dynamic credential handed out: revoked on request, or by the sweeper once expired.

    The password is never stored; the lease keeps what revocation needs (the user name and
    where it lives).
    """

    __tablename__ = "secrets_leases"
    __table_args__ = (Index("ix_secrets_leases_due", "revoked_at", "expires_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    #: Vault's form, ``<mount>/creds/<role>/<random>``.
    lease_id: Mapped[str] = mapped_column(String(400), unique=True)
    mount_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("secrets_mounts.id", ondelete="CASCADE")
    )
    role_name: Mapped[str] = mapped_column(String(128))
    db_name: Mapped[str] = mapped_column(String(128))
    username: Mapped[str] = mapped_column(String(128))
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: No renewal goes past this.
    max_expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoke_attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: After a failed revocation: the sweeper's next attempt, not before (backoff).
    retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
