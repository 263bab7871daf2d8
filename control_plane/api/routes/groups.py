from fastapi import APIRouter, status
from fastapi.concurrency import run_in_threadpool

from control_plane.api.deps import PageLimit, PageNumber, PlatformDep, SessionDep
from control_plane.errors import NotFound
from control_plane.models import Group
from control_plane.schemas import GroupCounts, GroupCreate, GroupPublic, Page
from control_plane.services import cleanup
from control_plane.services import groups as groups_service

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
    total, groups = groups_service.page_of_groups(session, page, limit)
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
    return GroupPublic(**group.model_dump(), counts=groups_service.group_counts(session, group_id))
