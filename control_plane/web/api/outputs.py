"""Generated images on their own: an image with its links, and its variation sets."""

from fastapi import APIRouter, Request, status
from fastapi.concurrency import run_in_threadpool

from control_plane.schemas import OutputDetail, SubmitResponse, VariationCreate
from control_plane.services import jobs, pricing, variations
from control_plane.web.deps import SUBMISSION, OutputId, PlatformDep, SessionDep, ViewerDep
from control_plane.web.present import job_public, output_detail

router = APIRouter(prefix="/api/outputs", tags=["outputs"])


@router.get("/{output_id}")
def get_output(
    output_id: OutputId,
    request: Request,
    platform: PlatformDep,
    session: SessionDep,
    viewer: ViewerDep,
) -> OutputDetail:
    """An image: its job, group, status, file and the variation sets made from it."""
    output = jobs.get_output(session, output_id, viewer)
    return output_detail(request, platform.storage, output, jobs.variations_of(session, output.id))


@router.post(
    "/{output_id}/variations", status_code=status.HTTP_201_CREATED, dependencies=SUBMISSION
)
async def create_variations(
    output_id: OutputId,
    platform: PlatformDep,
    session: SessionDep,
    viewer: ViewerDep,
    body: VariationCreate,
) -> SubmitResponse:
    """A variation set of a succeeded image (409 otherwise): `count` new images from it."""
    job = await run_in_threadpool(
        variations.vary, session, platform.settings, output_id, body, viewer
    )
    return SubmitResponse(
        batch_id=job.batch_id, jobs=[job_public(job)], estimate=pricing.of_jobs([job])
    )
