"""audit log: events, payloads, nodes, signed heads, outbox

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

import json
from collections.abc import Sequence
from datetime import UTC, datetime

import rfc8785
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import sqlite

from keel.audit.models import append_only_statements
from keel.core.db import UTCDateTime

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_outbox",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("document", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_outbox")),
    )
    with op.batch_alter_table("audit_outbox", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_outbox_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "audit_signing_keys",
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("public_key", sa.LargeBinary(length=32), nullable=False),
        sa.Column("private_key_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_audit_signing_keys")),
    )
    op.create_table(
        "audit_actions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=False),
        sa.Column("category", sa.String(length=40), nullable=False),
        sa.Column("sensitivity", sa.String(length=12), nullable=False),
        sa.Column("sensitive_fields", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_audit_actions_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_actions")),
        sa.UniqueConstraint("tenant_id", "name", name=op.f("uq_audit_actions_tenant_id")),
    )
    with op.batch_alter_table("audit_actions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_actions_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "audit_events",
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column(
            "leaf_index",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("time", UTCDateTime(), nullable=False),
        sa.Column("action", sa.String(length=128), nullable=False),
        sa.Column("outcome", sa.String(length=10), nullable=False),
        sa.Column("sensitivity", sa.String(length=12), nullable=False),
        sa.Column("actor_type", sa.String(length=40), nullable=True),
        sa.Column("actor_id", sa.String(length=200), nullable=True),
        sa.Column("target_type", sa.String(length=60), nullable=True),
        sa.Column("target_id", sa.String(length=200), nullable=True),
        sa.Column("leaf_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("request_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("sequenced_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_audit_events_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "leaf_index", name=op.f("pk_audit_events")),
        sa.UniqueConstraint("tenant_id", "event_id", name=op.f("uq_audit_events_tenant_id")),
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_audit_events_tenant_action", ["tenant_id", "action"], unique=False
        )
        batch_op.create_index("ix_audit_events_tenant_time", ["tenant_id", "time"], unique=False)

    op.create_table(
        "audit_nodes",
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("level", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column(
            "index",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column("hash", sa.LargeBinary(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_audit_nodes_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "level", "index", name=op.f("pk_audit_nodes")),
    )
    op.create_table(
        "audit_payloads",
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column(
            "leaf_index",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column("document", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_audit_payloads_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "leaf_index", name=op.f("pk_audit_payloads")),
    )
    op.create_table(
        "audit_tree_heads",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("tree_size", sa.BigInteger(), nullable=False),
        sa.Column("root_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("timestamp", sa.BigInteger(), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.LargeBinary(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_audit_tree_heads_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_tree_heads")),
    )
    with op.batch_alter_table("audit_tree_heads", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_audit_tree_heads_tenant_id"), ["tenant_id"], unique=False
        )
        batch_op.create_index(
            "ix_audit_tree_heads_tenant_size", ["tenant_id", "tree_size"], unique=False
        )

    for statement in append_only_statements(op.get_bind().dialect.name):
        op.execute(statement)
    _move_audit_records_to_the_outbox()

    with op.batch_alter_table("audit_records", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_records_action"))
        batch_op.drop_index(batch_op.f("ix_audit_records_occurred_at"))
        batch_op.drop_index(batch_op.f("ix_audit_records_tenant_id"))

    op.drop_table("audit_records")


def _move_audit_records_to_the_outbox() -> None:
    """Events recorded before the log existed are sequenced into it like any new event."""
    records = sa.table(
        "audit_records",
        *(sa.column(name) for name in (
            "id", "tenant_id", "occurred_at", "action", "outcome", "actor_type", "actor_id",
            "target_type", "target_id", "request_id", "ip_address", "reason", "data",
        )),
    )  # fmt: skip
    outbox = sa.table(
        "audit_outbox",
        *(sa.column(name) for name in ("tenant_id", "event_id", "document", "created_at")),
    )
    bind = op.get_bind()
    rows = bind.execute(sa.select(records).order_by(records.c.occurred_at)).mappings().all()
    for row in rows:
        occurred = row["occurred_at"]
        if isinstance(occurred, str):
            occurred = datetime.fromisoformat(occurred)
        occurred = occurred.replace(tzinfo=UTC) if occurred.tzinfo is None else occurred
        data = row["data"]
        document = {
            "id": row["id"],
            "time": occurred.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "tenant": row["tenant_id"],
            "action": row["action"],
            "outcome": row["outcome"],
            "sensitivity": "internal",
            "schema_version": 1,
            "data": json.loads(data) if isinstance(data, str) else (data or {}),
        }
        actor = {"type": row["actor_type"], "id": row["actor_id"], "ip": row["ip_address"]}
        target = {"type": row["target_type"], "id": row["target_id"]}
        extra = {
            "actor": {k: v for k, v in actor.items() if v is not None},
            "target": {k: v for k, v in target.items() if v is not None},
            "reason": row["reason"],
            "request_id": row["request_id"],
        }
        document.update({key: value for key, value in extra.items() if value})
        bind.execute(
            outbox.insert().values(
                tenant_id=row["tenant_id"],
                event_id=row["id"],
                document=rfc8785.dumps(document),
                created_at=occurred,
            )
        )


def downgrade() -> None:
    # The log's events are not moved back: a downgrade keeps them only in the dropped tables.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS keel_audit_append_only() CASCADE")
    op.create_table(
        "audit_records",
        sa.Column("id", sa.VARCHAR(length=36), nullable=False),
        sa.Column("occurred_at", sa.DATETIME(), nullable=False),
        sa.Column("action", sa.VARCHAR(length=100), nullable=False),
        sa.Column("outcome", sa.VARCHAR(length=10), nullable=False),
        sa.Column("actor_type", sa.VARCHAR(length=20), nullable=True),
        sa.Column("actor_id", sa.VARCHAR(length=64), nullable=True),
        sa.Column("target_type", sa.VARCHAR(length=50), nullable=True),
        sa.Column("target_id", sa.VARCHAR(length=200), nullable=True),
        sa.Column("request_id", sa.VARCHAR(length=128), nullable=True),
        sa.Column("ip_address", sa.VARCHAR(length=64), nullable=True),
        sa.Column("reason", sa.VARCHAR(length=200), nullable=True),
        sa.Column("data", sqlite.JSON(), nullable=False),
        sa.Column("tenant_id", sa.VARCHAR(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_audit_records_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_records")),
    )
    with op.batch_alter_table("audit_records", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_records_tenant_id"), ["tenant_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_audit_records_occurred_at"), ["occurred_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_audit_records_action"), ["action"], unique=False)

    with op.batch_alter_table("audit_tree_heads", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_tree_heads_tenant_size")
        batch_op.drop_index(batch_op.f("ix_audit_tree_heads_tenant_id"))

    op.drop_table("audit_tree_heads")
    op.drop_table("audit_payloads")
    op.drop_table("audit_nodes")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_events_tenant_time")
        batch_op.drop_index("ix_audit_events_tenant_action")

    op.drop_table("audit_events")
    with op.batch_alter_table("audit_actions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_actions_tenant_id"))

    op.drop_table("audit_actions")
    op.drop_table("audit_signing_keys")
    with op.batch_alter_table("audit_outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_outbox_tenant_id"))

    op.drop_table("audit_outbox")
