"""Groups: creating one, finding one, a page of them, and one group's counts."""

from collections.abc import Sequence

from sqlmodel import Session, col, func, select

from control_plane.errors import NotFound
from control_plane.lifecycle import output_counts
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
    by_status = output_counts(session, col(Output.group_id) == group_id)
    return GroupCounts(
        uploads=session.exec(select(func.count()).where(Upload.group_id == group_id)).one(),
        jobs=session.exec(select(func.count()).where(Job.group_id == group_id)).one(),
        outputs=sum(by_status.values()),
        succeeded=by_status.get(OutputStatus.SUCCEEDED, 0),
        failed=by_status.get(OutputStatus.FAILED, 0),
        blocked=by_status.get(OutputStatus.BLOCKED, 0),
        pending=by_status.get(OutputStatus.PENDING, 0) + by_status.get(OutputStatus.RUNNING, 0),
    )
