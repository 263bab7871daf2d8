"""the batch lane's poll backoff: how many polls in a row saw a dispatch's batch unchanged

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 11:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("dispatches") as batch:
        batch.add_column(
            sa.Column("batch_quiet_polls", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("dispatches") as batch:
        batch.drop_column("batch_quiet_polls")
