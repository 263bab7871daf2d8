"""a covering index for a group's counts: its jobs with their counters

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 00:20:00

"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = (
    # a group's counts are its jobs' counters summed: read from this index alone
    (
        "ix_jobs_group_id_counters",
        "jobs",
        ["group_id", "total", "succeeded", "failed", "blocked"],
    ),
)


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
