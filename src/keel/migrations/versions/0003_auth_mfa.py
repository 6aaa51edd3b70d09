"""auth: TOTP, recovery codes, one-time tokens, authorization codes

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from keel.core.db import UTCDateTime

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _tenant_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["tenant_id"],
        ["tenants.id"],
        name=op.f(f"fk_{table}_tenant_id_tenants"),
        ondelete="RESTRICT",
    )


def _user_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["user_id"],
        ["auth_users.id"],
        name=op.f(f"fk_{table}_user_id_auth_users"),
        ondelete="CASCADE",
    )


def upgrade() -> None:

    op.create_table(
        "auth_totp",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("secret_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("confirmed_at", UTCDateTime(), nullable=True),
        sa.Column("last_used_step", sa.BigInteger(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        _tenant_fk("auth_totp"),
        _user_fk("auth_totp"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_totp")),
        sa.UniqueConstraint("user_id", name=op.f("uq_auth_totp_user_id")),
    )
    with op.batch_alter_table("auth_totp", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_auth_totp_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "auth_recovery_codes",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("used_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        _tenant_fk("auth_recovery_codes"),
        _user_fk("auth_recovery_codes"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_recovery_codes")),
        sa.UniqueConstraint("code_hash", name=op.f("uq_auth_recovery_codes_code_hash")),
    )
    with op.batch_alter_table("auth_recovery_codes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_auth_recovery_codes_tenant_id"), ["tenant_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_auth_recovery_codes_user_id"), ["user_id"], unique=False
        )

    op.create_table(
        "auth_one_time_tokens",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("purpose", sa.String(length=30), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("used_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        _tenant_fk("auth_one_time_tokens"),
        _user_fk("auth_one_time_tokens"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_one_time_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_auth_one_time_tokens_token_hash")),
    )
    with op.batch_alter_table("auth_one_time_tokens", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_auth_one_time_tokens_tenant_id"), ["tenant_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_auth_one_time_tokens_user_id"), ["user_id"], unique=False
        )

    op.create_table(
        "auth_authorization_codes",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("redirect_uri", sa.String(length=2000), nullable=False),
        sa.Column("code_challenge", sa.String(length=128), nullable=False),
        sa.Column("scope", sa.String(length=1000), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("used_at", UTCDateTime(), nullable=True),
        sa.Column("session_id", sa.String(length=36), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        _tenant_fk("auth_authorization_codes"),
        _user_fk("auth_authorization_codes"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_authorization_codes")),
        sa.UniqueConstraint("code_hash", name=op.f("uq_auth_authorization_codes_code_hash")),
    )
    with op.batch_alter_table("auth_authorization_codes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_auth_authorization_codes_tenant_id"), ["tenant_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_auth_authorization_codes_user_id"), ["user_id"], unique=False
        )


def downgrade() -> None:

    for table in (
        "auth_authorization_codes",
        "auth_one_time_tokens",
        "auth_recovery_codes",
    ):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(batch_op.f(f"ix_{table}_user_id"))
            batch_op.drop_index(batch_op.f(f"ix_{table}_tenant_id"))
        op.drop_table(table)

    with op.batch_alter_table("auth_totp", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_auth_totp_tenant_id"))
    op.drop_table("auth_totp")
