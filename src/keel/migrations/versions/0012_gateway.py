"""gateway service: edge policy revisions and their head

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 17:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from keel.core.db import UTCDateTime

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "gateway_policies",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_gateway_policies_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gateway_policies")),
        sa.UniqueConstraint("tenant_id", name="uq_gateway_policies_tenant"),
    )
    with op.batch_alter_table("gateway_policies", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_gateway_policies_tenant_id"), ["tenant_id"], unique=False
        )

    op.create_table(
        "gateway_policy_revisions",
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_gateway_policy_revisions_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "revision", name="pk_gateway_policy_revisions"),
    )
    with op.batch_alter_table("gateway_policy_revisions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_gateway_policy_revisions_tenant_id"), ["tenant_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("gateway_policy_revisions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_gateway_policy_revisions_tenant_id"))
    op.drop_table("gateway_policy_revisions")
    with op.batch_alter_table("gateway_policies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_gateway_policies_tenant_id"))
    op.drop_table("gateway_policies")
