"""Groups: creating one, finding one, a page of them, and one group's counts."""

from collections.abc import Collection, Sequence

import sqlalchemy as sa
from sqlmodel import Session, col, func, select

from control_plane.access import Viewer
from control_plane.models import Group, Job, Upload
from control_plane.schemas import GroupCounts
from control_plane.services.rows import fetch


def create_group(session: Session, name: str, user_id: str | None) -> Group:
    """A new, empty group of user `user_id` (committed)."""
    group = Group(name=name, user_id=user_id)
    session.add(group)
    session.commit()
    return group


def get_group(session: Session, group_id: str, viewer: Viewer) -> Group:
    return fetch(session, Group, group_id, "group", "grp", viewer=viewer)


def page_of_groups(
    session: Session, page: int, limit: int, viewer: Viewer
) -> tuple[int, Sequence[Group]]:
    """The number of the viewer's groups (every group for an admin), and page `page`
    (1-based) of them, newest first."""
    owned = viewer.owned(col(Group.user_id))
    total = session.exec(select(func.count()).select_from(Group).where(*owned)).one()
    groups = session.exec(
        select(Group)
        .where(*owned)
        .order_by(col(Group.id).desc())
        .offset((page - 1) * limit)
        .limit(limit)
    ).all()
    return total, groups


def names_of_groups(session: Session, group_ids: Collection[str]) -> dict[str, str]:
    """Each group's name by id (a page of them at most: one query)."""
    if not group_ids:
        return {}
    rows = session.exec(select(Group.id, Group.name).where(col(Group.id).in_(list(group_ids))))
    return dict(rows.all())


def group_counts(session: Session, group_id: str) -> GroupCounts:
    return counts_of_groups(session, [group_id])[group_id]


def counts_of_groups(session: Session, group_ids: Sequence[str]) -> dict[str, GroupCounts]:
    """The counts of each group (a page of them at most), in one statement whatever their
    number. Outputs by status are the sums of the group's jobs' counters (kept in the same
    transaction as each transition, see lifecycle), so a group of 400k outputs costs what a
    group of its jobs' number does. `outputs` counts every kind of output, text answers
    (personas' data) included, as a job's `total` does; `cost_usd` sums the jobs' actual
    costs."""
    ids = list(group_ids)
    tallies: dict[str, list[float]] = {group_id: [0] * len(_COLUMNS) for group_id in ids}
    if ids:
        for group_id, *numbers in session.execute(counts_statement(ids)).all():
            tallies[group_id] = [
                a + float(b or 0) for a, b in zip(tallies[group_id], numbers, strict=True)
            ]
    return {group_id: _group_counts(*tally) for group_id, tally in tallies.items()}


_COLUMNS = ("jobs", "outputs", "succeeded", "failed", "blocked", "uploads", "cost_usd")


def counts_statement(ids: list[str]) -> sa.CompoundSelect:
    """Rows (group id, *_COLUMNS) for `ids`: one from its jobs, one from its uploads."""
    zero = sa.literal(0)
    from_jobs = sa.select(
        col(Job.group_id),
        sa.func.count(),
        sa.func.sum(col(Job.total)),
        sa.func.sum(col(Job.succeeded)),
        sa.func.sum(col(Job.failed)),
        sa.func.sum(col(Job.blocked)),
        zero,
        sa.func.sum(col(Job.cost_usd)),
    ).where(col(Job.group_id).in_(ids))
    from_uploads = sa.select(
        col(Upload.group_id), zero, zero, zero, zero, zero, sa.func.count(), sa.literal(0.0)
    )
    return sa.union_all(
        from_jobs.group_by(col(Job.group_id)),
        from_uploads.where(col(Upload.group_id).in_(ids)).group_by(col(Upload.group_id)),
    )


def _group_counts(
    jobs: float,
    outputs: float,
    succeeded: float,
    failed: float,
    blocked: float,
    uploads: float,
    cost_usd: float,
) -> GroupCounts:
    return GroupCounts(
        uploads=int(uploads),
        jobs=int(jobs),
        outputs=int(outputs),
        succeeded=int(succeeded),
        failed=int(failed),
        blocked=int(blocked),
        pending=int(outputs - succeeded - failed - blocked),  # pending and running
        cost_usd=round(cost_usd, 6),
    )
