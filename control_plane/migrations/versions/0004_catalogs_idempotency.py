"""prompt catalogs, catalog fields of outputs, idempotent requests, uploads by content

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 23:00:00

"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

TABLE_OPTIONS: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")
LONG_TEXT = sa.Text().with_variant(mysql.LONGTEXT(), "mysql")

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "catalogs",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("prompts", sa.JSON(), nullable=False),
        sa.Column("prompt_count", sa.Integer(), nullable=False),
        sa.Column("tag_counts", sa.JSON(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        **TABLE_OPTIONS,
    )
    op.create_table(
        "idempotent_requests",
        sa.Column("scope", sa.String(length=100), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("body_sha256", sa.String(length=64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("response", LONG_TEXT, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("scope", "key"),
        **TABLE_OPTIONS,
    )
    op.create_index("ix_idempotent_requests_expires_at", "idempotent_requests", ["expires_at"])
    with op.batch_alter_table("outputs") as batch:
        batch.add_column(sa.Column("prompt_id", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("tags", sa.JSON(), nullable=True))
    op.create_index("ix_uploads_group_id_sha256", "uploads", ["group_id", "sha256"])


def downgrade() -> None:
    op.drop_index("ix_uploads_group_id_sha256", table_name="uploads")
    with op.batch_alter_table("outputs") as batch:
        batch.drop_column("tags")
        batch.drop_column("prompt_id")
    op.drop_index("ix_idempotent_requests_expires_at", table_name="idempotent_requests")
    op.drop_table("idempotent_requests")
    op.drop_table("catalogs")
