from typing import Annotated

from fastapi import APIRouter, Body, Query, Request, status
from fastapi.concurrency import run_in_threadpool

from control_plane import queueing
from control_plane.access import Viewer
from control_plane.errors import InvalidRequest
from control_plane.models import JobMode, JobStatus, OutputStatus
from control_plane.runpod.sender import window
from control_plane.schemas import (
    CursorPage,
    Estimate,
    EstimateRequest,
    JobDetail,
    JobImages,
    JobPublic,
    PackEstimate,
    PresetExamplesEstimate,
    RerunCreate,
    RerunEstimate,
    RerunPublic,
    SubmitRequest,
    SubmitResponse,
    VariationEstimate,
    WebhookDeliveryPublic,
)
from control_plane.services import (
    cleanup,
    estimates,
    jobs,
    pricing,
    reruns,
    submissions,
    webhooks,
)
from control_plane.web.deps import (
    SUBMISSION,
    JobId,
    PageLimit,
    PageNumber,
    PlatformDep,
    SessionDep,
    ViewerDep,
    character_id_of,
    group_id_of,
    job_id_of,
    output_id_of,
    preset_id_of,
)
from control_plane.web.present import delivery_public, job_detail, job_images, job_public
from shared.ids import is_id

router = APIRouter(prefix="/api/jobs", tags=["jobs"])
ImageLimit = Annotated[
    int, Query(ge=0, le=jobs.IMAGE_PAGE_MAX, description="most images in the answer")
]


@router.post("/submit", status_code=status.HTTP_201_CREATED, dependencies=SUBMISSION)
async def submit_jobs(
    body: SubmitRequest, platform: PlatformDep, session: SessionDep, viewer: ViewerDep
) -> SubmitResponse:
    """Plan and queue a submission; its dispatches go to RunPod in the background."""
    group_id_of(body.group_id)
    created = await run_in_threadpool(submissions.submit, session, platform.settings, body, viewer)
    return SubmitResponse(
        batch_id=created[0].batch_id,
        jobs=[job_public(job) for job in created],
        estimate=pricing.of_jobs(created),
    )


@router.post("/estimate")
async def estimate_jobs(
    body: EstimateRequest, platform: PlatformDep, session: SessionDep, viewer: ViewerDep
) -> Estimate:
    """What a submission would cost, without writing or sending anything: the body of
    `POST /api/jobs/submit` (any mode), or of a workflow's request with its `mode` and the
    id from its path (`variation` + `output_id`, `rerun` + `job_id`, `preset` + `preset_id`,
    `character-pack` + `character_id`, `persona`). Imports: `POST /api/jobs/import/estimate`.
    Refused as the submission would be (422, 404, 409)."""
    _check_ids(body)
    return await run_in_threadpool(estimates.estimate, session, platform.settings, body, viewer)


def _check_ids(body: estimates.EstimateBody) -> None:
    """404 for ids of the wrong shape, as the routes that submit say."""
    if isinstance(body, VariationEstimate):
        output_id_of(body.output_id)
    elif isinstance(body, RerunEstimate):
        job_id_of(body.job_id)
    elif isinstance(body, PresetExamplesEstimate):
        preset_id_of(body.preset_id)
        group_id_of(body.pool_group_id)
    elif isinstance(body, PackEstimate):
        character_id_of(body.character_id)
    group_id = getattr(body, "group_id", None)
    if group_id is not None:
        group_id_of(group_id)


@router.get("")
def list_jobs(
    session: SessionDep,
    platform: PlatformDep,
    viewer: ViewerDep,
    status_: JobStatus | None = Query(None, alias="status"),
    group_id: str | None = None,
    mode: JobMode | None = None,
    cursor: str | None = Query(None, description="`next` of the page before"),
    page: PageNumber | None = None,
    limit: PageLimit = 20,
    with_total: bool = Query(False, description="count the matching jobs too"),
) -> CursorPage[JobPublic]:
    """The viewer's jobs (everyone's for an admin), newest first, filtered by status, group
    and mode: the first page, then each page after `cursor` (the answer's `next`). `page`
    numbers still work (by offset, with their total); `total` otherwise only with
    `with_total=true`."""
    filters = jobs.JobFilters(viewer, status=status_, group_id=group_id, mode=mode)
    listed = _jobs_page(session, filters, cursor, page, limit)
    total = jobs.count_jobs(session, filters) if with_total or page is not None else None
    reruns = jobs.reruns_of(session, [job.id for job in listed.rows])
    data = [job_public(job, reruns.get(job.id, ())) for job in listed.rows]
    positions = queueing.job_positions(session, window(platform), listed.rows)
    for job in data:
        job.queue_position = positions.get(job.id)
    return CursorPage(data=data, total=total, page=page, limit=limit, next=listed.next)


def _jobs_page(
    session: SessionDep, filters: jobs.JobFilters, cursor: str | None, page: int | None, limit: int
) -> jobs.JobsPage:
    if cursor is None:
        if page is not None:
            return jobs.page_of_jobs(session, page, limit, filters)
        return jobs.jobs_after(session, limit, None, filters)
    if page is not None:
        raise InvalidRequest("give either cursor or page, not both")
    if not is_id("job", cursor):
        raise InvalidRequest(f"cursor {cursor!r} is not one this list gave (its `next`)")
    return jobs.jobs_after(session, limit, cursor, filters)


@router.get("/{job_id}")
def get_job(
    job_id: JobId,
    request: Request,
    platform: PlatformDep,
    session: SessionDep,
    viewer: ViewerDep,
    image_limit: ImageLimit = jobs.IMAGE_PAGE_DEFAULT,
) -> JobDetail:
    """The job, its progress, its reruns and its first `image_limit` images (each with its
    variation sets); `images_next` is the cursor to the rest (`GET /api/jobs/{id}/images`)."""
    view = jobs.job_view(session, job_id, viewer, image_limit)
    detail = job_detail(request, platform.storage, view)
    positions = queueing.job_positions(session, window(platform), [view.job])
    detail.queue_position = positions.get(job_id)
    return detail


@router.get("/{job_id}/images")
def get_job_images(
    job_id: JobId,
    request: Request,
    platform: PlatformDep,
    session: SessionDep,
    viewer: ViewerDep,
    status_: OutputStatus | None = Query(None, alias="status"),
    cursor: str | None = Query(None, max_length=100, description="`next` of the page before"),
    limit: Annotated[
        int, Query(ge=1, le=jobs.IMAGE_PAGE_MAX, description="most images in the answer")
    ] = jobs.IMAGE_PAGE_DEFAULT,
) -> JobImages:
    """A page of the job's images by position (of one status if asked), and the cursor to
    the next page (`next`, None on the last)."""
    job = jobs.get_job(session, job_id, viewer)
    page = jobs.page_of_images(session, job.id, cursor=cursor, limit=limit, status=status_)
    return job_images(request, platform.storage, page)


@router.delete("/{job_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_job(
    job_id: JobId, platform: PlatformDep, session: SessionDep, viewer: ViewerDep
) -> None:
    """Delete a finished job and its images (409 while it is running)."""
    await run_in_threadpool(cleanup.delete_job, session, platform.storage, job_id, viewer)


@router.post("/{job_id}/cancel")
async def cancel_job(job_id: JobId, session: SessionDep, viewer: ViewerDep) -> JobPublic:
    """Cancel a job: its unfinished images fail as "cancelled"; RunPod jobs are cancelled too."""
    await run_in_threadpool(jobs.cancel, session, job_id, viewer)
    return _job_answer(session, job_id, viewer)


@router.post("/{job_id}/retry", dependencies=SUBMISSION)
async def retry_job(
    job_id: JobId, platform: PlatformDep, session: SessionDep, viewer: ViewerDep
) -> JobPublic:
    """Queue the job's failed images again."""
    await run_in_threadpool(jobs.retry, session, platform.settings, job_id, viewer)
    return _job_answer(session, job_id, viewer)


@router.post("/{job_id}/rerun", status_code=status.HTTP_201_CREATED, dependencies=SUBMISSION)
async def rerun_job(
    job_id: JobId,
    platform: PlatformDep,
    session: SessionDep,
    viewer: ViewerDep,
    body: Annotated[RerunCreate | None, Body()] = None,
) -> RerunPublic:
    """A new job with the same prompts, references and settings, and new seeds; the body
    (optional) may give it a webhook."""
    webhook = body.webhook if body is not None else None
    job = await run_in_threadpool(reruns.rerun, session, platform.settings, job_id, viewer, webhook)
    return RerunPublic(**job_public(job).model_dump(), estimate=pricing.of_jobs([job]))


@router.get("/{job_id}/webhooks")
def list_webhook_deliveries(
    job_id: JobId,
    session: SessionDep,
    viewer: ViewerDep,
    cursor: str | None = Query(None, max_length=100, description="`next` of the page before"),
    limit: PageLimit = 100,
) -> CursorPage[WebhookDeliveryPublic]:
    """The messages sent (or being sent) to the job's webhook, oldest first: each one's
    event, status, attempts and the last answer or error."""
    job = jobs.get_job(session, job_id, viewer)
    if cursor is not None and not is_id("msg", cursor):
        raise InvalidRequest(f"cursor {cursor[:40]!r} is not one this API gave out")
    found = webhooks.deliveries(session, job.id, limit + 1, after=cursor)
    page = [delivery_public(delivery) for delivery in found[:limit]]
    more = len(found) > limit
    return CursorPage(data=page, limit=limit, next=page[-1].id if more else None)


def _job_answer(session: SessionDep, job_id: str, viewer: Viewer) -> JobPublic:
    return job_public(
        jobs.get_job(session, job_id, viewer), jobs.reruns_of(session, [job_id]).get(job_id, ())
    )
