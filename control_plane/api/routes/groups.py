from fastapi import APIRouter, status
from fastapi.concurrency import run_in_threadpool
from sqlmodel import col, func, select

from control_plane.api.deps import PageLimit, PageNumber, PlatformDep, SessionDep
from control_plane.errors import NotFound
from control_plane.models import Group, Job, Output, OutputStatus, Upload
from control_plane.schemas import GroupCounts, GroupCreate, GroupPublic, Page
from control_plane.services import cleanup
from control_plane.services.finalise import output_counts

router = APIRouter(prefix="/api/groups", tags=["groups"])


@router.post("", status_code=status.HTTP_201_CREATED)
def create_group(body: GroupCreate, session: SessionDep) -> GroupPublic:
    group = Group(name=body.name)
    session.add(group)
    session.commit()
    return GroupPublic(**group.model_dump(), counts=GroupCounts())


@router.get("")
def list_groups(
    session: SessionDep, page: PageNumber = 1, limit: PageLimit = 20
) -> Page[GroupPublic]:
    total = session.exec(select(func.count()).select_from(Group)).one()
    groups = session.exec(
        select(Group).order_by(col(Group.id).desc()).offset((page - 1) * limit).limit(limit)
    ).all()
    data = [GroupPublic(**group.model_dump()) for group in groups]
    return Page(data=data, total=total, page=page, limit=limit)


@router.delete("/{group_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_group(group_id: str, platform: PlatformDep, session: SessionDep) -> None:
    """Delete the group, its uploads, jobs and images (409 while a job is running)."""
    await run_in_threadpool(cleanup.delete_group, session, platform.storage, group_id)


@router.get("/{group_id}")
def get_group(group_id: str, session: SessionDep) -> GroupPublic:
    group = session.get(Group, group_id)
    if group is None:
        raise NotFound(f"group {group_id} does not exist")
    return GroupPublic(**group.model_dump(), counts=group_counts(session, group_id))


def group_counts(session: SessionDep, group_id: str) -> GroupCounts:
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
