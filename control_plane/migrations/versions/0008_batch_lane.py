"""the batch lane: a job's lane, batch deadline and fallbacks; a dispatch's task and its
Gemini batch (name, state, Google's counts, when its next step is due)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 08:20:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH_COUNTS = ("batch_requests", "batch_succeeded", "batch_failed", "batch_pending")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("lane", sa.String(length=10), nullable=False, server_default="online")
        )
        batch.add_column(sa.Column("batch_deadline_at", TIMESTAMP, nullable=True))
        batch.add_column(sa.Column("fallback", sa.JSON(), nullable=True))
    with op.batch_alter_table("dispatches") as batch:
        batch.add_column(
            sa.Column("task", sa.String(length=20), nullable=False, server_default="generate")
        )
        batch.add_column(sa.Column("batch_name", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("batch_state", sa.String(length=20), nullable=True))
        for name in BATCH_COUNTS:
            batch.add_column(sa.Column(name, sa.Integer(), nullable=True))
        batch.add_column(sa.Column("next_poll_at", TIMESTAMP, nullable=True))
        batch.add_column(
            sa.Column("batch_failures", sa.Integer(), nullable=False, server_default="0")
        )
    op.create_index("ix_dispatches_status_next_poll_at", "dispatches", ["status", "next_poll_at"])


def downgrade() -> None:
    op.drop_index("ix_dispatches_status_next_poll_at", table_name="dispatches")
    with op.batch_alter_table("dispatches") as batch:
        batch.drop_column("batch_failures")
        batch.drop_column("next_poll_at")
        for name in reversed(BATCH_COUNTS):
            batch.drop_column(name)
        batch.drop_column("batch_state")
        batch.drop_column("batch_name")
        batch.drop_column("task")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("fallback")
        batch.drop_column("batch_deadline_at")
        batch.drop_column("lane")
