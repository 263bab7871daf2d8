"""Pages for looking at what was made: a group's gallery, one image with its references (the
page the gallery's lightbox shows in place), and a semi-automatic submission's sets."""

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from sqlmodel import Session

from control_plane.access import Viewer
from control_plane.errors import InvalidRequest
from control_plane.models import ACTIVE_JOB, Job, Output, OutputStatus
from control_plane.services import gallery, groups, jobs, uploads
from control_plane.web.deps import (
    BatchId,
    GroupId,
    OutputId,
    PageNumber,
    PlatformDep,
    SessionDep,
    UploadId,
    ViewerDep,
)
from control_plane.web.present import file_url, job_public, output_public, upload_public
from control_plane.web.ui.pages import fragment, page_count, render
from shared.storage import Storage

router = APIRouter(include_in_schema=False)
IMAGES_ON_GALLERY_PAGE = 60
MOST_ON_GALLERY_PAGE = 240
JOBS_IN_GALLERY_FILTER = 200
SETS_ON_BATCH_PAGE = 25
STATUSES = [status.value for status in OutputStatus]


@router.get("/groups/{group_id}/gallery", response_class=HTMLResponse)
def gallery_page(
    group_id: GroupId,
    request: Request,
    platform: PlatformDep,
    session: SessionDep,
    viewer: ViewerDep,
    job: Annotated[str, Query(max_length=40)] = "",
    status: Annotated[str, Query(max_length=20)] = "",
    prompt: Annotated[str, Query(max_length=gallery.PROMPT_SEARCH_MAX)] = "",
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=MOST_ON_GALLERY_PAGE)] = IMAGES_ON_GALLERY_PAGE,
) -> HTMLResponse:
    """Every image of the group, newest job first, `limit` at a time (the link to the next
    page carries the filters, the limit and the cursor)."""
    group = groups.get_group(session, group_id, viewer)
    filters = gallery.GalleryFilters(
        job_id=job or None, status=_status(status), prompt=prompt.strip()
    )
    page = gallery.page_of_gallery(session, group.id, filters, cursor, limit)
    shown = [output_public(request, platform.storage, image) for image in page.images]
    context = {
        "group": group,
        "counts": groups.group_counts(session, group.id),
        "images": shown,
        "jobs": _jobs_to_filter_by(session, viewer, group.id),
        "statuses": STATUSES,
        "chosen": {"job": job, "status": status, "prompt": prompt},
        "filtered": bool(job or status or prompt.strip()),
        "next": _next_link(request, page.next_cursor),
        "paged": cursor is not None,
        "limit": limit,
        "default_limit": IMAGES_ON_GALLERY_PAGE,
    }
    return render(request, "gallery.html", context)


def _status(chosen: str) -> OutputStatus | None:
    """The status the filter form chose ("" for any)."""
    if chosen and chosen not in STATUSES:
        raise InvalidRequest(f"status {chosen[:20]!r} is none of {', '.join(STATUSES)}")
    return OutputStatus(chosen) if chosen else None


def _jobs_to_filter_by(session: Session, viewer: Viewer, group_id: str) -> list[Job]:
    filters = jobs.JobFilters(viewer, group_id=group_id)
    return jobs.jobs_after(session, JOBS_IN_GALLERY_FILTER, None, filters).rows


def _next_link(request: Request, cursor: str | None) -> str | None:
    if cursor is None:
        return None
    return str(request.url.include_query_params(cursor=cursor).replace(scheme="", netloc=""))


@router.get("/outputs/{output_id}", response_class=HTMLResponse)
def output_page(
    output_id: OutputId,
    request: Request,
    platform: PlatformDep,
    session: SessionDep,
    viewer: ViewerDep,
) -> HTMLResponse:
    """One image as the lightbox shows it: the image, its references side by side, what made
    it (prompt, seed, model, size, cost), its status or why it failed, and its download."""
    output = jobs.get_output(session, output_id, viewer)
    job = jobs.get_job(session, output.job_id, viewer)
    context = {
        "image": output_public(request, platform.storage, output),
        "job": job_public(job),
        "references": _references(request, platform.storage, session, output),
        "download_name": _download_name(output),
    }
    return render(request, "output.html", context)


@router.get("/uploads/{upload_id}", response_class=HTMLResponse)
def upload_page(
    upload_id: UploadId,
    request: Request,
    platform: PlatformDep,
    session: SessionDep,
    viewer: ViewerDep,
) -> HTMLResponse:
    """One upload as the lightbox shows it (the group page's grid opens it): the image, its
    file, size and attributes, and its download."""
    upload = uploads.get_upload(session, upload_id, viewer)
    shown = upload_public(request, platform.storage, upload)
    return render(request, "upload.html", {"upload": shown})


def _references(
    request: Request, storage: Storage, session: Session, output: Output
) -> list[dict[str, Any]]:
    shown = []
    for reference in gallery.references_of(session, output):
        route, ids = (
            ("upload", {"upload_id": reference.id})
            if reference.kind == "upload"
            else ("output", {"output_id": reference.id})
        )
        url = file_url(request, storage, f"{route}_file", reference.storage_key, **ids)
        thumbnail = file_url(request, storage, f"{route}_thumbnail", reference.thumbnail_key, **ids)
        shown.append({"label": reference.label, "url": url, "thumbnail_url": thumbnail or url})
    return shown


def _download_name(output: Output) -> str:
    extension = (output.content_type or "image/png").rpartition("/")[2].replace("jpeg", "jpg")
    return f"{output.job_id}-{output.position}.{extension}"


@router.get("/batches/{batch_id}", response_class=HTMLResponse)
def batch_page(
    batch_id: BatchId,
    request: Request,
    platform: PlatformDep,
    session: SessionDep,
    viewer: ViewerDep,
    page: PageNumber = 1,
) -> HTMLResponse:
    """A submission's sets, each a grid of its images with V1 to V4 (variations of an image)
    and a rerun of the set."""
    context = _batch_context(request, platform.storage, session, viewer, batch_id, page)
    return render(request, "batch.html", context)


@router.get("/live/batches/{batch_id}", response_class=HTMLResponse)
def batch_fragment(
    batch_id: BatchId,
    request: Request,
    platform: PlatformDep,
    session: SessionDep,
    viewer: ViewerDep,
    page: PageNumber = 1,
) -> HTMLResponse:
    """The batch page's sets (page `page`), for live.js to update them in place."""
    context = _batch_context(request, platform.storage, session, viewer, batch_id, page)
    return fragment(request, "_batch_live.html", context, running=context["running"])


def _batch_context(
    request: Request,
    storage: Storage,
    session: Session,
    viewer: Viewer,
    batch_id: str,
    page: int,
) -> dict[str, Any]:
    found = gallery.batch_sets(session, batch_id, viewer, page, SETS_ON_BATCH_PAGE)
    shown = [image.id for each in found.sets for image in each.images]
    variations = jobs.variations_of_images(session, shown)
    sets = [
        {
            "job": job_public(each.job),
            "images": [
                output_public(request, storage, image, variations.get(image.id, ()))
                for image in each.images
            ],
        }
        for each in found.sets
    ]
    first = found.sets[0].job if found.sets else None
    return {
        "batch_id": batch_id,
        "sets": sets,
        "total_sets": found.total,
        "group_id": first.group_id if first else None,
        "page": page,
        "pages": page_count(found.total, SETS_ON_BATCH_PAGE),
        "running": any(each.job.status in ACTIVE_JOB for each in found.sets),
        "live_src": f"/live/batches/{batch_id}?page={page}",
    }
