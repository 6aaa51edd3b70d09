"""secrets: mounts, secrets, sealed versions, policies

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from keel.core.db import UTCDateTime

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # AppRole logins find a service account's client by the account.
    with op.batch_alter_table("auth_oauth_clients", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_auth_oauth_clients_service_account_id"),
            ["service_account_id"],
            unique=False,
        )

    op.create_table(
        "secrets_mounts",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("path", sa.String(length=128), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("max_versions", sa.Integer(), nullable=False),
        sa.Column("cas_required", sa.Boolean(), nullable=False),
        sa.Column("delete_version_after_s", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_secrets_mounts_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_secrets_mounts")),
        sa.UniqueConstraint("tenant_id", "path", name="uq_secrets_mounts_path"),
    )
    with op.batch_alter_table("secrets_mounts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_secrets_mounts_tenant_id"), ["tenant_id"], unique=False
        )

    op.create_table(
        "secrets_policies",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("rules", sa.JSON(), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_secrets_policies_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_secrets_policies")),
        sa.UniqueConstraint("tenant_id", "name", name="uq_secrets_policies_name"),
    )
    with op.batch_alter_table("secrets_policies", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_secrets_policies_tenant_id"), ["tenant_id"], unique=False
        )

    op.create_table(
        "secrets_secrets",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("mount_id", sa.String(length=36), nullable=False),
        sa.Column("path", sa.String(length=512), nullable=False),
        sa.Column("current_version", sa.Integer(), nullable=False),
        sa.Column("oldest_version", sa.Integer(), nullable=False),
        sa.Column("max_versions", sa.Integer(), nullable=False),
        sa.Column("cas_required", sa.Boolean(), nullable=False),
        sa.Column("delete_version_after_s", sa.Integer(), nullable=False),
        sa.Column("custom_metadata", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["mount_id"],
            ["secrets_mounts.id"],
            name=op.f("fk_secrets_secrets_mount_id_secrets_mounts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_secrets_secrets_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_secrets_secrets")),
        sa.UniqueConstraint("tenant_id", "mount_id", "path", name="uq_secrets_secrets_path"),
    )
    with op.batch_alter_table("secrets_secrets", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_secrets_secrets_tenant_id"), ["tenant_id"], unique=False
        )

    op.create_table(
        "secrets_versions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("secret_id", sa.String(length=36), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("deletion_time", UTCDateTime(), nullable=True),
        sa.Column("destroyed", sa.Boolean(), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["secret_id"],
            ["secrets_secrets.id"],
            name=op.f("fk_secrets_versions_secret_id_secrets_secrets"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_secrets_versions_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_secrets_versions")),
        sa.UniqueConstraint("secret_id", "version", name="uq_secrets_versions_version"),
    )
    with op.batch_alter_table("secrets_versions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_secrets_versions_tenant_id"), ["tenant_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("auth_oauth_clients", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_auth_oauth_clients_service_account_id"))

    with op.batch_alter_table("secrets_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_secrets_versions_tenant_id"))

    op.drop_table("secrets_versions")
    with op.batch_alter_table("secrets_secrets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_secrets_secrets_tenant_id"))

    op.drop_table("secrets_secrets")
    with op.batch_alter_table("secrets_policies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_secrets_policies_tenant_id"))

    op.drop_table("secrets_policies")
    with op.batch_alter_table("secrets_mounts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_secrets_mounts_tenant_id"))

    op.drop_table("secrets_mounts")
