"""dispatch budgets: losses of a chunk, failures to apply a report

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-08 21:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("losses", "finish_failures")


def upgrade() -> None:
    with op.batch_alter_table("dispatches") as batch:
        for name in COLUMNS:
            batch.add_column(sa.Column(name, sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("dispatches") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)
