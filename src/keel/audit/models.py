"""The audit log's tables: leaves, payloads, tree nodes, signed heads, keys and actions.

``audit_events``, ``audit_nodes`` and ``audit_tree_heads`` are append-only: on PostgreSQL a
trigger refuses UPDATE and DELETE on them, and Keel's runtime role needs neither privilege.
An event's document lives apart in ``audit_payloads`` so that retention can erase it (a
DELETE there) while its leaf hash, and so every proof, stays.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    UniqueConstraint,
    event,
)
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.schema import DDL

from keel.core.db import Base, UTCDateTime, utcnow
from keel.core.tenancy import TenantScoped

_BIGINT = BigInteger().with_variant(Integer, "sqlite")


def _tenant_key() -> Mapped[str]:
    """``tenant_id`` as the first column of the primary key: a log is per tenant."""
    return mapped_column(
        String(36), ForeignKey("tenants.id", ondelete="RESTRICT"), primary_key=True
    )


class AuditEvent(TenantScoped, Base):
    """A leaf of a tenant's Merkle tree, with the fields queries filter on."""

    __tablename__ = "audit_events"
    __table_args__ = (
        UniqueConstraint("tenant_id", "event_id"),
        Index("ix_audit_events_tenant_time", "tenant_id", "time"),
        Index("ix_audit_events_tenant_action", "tenant_id", "action"),
    )

    tenant_id: Mapped[str] = _tenant_key()

    leaf_index: Mapped[int] = mapped_column(_BIGINT, primary_key=True, autoincrement=False)
    event_id: Mapped[str] = mapped_column(String(64))
    time: Mapped[datetime] = mapped_column(UTCDateTime)
    action: Mapped[str] = mapped_column(String(128))
    outcome: Mapped[str] = mapped_column(String(10))
    sensitivity: Mapped[str] = mapped_column(String(12))
    actor_type: Mapped[str | None] = mapped_column(String(40), nullable=True)
    actor_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    target_type: Mapped[str | None] = mapped_column(String(60), nullable=True)
    target_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    leaf_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    #: SHA-256 of the event as its appender sent it: a retry with the same id must match it
    #: (the stored document may differ, when the catalogue's redaction changed in between).
    request_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    sequenced_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditPayload(TenantScoped, Base):
    """The canonical JSON document of an event (RFC 8785): its leaf is SHA-256(0x00 || this)."""

    __tablename__ = "audit_payloads"

    tenant_id: Mapped[str] = _tenant_key()

    leaf_index: Mapped[int] = mapped_column(_BIGINT, primary_key=True, autoincrement=False)
    document: Mapped[bytes] = mapped_column(LargeBinary)


class AuditNode(TenantScoped, Base):
    """The hash of a perfect subtree of 2**level leaves (level >= 1) starting at index*2**level."""

    __tablename__ = "audit_nodes"

    tenant_id: Mapped[str] = _tenant_key()

    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    index: Mapped[int] = mapped_column(_BIGINT, primary_key=True, autoincrement=False)
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class AuditTreeHead(TenantScoped, Base):
    """A signed tree head: the tenant's tree size and root at a time, signed with Ed25519."""

    __tablename__ = "audit_tree_heads"
    __table_args__ = (Index("ix_audit_tree_heads_tenant_size", "tenant_id", "tree_size"),)

    id: Mapped[int] = mapped_column(_BIGINT, primary_key=True, autoincrement=True)
    tree_size: Mapped[int] = mapped_column(BigInteger)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    timestamp: Mapped[int] = mapped_column(BigInteger)  # milliseconds since the epoch
    key_id: Mapped[str] = mapped_column(String(64))
    signature: Mapped[bytes] = mapped_column(LargeBinary(64))


class AuditSigningKey(Base):
    """The log's Ed25519 keys (platform-wide); the private key sealed by the keyring."""

    __tablename__ = "audit_signing_keys"

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary(32))
    private_key_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditAction(TenantScoped, Base):
    """An action a tenant's own services may record (Keel's own are in the code catalogue)."""

    __tablename__ = "audit_actions"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[int] = mapped_column(_BIGINT, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    description: Mapped[str] = mapped_column(String(500))
    category: Mapped[str] = mapped_column(String(40))
    sensitivity: Mapped[str] = mapped_column(String(12))
    sensitive_fields: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


#: Tables no one may change or delete from: the log itself.
APPEND_ONLY_TABLES = ("audit_events", "audit_nodes", "audit_tree_heads")


def append_only_statements(dialect: str) -> list[str]:
    """Triggers refusing UPDATE and DELETE (and TRUNCATE) on the log's tables.

    They guard against mistakes and casual edits; someone who can drop a trigger can still
    write to the tables directly, which is what the Merkle tree and ``keel audit verify``
    catch.
    """
    if dialect == "postgresql":
        function = (
            "CREATE OR REPLACE FUNCTION keel_audit_append_only() RETURNS trigger "
            "LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION "
            "'the audit log is append-only: % on % refused', TG_OP, TG_TABLE_NAME "
            "USING ERRCODE = 'insufficient_privilege'; END $$"
        )
        return [function] + [
            statement
            for table in APPEND_ONLY_TABLES
            for statement in (
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION keel_audit_append_only()",
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION keel_audit_append_only()",
            )
        ]
    if dialect == "sqlite":
        return [
            f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
            f"BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: {verb} on {table} "
            "refused'); END"
            for table in APPEND_ONLY_TABLES
            for verb in ("UPDATE", "DELETE")
        ]
    return []


def _install_append_only_triggers() -> None:
    """Create the triggers with the tables (``create_all`` builds a new embedded database)."""
    for dialect in ("postgresql", "sqlite"):
        statements = append_only_statements(dialect)
        shared = [s for s in statements if " ON " not in s]  # the PostgreSQL function
        for table in APPEND_ONLY_TABLES:
            for statement in shared + [s for s in statements if f" ON {table} " in s]:
                event.listen(
                    Base.metadata.tables[table],
                    "after_create",
                    # DDL formats with %: the PostgreSQL function's own % are doubled.
                    DDL(statement.replace("%", "%%")).execute_if(dialect=dialect),  # type: ignore[no-untyped-call]
                )


_install_append_only_triggers()
