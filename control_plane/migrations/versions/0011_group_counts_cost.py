"""a group's counts read from one index again: its jobs' counters and their cost

The counts of a group (the UI index's 50 at once) sum its jobs' counters and, since costs
came, their `cost_usd`, which ix_jobs_group_id_counters lacked: every job's row was read
(100,000 jobs: 108 ms against 28 ms with the column in the index, on MariaDB).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 04:00:00

"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COUNTERS = ["group_id", "total", "succeeded", "failed", "blocked"]


def upgrade() -> None:
    op.create_index("ix_jobs_group_id_counts", "jobs", [*COUNTERS, "cost_usd"])
    op.drop_index("ix_jobs_group_id_counters", table_name="jobs")


def downgrade() -> None:
    op.create_index("ix_jobs_group_id_counters", "jobs", COUNTERS)
    op.drop_index("ix_jobs_group_id_counts", table_name="jobs")
