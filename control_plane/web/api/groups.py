from fastapi import APIRouter, Request, status
from fastapi.concurrency import run_in_threadpool

from control_plane.schemas import GroupCounts, GroupCreate, GroupPublic, Page, UploadPublic
from control_plane.services import cleanup, groups, uploads
from control_plane.web.deps import (
    GroupId,
    PageLimit,
    PageNumber,
    PlatformDep,
    SessionDep,
    ViewerDep,
)
from control_plane.web.present import upload_public

router = APIRouter(prefix="/api/groups", tags=["groups"])


@router.post("", status_code=status.HTTP_201_CREATED)
def create_group(body: GroupCreate, session: SessionDep, viewer: ViewerDep) -> GroupPublic:
    group = groups.create_group(session, body.name, viewer.user_id)
    return GroupPublic(**group.model_dump(), counts=GroupCounts())


@router.get("")
def list_groups(
    session: SessionDep, viewer: ViewerDep, page: PageNumber = 1, limit: PageLimit = 20
) -> Page[GroupPublic]:
    """The viewer's groups (everyone's for an admin), newest first."""
    total, rows = groups.page_of_groups(session, page, limit, viewer)
    data = [GroupPublic(**group.model_dump()) for group in rows]
    return Page(data=data, total=total, page=page, limit=limit)


@router.delete("/{group_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_group(
    group_id: GroupId, platform: PlatformDep, session: SessionDep, viewer: ViewerDep
) -> None:
    """Delete the group, its uploads, jobs and images (409 while a job is running)."""
    await run_in_threadpool(cleanup.delete_group, session, platform.storage, group_id, viewer)


@router.get("/{group_id}")
def get_group(group_id: GroupId, session: SessionDep, viewer: ViewerDep) -> GroupPublic:
    group = groups.get_group(session, group_id, viewer)
    return GroupPublic(**group.model_dump(), counts=groups.group_counts(session, group.id))


@router.get("/{group_id}/uploads")
def list_uploads(
    group_id: GroupId,
    request: Request,
    platform: PlatformDep,
    session: SessionDep,
    viewer: ViewerDep,
    page: PageNumber = 1,
    limit: PageLimit = 20,
) -> Page[UploadPublic]:
    """The group's uploads, oldest first (their sha256 tells a client what is already here)."""
    group = groups.get_group(session, group_id, viewer)
    total, rows = uploads.page_of_uploads(session, group.id, page, limit)
    data = [upload_public(request, platform.storage, upload) for upload in rows]
    return Page(data=data, total=total, page=page, limit=limit)
