"""secrets rotation and dynamic database credentials, platform keys, change events

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from keel.core.db import UTCDateTime

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "keel_keys",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_keel_keys")),
    )
    op.create_table(
        "change_events",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("stream", sa.String(length=32), nullable=False),
        sa.Column("subject", sa.String(length=600), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_change_events_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_change_events")),
    )
    with op.batch_alter_table("change_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_change_events_stream", ["tenant_id", "stream", "seq"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_change_events_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "secrets_db_connections",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("mount_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("plugin_name", sa.String(length=64), nullable=False),
        sa.Column("connection_url", sa.Text(), nullable=False),
        sa.Column("username", sa.String(length=128), nullable=False),
        sa.Column("password_sealed", sa.LargeBinary(), nullable=True),
        sa.Column("allowed_roles", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["mount_id"],
            ["secrets_mounts.id"],
            name=op.f("fk_secrets_db_connections_mount_id_secrets_mounts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_secrets_db_connections_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_secrets_db_connections")),
        sa.UniqueConstraint("tenant_id", "mount_id", "name", name="uq_secrets_db_connections_name"),
    )
    with op.batch_alter_table("secrets_db_connections", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_secrets_db_connections_tenant_id"), ["tenant_id"], unique=False
        )

    op.create_table(
        "secrets_db_roles",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("mount_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("db_name", sa.String(length=128), nullable=False),
        sa.Column("creation_statements", sa.JSON(), nullable=False),
        sa.Column("revocation_statements", sa.JSON(), nullable=False),
        sa.Column("renew_statements", sa.JSON(), nullable=False),
        sa.Column("default_ttl_s", sa.Integer(), nullable=False),
        sa.Column("max_ttl_s", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["mount_id"],
            ["secrets_mounts.id"],
            name=op.f("fk_secrets_db_roles_mount_id_secrets_mounts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_secrets_db_roles_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_secrets_db_roles")),
        sa.UniqueConstraint("tenant_id", "mount_id", "name", name="uq_secrets_db_roles_name"),
    )
    with op.batch_alter_table("secrets_db_roles", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_secrets_db_roles_tenant_id"), ["tenant_id"], unique=False
        )

    op.create_table(
        "secrets_leases",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("lease_id", sa.String(length=400), nullable=False),
        sa.Column("mount_id", sa.String(length=36), nullable=False),
        sa.Column("role_name", sa.String(length=128), nullable=False),
        sa.Column("db_name", sa.String(length=128), nullable=False),
        sa.Column("username", sa.String(length=128), nullable=False),
        sa.Column("issued_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("max_expires_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.Column("revoke_attempts", sa.Integer(), nullable=False),
        sa.Column("retry_at", UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["mount_id"],
            ["secrets_mounts.id"],
            name=op.f("fk_secrets_leases_mount_id_secrets_mounts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_secrets_leases_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_secrets_leases")),
        sa.UniqueConstraint("lease_id", name=op.f("uq_secrets_leases_lease_id")),
    )
    with op.batch_alter_table("secrets_leases", schema=None) as batch_op:
        batch_op.create_index("ix_secrets_leases_due", ["revoked_at", "expires_at"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_secrets_leases_tenant_id"), ["tenant_id"], unique=False
        )

    op.create_table(
        "secrets_rotations",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("secret_id", sa.String(length=36), nullable=False),
        sa.Column("field", sa.String(length=128), nullable=False),
        sa.Column("interval_s", sa.Integer(), nullable=False),
        sa.Column("length", sa.Integer(), nullable=False),
        sa.Column("alphabet", sa.String(length=256), nullable=False),
        sa.Column("hook", sa.String(length=64), nullable=True),
        sa.Column("next_rotation_at", UTCDateTime(), nullable=False),
        sa.Column("last_rotated_at", UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["secret_id"],
            ["secrets_secrets.id"],
            name=op.f("fk_secrets_rotations_secret_id_secrets_secrets"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_secrets_rotations_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_secrets_rotations")),
        sa.UniqueConstraint("secret_id", name=op.f("uq_secrets_rotations_secret_id")),
    )
    with op.batch_alter_table("secrets_rotations", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_secrets_rotations_next_rotation_at"), ["next_rotation_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_secrets_rotations_tenant_id"), ["tenant_id"], unique=False
        )

    with op.batch_alter_table("secrets_mounts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("type", sa.String(length=16), server_default="kv", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("secrets_mounts", schema=None) as batch_op:
        batch_op.drop_column("type")

    with op.batch_alter_table("secrets_rotations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_secrets_rotations_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_secrets_rotations_next_rotation_at"))

    op.drop_table("secrets_rotations")
    with op.batch_alter_table("secrets_leases", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_secrets_leases_tenant_id"))
        batch_op.drop_index("ix_secrets_leases_due")

    op.drop_table("secrets_leases")
    with op.batch_alter_table("secrets_db_roles", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_secrets_db_roles_tenant_id"))

    op.drop_table("secrets_db_roles")
    with op.batch_alter_table("secrets_db_connections", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_secrets_db_connections_tenant_id"))

    op.drop_table("secrets_db_connections")
    with op.batch_alter_table("change_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_change_events_tenant_id"))
        batch_op.drop_index("ix_change_events_stream")

    op.drop_table("change_events")
    op.drop_table("keel_keys")
