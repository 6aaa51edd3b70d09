"""auth: known devices of users (a keyed hash each), for the new-device notice

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 21:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from keel.core.db import UTCDateTime

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "auth_known_devices",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("device_hash", sa.String(length=64), nullable=False),
        sa.Column("first_seen_at", UTCDateTime(), nullable=False),
        sa.Column("last_seen_at", UTCDateTime(), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_auth_known_devices_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["auth_users.id"],
            name=op.f("fk_auth_known_devices_user_id_auth_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_known_devices")),
        sa.UniqueConstraint("user_id", "device_hash", name="uq_auth_known_devices_user_device"),
    )
    with op.batch_alter_table("auth_known_devices", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_auth_known_devices_tenant_id"), ["tenant_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_auth_known_devices_user_id"), ["user_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("auth_known_devices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_auth_known_devices_user_id"))
        batch_op.drop_index(batch_op.f("ix_auth_known_devices_tenant_id"))
    op.drop_table("auth_known_devices")
