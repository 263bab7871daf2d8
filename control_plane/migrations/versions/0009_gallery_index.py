"""a group's gallery: outputs by group, job and position (replacing the index by group alone)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 11:00:00

"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GALLERY_INDEX = ("ix_outputs_group_id_job_id_position", ["group_id", "job_id", "position"])
GROUP_INDEX = ("ix_outputs_group_id", ["group_id"])


def upgrade() -> None:
    # the new index first: MySQL keeps an index under the foreign key on group_id throughout
    op.create_index(GALLERY_INDEX[0], "outputs", GALLERY_INDEX[1])
    op.drop_index(GROUP_INDEX[0], table_name="outputs")


def downgrade() -> None:
    op.create_index(GROUP_INDEX[0], "outputs", GROUP_INDEX[1])
    op.drop_index(GALLERY_INDEX[0], table_name="outputs")
