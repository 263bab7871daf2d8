"""users and money: users and API keys, owners of what they make, job costs, the analytics
event log and the outbox of webhooks to users' own URLs

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 01:50:00

"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

TABLE_OPTIONS: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")
EVENT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# tables whose rows belong to a user, and the index their lists read ("" for none)
OWNED = (
    ("groups", "ix_groups_user_id_id"),
    ("uploads", ""),
    ("jobs", "ix_jobs_user_id_id"),
    ("catalogs", "ix_catalogs_user_id_id"),
    ("presets", "ix_presets_user_id_id"),
    ("characters", "ix_characters_user_id_id"),
    ("personas", ""),
)


def upgrade() -> None:
    for table, index in OWNED:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("user_id", sa.String(length=40), nullable=True))
        if index:
            op.create_index(index, table, ["user_id", "id"])
    op.create_index("ix_personas_user_id", "personas", ["user_id"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("estimate_usd", sa.Float(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("cost_usd", sa.Float(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("first_image_at", TIMESTAMP, nullable=True))
        batch.add_column(sa.Column("webhook", sa.JSON(), nullable=True))
    _create_users()
    _create_analytics_events()
    _create_webhook_deliveries()


def _create_users() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("tier", sa.String(length=10), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("monthly_cap_usd", sa.Float(), nullable=True),
        sa.Column("webhook_secret", sa.String(length=100), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
        **TABLE_OPTIONS,
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.Column("key_sha256", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("last_used_at", TIMESTAMP, nullable=True),
        sa.Column("revoked_at", TIMESTAMP, nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key_sha256"),
        **TABLE_OPTIONS,
    )
    op.create_index("ix_api_keys_user_id", "api_keys", ["user_id"])


def _create_analytics_events() -> None:
    op.create_table(
        "analytics_events",
        sa.Column("id", EVENT_ID, autoincrement=True, nullable=False),
        sa.Column("type", sa.String(length=40), nullable=False),
        sa.Column("user_id", sa.String(length=40), nullable=True),
        sa.Column("job_id", sa.String(length=40), nullable=True),
        sa.Column("output_id", sa.String(length=40), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        **TABLE_OPTIONS,
    )
    for name, column in (("user_id", "user_id"), ("job_id", "job_id"), ("type", "type")):
        op.create_index(f"ix_analytics_events_{name}_id", "analytics_events", [column, "id"])


def _create_webhook_deliveries() -> None:
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("user_id", sa.String(length=40), nullable=True),
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("event_type", sa.String(length=40), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TIMESTAMP, nullable=False),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("delivered_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id"),
        **TABLE_OPTIONS,
    )
    op.create_index("ix_webhook_deliveries_user_id", "webhook_deliveries", ["user_id"])
    op.create_index("ix_webhook_deliveries_job_id", "webhook_deliveries", ["job_id"])
    op.create_index(
        "ix_webhook_deliveries_status_next_attempt_at",
        "webhook_deliveries",
        ["status", "next_attempt_at"],
    )


def downgrade() -> None:
    for table in ("webhook_deliveries", "analytics_events", "api_keys", "users"):
        op.drop_table(table)
    with op.batch_alter_table("jobs") as batch:
        for column in ("webhook", "first_image_at", "cost_usd", "estimate_usd"):
            batch.drop_column(column)
    op.drop_index("ix_personas_user_id", table_name="personas")
    for table, index in reversed(OWNED):
        if index:
            op.drop_index(index, table_name=table)
        with op.batch_alter_table(table) as batch:
            batch.drop_column("user_id")
