"""A group's gallery: every image of every job, filtered by job, status and prompt text, in
keyset pages."""

from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from control_plane.models import OutputStatus
from control_plane.schemas import OutputDetail
from control_plane.services import gallery, groups
from control_plane.web.deps import GroupId, PlatformDep, SessionDep, ViewerDep
from control_plane.web.present import output_detail

router = APIRouter(prefix="/api/groups", tags=["groups"])

JobFilter = Annotated[str | None, Query(max_length=40, description="one job's images")]
StatusFilter = Annotated[OutputStatus | None, Query(description="images in this status")]
PromptFilter = Annotated[
    str | None,
    Query(max_length=gallery.PROMPT_SEARCH_MAX, description="images whose prompt contains it"),
]
Cursor = Annotated[str | None, Query(max_length=200, description="`next` of the page before")]
GalleryLimit = Annotated[int, Query(ge=1, le=gallery.GALLERY_PAGE_MAX)]


class GalleryImages(BaseModel):
    """A page of a group's images, newest job first (a job's last image first), and the
    cursor to the next page (None: the last one)."""

    images: list[OutputDetail]
    next: str | None


@router.get("/{group_id}/gallery")
def group_gallery(
    group_id: GroupId,
    request: Request,
    platform: PlatformDep,
    session: SessionDep,
    viewer: ViewerDep,
    job_id: JobFilter = None,
    status: StatusFilter = None,
    prompt: PromptFilter = None,
    cursor: Cursor = None,
    limit: GalleryLimit = gallery.GALLERY_PAGE_DEFAULT,
) -> GalleryImages:
    """The group's images of every job, `limit` at a time: pass `next` back as `cursor`."""
    group = groups.get_group(session, group_id, viewer)
    filters = gallery.GalleryFilters(job_id=job_id, status=status, prompt=prompt)
    page = gallery.page_of_gallery(session, group.id, filters, cursor, limit)
    return GalleryImages(
        images=[output_detail(request, platform.storage, image, ()) for image in page.images],
        next=page.next_cursor,
    )
