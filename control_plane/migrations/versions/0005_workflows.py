"""multi-stage workflows: variations and reruns, presets over pools, characters, personas

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 23:20:00

"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

TABLE_OPTIONS: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")
LONG_TEXT = sa.Text().with_variant(mysql.LONGTEXT(), "mysql")
EVENT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JOB_LINKS = ("parent_output_id", "rerun_of", "source_id")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        for name in JOB_LINKS:
            batch.add_column(sa.Column(name, sa.String(length=40), nullable=True))
    op.create_index("ix_jobs_parent_output_id", "jobs", ["parent_output_id"])
    op.create_index("ix_jobs_rerun_of", "jobs", ["rerun_of"])
    op.create_index("ix_jobs_source_id_id", "jobs", ["source_id", "id"])
    with op.batch_alter_table("outputs") as batch:
        batch.add_column(
            sa.Column("kind", sa.String(length=10), nullable=False, server_default="image")
        )
        batch.add_column(sa.Column("text", LONG_TEXT, nullable=True))
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(sa.Column("attributes", sa.JSON(), nullable=True))
    _create_presets()
    op.create_table(
        "characters",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("reference_ids", sa.JSON(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("style", sa.JSON(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        **TABLE_OPTIONS,
    )
    _create_personas()


def _create_presets() -> None:
    op.create_table(
        "presets",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("examples_per_reference", sa.Integer(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        **TABLE_OPTIONS,
    )
    op.create_table(
        "preset_usage",
        sa.Column("preset_id", sa.String(length=40), nullable=False),
        sa.Column("upload_id", sa.String(length=40), nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(["preset_id"], ["presets.id"]),
        sa.PrimaryKeyConstraint("preset_id", "upload_id"),
        **TABLE_OPTIONS,
    )
    op.create_index("ix_preset_usage_job_id", "preset_usage", ["job_id"])
    op.create_table(
        "preset_examples",
        sa.Column("preset_id", sa.String(length=40), nullable=False),
        sa.Column("output_id", sa.String(length=40), nullable=False),
        sa.Column("upload_id", sa.String(length=40), nullable=False),
        sa.Column("added", EVENT_ID, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(["preset_id"], ["presets.id"]),
        sa.PrimaryKeyConstraint("preset_id", "output_id"),
        **TABLE_OPTIONS,
    )
    op.create_index("ix_preset_examples_preset_id_added", "preset_examples", ["preset_id", "added"])


def _create_personas() -> None:
    op.create_table(
        "personas",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("batch_id", sa.String(length=40), nullable=False),
        sa.Column("group_id", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("brief", sa.Text(), nullable=True),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.Column("error_log", sa.JSON(), nullable=False),
        sa.Column("data_job_id", sa.String(length=40), nullable=True),
        sa.Column("base_job_id", sa.String(length=40), nullable=True),
        sa.Column("variations_job_id", sa.String(length=40), nullable=True),
        sa.Column("base_output_id", sa.String(length=40), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(["group_id"], ["groups.id"]),
        sa.PrimaryKeyConstraint("id"),
        **TABLE_OPTIONS,
    )
    op.create_index("ix_personas_batch_id", "personas", ["batch_id"])
    op.create_index("ix_personas_group_id", "personas", ["group_id"])


def downgrade() -> None:
    op.drop_table("personas")
    op.drop_table("characters")
    op.drop_table("preset_examples")
    op.drop_table("preset_usage")
    op.drop_table("presets")
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("attributes")
    with op.batch_alter_table("outputs") as batch:
        batch.drop_column("text")
        batch.drop_column("kind")
    op.drop_index("ix_jobs_source_id_id", table_name="jobs")
    op.drop_index("ix_jobs_rerun_of", table_name="jobs")
    op.drop_index("ix_jobs_parent_output_id", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        for name in reversed(JOB_LINKS):
            batch.drop_column(name)
