"""auth

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from keel.core.db import UTCDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "auth_revoked_tokens",
        sa.Column("jti", sa.String(length=64), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("jti", name=op.f("pk_auth_revoked_tokens")),
    )
    with op.batch_alter_table("auth_revoked_tokens", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_auth_revoked_tokens_expires_at"), ["expires_at"], unique=False
        )

    op.create_table(
        "auth_signing_keys",
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("algorithm", sa.String(length=10), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("public_jwk", sa.JSON(), nullable=False),
        sa.Column("private_key_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("activated_at", UTCDateTime(), nullable=True),
        sa.Column("retired_at", UTCDateTime(), nullable=True),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("kid", name=op.f("pk_auth_signing_keys")),
    )
    with op.batch_alter_table("auth_signing_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_auth_signing_keys_status"), ["status"], unique=False)

    op.create_table(
        "audit_records",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
        sa.Column("action", sa.String(length=100), nullable=False),
        sa.Column("outcome", sa.String(length=10), nullable=False),
        sa.Column("actor_type", sa.String(length=20), nullable=True),
        sa.Column("actor_id", sa.String(length=64), nullable=True),
        sa.Column("target_type", sa.String(length=50), nullable=True),
        sa.Column("target_id", sa.String(length=200), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("ip_address", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.String(length=200), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_audit_records_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_records")),
    )
    with op.batch_alter_table("audit_records", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_records_action"), ["action"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_audit_records_occurred_at"), ["occurred_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_audit_records_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "auth_api_keys",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("lookup", sa.String(length=32), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=150), nullable=False),
        sa.Column("principal_type", sa.String(length=20), nullable=False),
        sa.Column("principal_id", sa.String(length=36), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("last_used_at", UTCDateTime(), nullable=True),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_auth_api_keys_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_api_keys")),
        sa.UniqueConstraint("lookup", name=op.f("uq_auth_api_keys_lookup")),
    )
    with op.batch_alter_table("auth_api_keys", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_auth_api_keys_principal_id"), ["principal_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_auth_api_keys_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "auth_roles",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("permissions", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_auth_roles_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_roles")),
        sa.UniqueConstraint("tenant_id", "name", name="uq_auth_roles_tenant_name"),
    )
    with op.batch_alter_table("auth_roles", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_auth_roles_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "auth_service_accounts",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=150), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("is_disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_auth_service_accounts_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_service_accounts")),
        sa.UniqueConstraint("tenant_id", "name", name="uq_auth_sa_tenant_name"),
    )
    with op.batch_alter_table("auth_service_accounts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_auth_service_accounts_tenant_id"), ["tenant_id"], unique=False
        )

    op.create_table(
        "auth_users",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("username", sa.String(length=150), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("display_name", sa.String(length=200), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("is_email_verified", sa.Boolean(), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=True),
        sa.Column("failed_login_count", sa.Integer(), nullable=False),
        sa.Column("locked_until", UTCDateTime(), nullable=True),
        sa.Column("last_login_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_auth_users_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_users")),
        sa.UniqueConstraint("tenant_id", "email", name="uq_auth_users_tenant_email"),
        sa.UniqueConstraint("tenant_id", "username", name="uq_auth_users_tenant_username"),
    )
    with op.batch_alter_table("auth_users", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_auth_users_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "auth_oauth_clients",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=True),
        sa.Column("name", sa.String(length=150), nullable=False),
        sa.Column("service_account_id", sa.String(length=36), nullable=True),
        sa.Column("redirect_uris", sa.JSON(), nullable=False),
        sa.Column("grant_types", sa.JSON(), nullable=False),
        sa.Column("allowed_scopes", sa.JSON(), nullable=False),
        sa.Column("is_revoked", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["service_account_id"],
            ["auth_service_accounts.id"],
            name=op.f("fk_auth_oauth_clients_service_account_id_auth_service_accounts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_auth_oauth_clients_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_oauth_clients")),
        sa.UniqueConstraint("client_id", name=op.f("uq_auth_oauth_clients_client_id")),
    )
    with op.batch_alter_table("auth_oauth_clients", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_auth_oauth_clients_tenant_id"), ["tenant_id"], unique=False
        )

    op.create_table(
        "auth_password_history",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_auth_password_history_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["auth_users.id"],
            name=op.f("fk_auth_password_history_user_id_auth_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_password_history")),
    )
    with op.batch_alter_table("auth_password_history", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_auth_password_history_tenant_id"), ["tenant_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_auth_password_history_user_id"), ["user_id"], unique=False
        )

    op.create_table(
        "auth_role_assignments",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("role_id", sa.String(length=36), nullable=False),
        sa.Column("principal_type", sa.String(length=20), nullable=False),
        sa.Column("principal_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["role_id"],
            ["auth_roles.id"],
            name=op.f("fk_auth_role_assignments_role_id_auth_roles"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_auth_role_assignments_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_role_assignments")),
        sa.UniqueConstraint(
            "role_id", "principal_type", "principal_id", name="uq_auth_role_assignment"
        ),
    )
    with op.batch_alter_table("auth_role_assignments", schema=None) as batch_op:
        batch_op.create_index(
            "ix_auth_role_assignments_principal", ["principal_type", "principal_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_auth_role_assignments_role_id"), ["role_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_auth_role_assignments_tenant_id"), ["tenant_id"], unique=False
        )

    op.create_table(
        "auth_sessions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=400), nullable=True),
        sa.Column("ip_address", sa.String(length=64), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("last_used_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.Column("revoked_reason", sa.String(length=50), nullable=True),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_auth_sessions_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["auth_users.id"],
            name=op.f("fk_auth_sessions_user_id_auth_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_sessions")),
    )
    with op.batch_alter_table("auth_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_auth_sessions_tenant_id"), ["tenant_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_auth_sessions_user_id"), ["user_id"], unique=False)

    op.create_table(
        "auth_refresh_tokens",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("session_id", sa.String(length=36), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("used_at", UTCDateTime(), nullable=True),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("scope", sa.String(length=1000), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["auth_sessions.id"],
            name=op.f("fk_auth_refresh_tokens_session_id_auth_sessions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_auth_refresh_tokens_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_refresh_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_auth_refresh_tokens_token_hash")),
    )
    with op.batch_alter_table("auth_refresh_tokens", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_auth_refresh_tokens_session_id"), ["session_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_auth_refresh_tokens_tenant_id"), ["tenant_id"], unique=False
        )


def downgrade() -> None:

    with op.batch_alter_table("auth_refresh_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_auth_refresh_tokens_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_auth_refresh_tokens_session_id"))

    op.drop_table("auth_refresh_tokens")
    with op.batch_alter_table("auth_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_auth_sessions_user_id"))
        batch_op.drop_index(batch_op.f("ix_auth_sessions_tenant_id"))

    op.drop_table("auth_sessions")
    with op.batch_alter_table("auth_role_assignments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_auth_role_assignments_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_auth_role_assignments_role_id"))
        batch_op.drop_index("ix_auth_role_assignments_principal")

    op.drop_table("auth_role_assignments")
    with op.batch_alter_table("auth_password_history", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_auth_password_history_user_id"))
        batch_op.drop_index(batch_op.f("ix_auth_password_history_tenant_id"))

    op.drop_table("auth_password_history")
    with op.batch_alter_table("auth_oauth_clients", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_auth_oauth_clients_tenant_id"))

    op.drop_table("auth_oauth_clients")
    with op.batch_alter_table("auth_users", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_auth_users_tenant_id"))

    op.drop_table("auth_users")
    with op.batch_alter_table("auth_service_accounts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_auth_service_accounts_tenant_id"))

    op.drop_table("auth_service_accounts")
    with op.batch_alter_table("auth_roles", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_auth_roles_tenant_id"))

    op.drop_table("auth_roles")
    with op.batch_alter_table("auth_api_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_auth_api_keys_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_auth_api_keys_principal_id"))

    op.drop_table("auth_api_keys")
    with op.batch_alter_table("audit_records", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_records_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_audit_records_occurred_at"))
        batch_op.drop_index(batch_op.f("ix_audit_records_action"))

    op.drop_table("audit_records")
    with op.batch_alter_table("auth_signing_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_auth_signing_keys_status"))

    op.drop_table("auth_signing_keys")
    with op.batch_alter_table("auth_revoked_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_auth_revoked_tokens_expires_at"))

    op.drop_table("auth_revoked_tokens")
