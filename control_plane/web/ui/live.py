"""Pages that change while they are open: the job page, the jobs dashboard, and the HTML
fragments live.js polls to update them, the group page's jobs and the index in place.

A fragment is the page's changing regions rendered alone (the same templates the page
includes); its `X-Pixelfleet-Running` header says whether anything shown is still running,
so that the script stops polling when nothing is.
"""

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BeforeValidator

from control_plane import queueing
from control_plane.access import Viewer
from control_plane.errors import InvalidRequest
from control_plane.models import (
    ACTIVE_JOB,
    Job,
    JobMode,
    JobStatus,
    Lane,
    Output,
    OutputStatus,
    utcnow,
)
from control_plane.runpod.sender import window
from control_plane.schemas import JobDetail, JobPublic
from control_plane.services import groups, jobs
from control_plane.web.deps import GroupId, JobId, PageNumber, PlatformDep, SessionDep, ViewerDep
from control_plane.web.present import job_detail, job_public
from control_plane.web.ui.pages import fragment, page_count, render, templates
from control_plane.web.ui.routes import GROUPS_PER_PAGE, JOBS_ON_GROUP_PAGE
from shared.ids import is_id

router = APIRouter(include_in_schema=False)
# Statuses in the words the pages use: an image waiting for its dispatch is "queued", one
# whose dispatch is with RunPod "running"; a job being worked on is "running".
JOB_WORDS = {JobStatus.PROCESSING: "running"}
IMAGE_WORDS = {OutputStatus.PENDING: "queued"}
templates.env.globals |= {
    "job_word": lambda status: JOB_WORDS.get(status, status),
    "image_word": lambda status: IMAGE_WORDS.get(status, status),
}
JOBS_PER_PAGE = 25
IMAGES_ON_JOB_PAGE = 100
GROUPS_IN_FILTER = 200  # the newest groups offered by the dashboard's group filter
Cursor = Query(None, max_length=100)
# The job fragment's `since`: the X-Pixelfleet-Version of the answer before (microseconds since
# the epoch). Its tiles are the images changed since then only, minus RECENT: a change whose
# transaction commits a moment after its timestamp is still sent, once more.
VERSION_HEADER = "X-Pixelfleet-Version"
RECENT = timedelta(seconds=5)
Since = Query(None, max_length=20, pattern=r"^\d+$", description="`X-Pixelfleet-Version` before")


def _version(moment: datetime) -> str:
    return str(int(moment.replace(tzinfo=UTC).timestamp() * 1_000_000))


def _changed_after(since: str) -> datetime:
    moment = datetime.fromtimestamp(min(int(since), 2**52) / 1_000_000, UTC)
    return moment.replace(tzinfo=None) - RECENT


# -- the job page -------------------------------------------------------------------------


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(
    job_id: JobId,
    request: Request,
    platform: PlatformDep,
    session: SessionDep,
    viewer: ViewerDep,
    cursor: str | None = Cursor,
) -> HTMLResponse:
    """The job and a page of its images, with links to the pages before and after."""
    context = _job_context(request, platform, session, viewer, job_id, cursor)
    context |= _image_page_links(session, context["job"], cursor)
    return render(request, "job.html", context)


@router.get("/live/jobs/{job_id}", response_class=HTMLResponse)
def job_fragment(
    job_id: JobId,
    request: Request,
    platform: PlatformDep,
    session: SessionDep,
    viewer: ViewerDep,
    cursor: str | None = Cursor,
    since: str | None = Since,
) -> HTMLResponse:
    """The job page's changing regions: status, progress, lane, actions and the tiles of the
    page of images at `cursor` (only those: a 20,000-image job costs what 100 images do),
    and of these only the ones changed `since` (none signs its URLs again unchanged)."""
    changed_after = _changed_after(since) if since else None
    context = _job_context(request, platform, session, viewer, job_id, cursor, changed_after)
    version = {VERSION_HEADER: context["version"]}
    return fragment(request, "_job_live.html", context, running=context["running"], headers=version)


def _job_context(
    request: Request,
    platform: PlatformDep,
    session: SessionDep,
    viewer: Viewer,
    job_id: str,
    cursor: str | None,
    changed_after: datetime | None = None,
) -> dict[str, Any]:
    now = utcnow()
    job = jobs.get_job(session, job_id, viewer)
    page = jobs.page_of_images(session, job.id, cursor=cursor, limit=IMAGES_ON_JOB_PAGE)
    if changed_after is not None:  # a tile changes with its image, or with a new variation set
        varied = jobs.varied_since(session, [image.id for image in page.images], changed_after)
        changed = [
            image
            for image in page.images
            if image.updated_at >= changed_after or image.id in varied
        ]
        page = replace(page, images=changed)
    running = job.status in ACTIVE_JOB
    batch = jobs.batch_progress(session, job) if job.lane == Lane.BATCH and running else None
    view = jobs.JobView(job, page, jobs.reruns_of(session, [job.id]).get(job.id, []), batch)
    detail = job_detail(request, platform.storage, view)
    if running:
        positions = queueing.job_positions(session, window(platform), [job])
        detail.queue_position = positions.get(job.id)
    parent = job.parent_output_id and session.get(Output, job.parent_output_id)
    query = f"?{urlencode({'cursor': cursor})}" if cursor else ""
    return {
        "job": detail,
        "running": running,
        "parent_job_id": parent.job_id if parent else None,
        "varies": job.mode in (JobMode.SEMI_AUTOMATIC, JobMode.VARIATION),
        "live_src": f"/live/jobs/{job.id}{query}",
        "version": _version(now),
        "some_images": changed_after is not None,  # not a list of all: live.js removes none
    }


def _image_page_links(session: SessionDep, job: JobDetail, cursor: str | None) -> dict[str, Any]:
    first = job.images[0].position if job.images else None
    return {
        "paged": cursor is not None or job.images_next is not None,
        "previous": _job_page_link(session, job.id, first) if cursor else None,
        "next": f"/jobs/{job.id}?cursor={job.images_next}" if job.images_next else None,
    }


def _job_page_link(session: SessionDep, job_id: str, first: int | None) -> str:
    """The link to the page of images before the one starting at position `first`."""
    before = jobs.cursor_before(session, job_id, first, IMAGES_ON_JOB_PAGE) if first else None
    return f"/jobs/{job_id}?cursor={before}" if before else f"/jobs/{job_id}"


# -- the group page's jobs and counts, the index -------------------------------------------


@router.get("/live/groups/{group_id}", response_class=HTMLResponse)
def group_fragment(
    group_id: GroupId, request: Request, session: SessionDep, viewer: ViewerDep
) -> HTMLResponse:
    """The group page's counts and its jobs list."""
    context = group_live_context(session, viewer, group_id)
    return fragment(request, "_group_live.html", context, running=context["running"])


def group_live_context(session: SessionDep, viewer: Viewer, group_id: str) -> dict[str, Any]:
    """What the group page's live regions show (the page renders them with the rest)."""
    group = groups.get_group(session, group_id, viewer)
    counts = groups.group_counts(session, group.id)
    group_jobs = jobs.jobs_after(
        session, JOBS_ON_GROUP_PAGE, None, jobs.JobFilters(viewer, group_id=group.id)
    ).rows
    running = any(job.status in ACTIVE_JOB for job in group_jobs)
    return {
        "group": group,
        "counts": counts,
        "jobs": [job_public(job) for job in group_jobs],
        "running": running,
    }


@router.get("/live/groups", response_class=HTMLResponse)
def index_fragment(
    request: Request, session: SessionDep, viewer: ViewerDep, page: PageNumber = 1
) -> HTMLResponse:
    """The index's rows of groups (page `page`) with their counts."""
    context = index_context(session, viewer, page)
    return fragment(request, "_groups_live.html", context, running=context["running"])


def index_context(session: SessionDep, viewer: Viewer, page: int) -> dict[str, Any]:
    """The index's page of groups with their counts (its live region)."""
    total, page_groups = groups.page_of_groups(session, page, GROUPS_PER_PAGE, viewer)
    counts = groups.counts_of_groups(session, [group.id for group in page_groups])
    rows = [(group, counts[group.id]) for group in page_groups]
    return {
        "rows": rows,
        "page": page,
        "pages": page_count(total, GROUPS_PER_PAGE),
        "running": any(tally.pending for _, tally in rows),
    }


# -- the jobs dashboard --------------------------------------------------------------------


@dataclass(frozen=True)
class _DashboardPage:
    """Which jobs the dashboard shows: its filters, the page (`cursor`) and its length."""

    filters: jobs.JobFilters
    cursor: str | None
    limit: int


def _none_if_empty(value: object) -> object:
    return value or None


def _dashboard_page(
    session: SessionDep,
    viewer: ViewerDep,
    status: Annotated[JobStatus | None, BeforeValidator(_none_if_empty)] = None,
    mode: Annotated[JobMode | None, BeforeValidator(_none_if_empty)] = None,
    group_id: Annotated[str | None, Query(max_length=40)] = None,
    cursor: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=200, description="jobs per page")] = JOBS_PER_PAGE,
) -> _DashboardPage:
    """The dashboard's query (its filter form sends "" for "any")."""
    if group_id:
        groups.get_group(session, group_id, viewer)  # 404 for a group the viewer can't see
    filters = jobs.JobFilters(viewer, status=status, mode=mode, group_id=group_id or None)
    return _DashboardPage(filters, cursor or None, limit)


DashboardPage = Annotated[_DashboardPage, Depends(_dashboard_page)]


@router.get("/jobs", response_class=HTMLResponse)
def dashboard(
    request: Request,
    platform: PlatformDep,
    session: SessionDep,
    viewer: ViewerDep,
    shown: DashboardPage,
) -> HTMLResponse:
    """Every job of the viewer, newest first, filtered by status, mode and group, a page at a
    time (keyset: `cursor` is the last job of the page before)."""
    context = _dashboard_context(platform, session, shown)
    filters = shown.filters
    offered = groups.page_of_groups(session, 1, GROUPS_IN_FILTER, viewer)[1]
    listed = {group.id for group in offered}
    if filters.group_id and filters.group_id not in listed:
        offered = [groups.get_group(session, filters.group_id, viewer), *offered]
    older = context["older"]
    newer = (
        jobs.newer_cursor(session, shown.limit, context["first_id"], filters)
        if shown.cursor
        else None
    )
    context |= {
        "groups": offered,
        "default_limit": JOBS_PER_PAGE,
        "statuses": list(JobStatus),
        "modes": list(JobMode),
        "older_link": _dashboard_link(replace(shown, cursor=older)) if older else None,
        "newer_link": _dashboard_link(replace(shown, cursor=newer)) if shown.cursor else None,
    }
    return render(request, "jobs.html", context)


@router.get("/live/jobs", response_class=HTMLResponse)
def dashboard_fragment(
    request: Request,
    platform: PlatformDep,
    session: SessionDep,
    shown: DashboardPage,
) -> HTMLResponse:
    """The dashboard's rows (the same filters and page as the dashboard's address)."""
    context = _dashboard_context(platform, session, shown)
    return fragment(request, "_jobs_live.html", context, running=context["running"])


def _dashboard_context(
    platform: PlatformDep, session: SessionDep, shown: _DashboardPage
) -> dict[str, Any]:
    cursor = shown.cursor
    if cursor is not None and not is_id("job", cursor):
        raise InvalidRequest(
            "this page of jobs does not exist (its address was changed): go back to the first page"
        )
    listed = jobs.jobs_after(session, shown.limit, cursor, shown.filters)
    names = groups.names_of_groups(session, {job.group_id for job in listed.rows})
    positions = queueing.job_positions(session, window(platform), listed.rows)
    rows = [_dashboard_row(session, job, positions) for job in listed.rows]
    return {
        "rows": rows,
        "group_names": names,
        "filters": shown.filters,
        "cursor": cursor,
        "limit": shown.limit,
        "older": listed.next,
        "first_id": listed.rows[0].id if listed.rows else cursor,
        "running": any(job.status in ACTIVE_JOB for job in listed.rows),
        "live_src": f"/live/jobs{_query(shown)}",
    }


def _dashboard_row(session: SessionDep, job: Job, positions: dict[str, int]) -> JobPublic:
    row = job_public(job)
    row.queue_position = positions.get(job.id)
    if job.lane == Lane.BATCH and job.status in ACTIVE_JOB:
        row.batch = jobs.batch_progress(session, job)
    return row


def _query(shown: _DashboardPage) -> str:
    """The query string of the dashboard's address showing `shown`."""
    filters = shown.filters
    wanted = {
        "status": filters.status,
        "mode": filters.mode,
        "group_id": filters.group_id,
        "cursor": shown.cursor,
        "limit": shown.limit if shown.limit != JOBS_PER_PAGE else None,
    }
    kept = {key: str(value) for key, value in wanted.items() if value}
    return f"?{urlencode(kept)}" if kept else ""


def _dashboard_link(shown: _DashboardPage) -> str:
    return f"/jobs{_query(shown)}"
