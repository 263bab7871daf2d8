"""Groups: creating one, finding one, a page of them, and one group's counts."""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlmodel import Session, col, func, select

from control_plane.errors import NotFound
from control_plane.models import Group, Job, Output, OutputStatus, Upload
from control_plane.schemas import GroupCounts


def create_group(session: Session, name: str) -> Group:
    """A new, empty group (committed)."""
    group = Group(name=name)
    session.add(group)
    session.commit()
    return group


def get_group(session: Session, group_id: str) -> Group:
    group = session.get(Group, group_id)
    if group is None:
        raise NotFound(f"group {group_id} does not exist")
    return group


def page_of_groups(session: Session, page: int, limit: int) -> tuple[int, Sequence[Group]]:
    """The total number of groups, and page `page` (1-based) of them, newest first."""
    total = session.exec(select(func.count()).select_from(Group)).one()
    groups = session.exec(
        select(Group).order_by(col(Group.id).desc()).offset((page - 1) * limit).limit(limit)
    ).all()
    return total, groups


def group_counts(session: Session, group_id: str) -> GroupCounts:
    return counts_of_groups(session, [group_id])[group_id]


_JOBS, _UPLOADS = "@jobs", "@uploads"  # never an output status


def counts_of_groups(session: Session, group_ids: Sequence[str]) -> dict[str, GroupCounts]:
    """The counts of each group (a page of them at most), in one statement whatever their
    number: outputs by group and status, jobs and uploads by group, each read from an index
    alone. `outputs` counts every kind of output, text answers (personas' data) included."""
    ids = list(group_ids)
    tallies: dict[str, dict[str, int]] = {group_id: {} for group_id in ids}
    if ids:
        for group_id, what, number in session.execute(_counts_statement(ids)).all():
            tallies[group_id][what] = number
    return {group_id: _group_counts(tally) for group_id, tally in tallies.items()}


def _counts_statement(ids: list[str]) -> sa.CompoundSelect:
    by_status = sa.select(
        col(Output.group_id), col(Output.status), sa.func.count().label("number")
    ).where(col(Output.group_id).in_(ids))
    return sa.union_all(
        by_status.group_by(col(Output.group_id), col(Output.status)),
        *(
            sa.select(col(table.group_id), sa.literal(what), sa.func.count())
            .where(col(table.group_id).in_(ids))
            .group_by(col(table.group_id))
            for table, what in ((Job, _JOBS), (Upload, _UPLOADS))
        ),
    )


def _group_counts(tally: dict[str, int]) -> GroupCounts:
    return GroupCounts(
        uploads=tally.get(_UPLOADS, 0),
        jobs=tally.get(_JOBS, 0),
        outputs=sum(number for what, number in tally.items() if not what.startswith("@")),
        succeeded=tally.get(OutputStatus.SUCCEEDED, 0),
        failed=tally.get(OutputStatus.FAILED, 0),
        blocked=tally.get(OutputStatus.BLOCKED, 0),
        pending=tally.get(OutputStatus.PENDING, 0) + tally.get(OutputStatus.RUNNING, 0),
    )
