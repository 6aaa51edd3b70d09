"""notification service

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 13:59:59.172724
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from keel.core.db import UTCDateTime

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "notify_categories",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("critical", sa.Boolean(), nullable=False),
        sa.Column("default_channels", sa.JSON(), nullable=False),
        sa.Column("hourly_limit", sa.Integer(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_notify_categories_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_categories")),
        sa.UniqueConstraint("tenant_id", "name", name="uq_notify_categories_name"),
    )
    with op.batch_alter_table("notify_categories", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_notify_categories_tenant_id"), ["tenant_id"], unique=False
        )

    op.create_table(
        "notify_messages",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("recipient_id", sa.String(length=36), nullable=True),
        sa.Column("address", sa.String(length=320), nullable=True),
        sa.Column("template", sa.String(length=128), nullable=False),
        sa.Column("template_version", sa.Integer(), nullable=True),
        sa.Column("locale", sa.String(length=35), nullable=True),
        sa.Column("category", sa.String(length=64), nullable=True),
        sa.Column("critical", sa.Boolean(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("push_data", sa.JSON(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("send_at", UTCDateTime(), nullable=False),
        sa.Column("batch_id", sa.String(length=36), nullable=True),
        sa.Column("digest_key", sa.String(length=200), nullable=True),
        sa.Column("provider", sa.String(length=64), nullable=True),
        sa.Column("provider_message_id", sa.String(length=256), nullable=True),
        sa.Column("variation", sa.String(length=128), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("unsubscribe_token_hash", sa.String(length=64), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("sent_at", UTCDateTime(), nullable=True),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_notify_messages_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_messages")),
    )
    with op.batch_alter_table("notify_messages", schema=None) as batch_op:
        batch_op.create_index("ix_notify_messages_batch", ["tenant_id", "batch_id"], unique=False)
        batch_op.create_index(
            "ix_notify_messages_digest", ["tenant_id", "digest_key", "status"], unique=False
        )
        batch_op.create_index(
            "ix_notify_messages_provider_id",
            ["tenant_id", "provider", "provider_message_id"],
            unique=False,
        )
        batch_op.create_index(
            "ix_notify_messages_recipient",
            ["tenant_id", "recipient_id", "created_at"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_notify_messages_tenant_id"), ["tenant_id"], unique=False
        )
        batch_op.create_index(
            "ix_notify_messages_unsubscribe", ["unsubscribe_token_hash"], unique=False
        )

    op.create_table(
        "notify_providers",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("credentials_secret", sa.String(length=512), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_notify_providers_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_providers")),
        sa.UniqueConstraint("tenant_id", "name", name="uq_notify_providers_name"),
    )
    with op.batch_alter_table("notify_providers", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_notify_providers_tenant_id"), ["tenant_id"], unique=False
        )

    op.create_table(
        "notify_recipients",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("external_id", sa.String(length=200), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("phone", sa.String(length=32), nullable=True),
        sa.Column("push_targets", sa.JSON(), nullable=False),
        sa.Column("locale", sa.String(length=35), nullable=True),
        sa.Column("timezone", sa.String(length=64), nullable=True),
        sa.Column("quiet_hours", sa.JSON(), nullable=True),
        sa.Column("traits", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_notify_recipients_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_recipients")),
        sa.UniqueConstraint("tenant_id", "external_id", name="uq_notify_recipients_external_id"),
    )
    with op.batch_alter_table("notify_recipients", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_notify_recipients_tenant_id"), ["tenant_id"], unique=False
        )

    op.create_table(
        "notify_senders",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("address", sa.String(length=400), nullable=False),
        sa.Column("reply_to", sa.String(length=400), nullable=True),
        sa.Column("dkim_domain", sa.String(length=253), nullable=True),
        sa.Column("dkim_selector", sa.String(length=63), nullable=True),
        sa.Column("dkim_secret", sa.String(length=512), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_notify_senders_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_senders")),
        sa.UniqueConstraint("tenant_id", "name", name="uq_notify_senders_name"),
    )
    with op.batch_alter_table("notify_senders", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_notify_senders_tenant_id"), ["tenant_id"], unique=False
        )

    op.create_table(
        "notify_suppressions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("category", sa.String(length=64), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_notify_suppressions_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_suppressions")),
        sa.UniqueConstraint("tenant_id", "channel", "address", name="uq_notify_suppressions"),
    )
    with op.batch_alter_table("notify_suppressions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_notify_suppressions_tenant_id"), ["tenant_id"], unique=False
        )

    op.create_table(
        "notify_templates",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("category", sa.String(length=64), nullable=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("published_version", sa.Integer(), nullable=True),
        sa.Column("latest_version", sa.Integer(), nullable=False),
        sa.Column("experiment_flag", sa.String(length=128), nullable=True),
        sa.Column("experiment_environment", sa.String(length=63), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_notify_templates_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_templates")),
        sa.UniqueConstraint("tenant_id", "name", name="uq_notify_templates_name"),
    )
    with op.batch_alter_table("notify_templates", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_notify_templates_tenant_id"), ["tenant_id"], unique=False
        )

    op.create_table(
        "notify_inbox",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("recipient_id", sa.String(length=36), nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=True),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("category", sa.String(length=64), nullable=True),
        sa.Column("read_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["recipient_id"],
            ["notify_recipients.id"],
            name=op.f("fk_notify_inbox_recipient_id_notify_recipients"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_notify_inbox_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_inbox")),
    )
    with op.batch_alter_table("notify_inbox", schema=None) as batch_op:
        batch_op.create_index(
            "ix_notify_inbox_recipient", ["tenant_id", "recipient_id", "created_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_notify_inbox_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "notify_message_events",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["notify_messages.id"],
            name=op.f("fk_notify_message_events_message_id_notify_messages"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_notify_message_events_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_message_events")),
    )
    with op.batch_alter_table("notify_message_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_notify_message_events_message_id"), ["message_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_notify_message_events_tenant_id"), ["tenant_id"], unique=False
        )

    op.create_table(
        "notify_preferences",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("recipient_id", sa.String(length=36), nullable=False),
        sa.Column("category", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["recipient_id"],
            ["notify_recipients.id"],
            name=op.f("fk_notify_preferences_recipient_id_notify_recipients"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_notify_preferences_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_preferences")),
        sa.UniqueConstraint(
            "recipient_id", "category", "channel", name="uq_notify_preferences_choice"
        ),
    )
    with op.batch_alter_table("notify_preferences", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_notify_preferences_recipient_id"), ["recipient_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_notify_preferences_tenant_id"), ["tenant_id"], unique=False
        )

    op.create_table(
        "notify_template_versions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("template_id", sa.String(length=36), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("content", sa.JSON(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["template_id"],
            ["notify_templates.id"],
            name=op.f("fk_notify_template_versions_template_id_notify_templates"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_notify_template_versions_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_template_versions")),
        sa.UniqueConstraint("template_id", "number", name="uq_notify_template_versions_number"),
    )
    with op.batch_alter_table("notify_template_versions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_notify_template_versions_template_id"), ["template_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_notify_template_versions_tenant_id"), ["tenant_id"], unique=False
        )

    op.create_table(
        "notify_topic_subscriptions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("topic", sa.String(length=128), nullable=False),
        sa.Column("recipient_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["recipient_id"],
            ["notify_recipients.id"],
            name=op.f("fk_notify_topic_subscriptions_recipient_id_notify_recipients"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_notify_topic_subscriptions_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_topic_subscriptions")),
        sa.UniqueConstraint("tenant_id", "topic", "recipient_id", name="uq_notify_topic_member"),
    )
    with op.batch_alter_table("notify_topic_subscriptions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_notify_topic_subscriptions_recipient_id"), ["recipient_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_notify_topic_subscriptions_tenant_id"), ["tenant_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("notify_topic_subscriptions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notify_topic_subscriptions_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_notify_topic_subscriptions_recipient_id"))

    op.drop_table("notify_topic_subscriptions")
    with op.batch_alter_table("notify_template_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notify_template_versions_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_notify_template_versions_template_id"))

    op.drop_table("notify_template_versions")
    with op.batch_alter_table("notify_preferences", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notify_preferences_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_notify_preferences_recipient_id"))

    op.drop_table("notify_preferences")
    with op.batch_alter_table("notify_message_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notify_message_events_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_notify_message_events_message_id"))

    op.drop_table("notify_message_events")
    with op.batch_alter_table("notify_inbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notify_inbox_tenant_id"))
        batch_op.drop_index("ix_notify_inbox_recipient")

    op.drop_table("notify_inbox")
    with op.batch_alter_table("notify_templates", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notify_templates_tenant_id"))

    op.drop_table("notify_templates")
    with op.batch_alter_table("notify_suppressions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notify_suppressions_tenant_id"))

    op.drop_table("notify_suppressions")
    with op.batch_alter_table("notify_senders", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notify_senders_tenant_id"))

    op.drop_table("notify_senders")
    with op.batch_alter_table("notify_recipients", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notify_recipients_tenant_id"))

    op.drop_table("notify_recipients")
    with op.batch_alter_table("notify_providers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notify_providers_tenant_id"))

    op.drop_table("notify_providers")
    with op.batch_alter_table("notify_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_notify_messages_unsubscribe")
        batch_op.drop_index(batch_op.f("ix_notify_messages_tenant_id"))
        batch_op.drop_index("ix_notify_messages_recipient")
        batch_op.drop_index("ix_notify_messages_digest")
        batch_op.drop_index("ix_notify_messages_provider_id")
        batch_op.drop_index("ix_notify_messages_batch")

    op.drop_table("notify_messages")
    with op.batch_alter_table("notify_categories", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notify_categories_tenant_id"))

    op.drop_table("notify_categories")
