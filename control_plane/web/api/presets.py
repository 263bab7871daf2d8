from fastapi import APIRouter, Request, status
from fastapi.concurrency import run_in_threadpool
from sqlmodel import Session

from control_plane.models import Preset
from control_plane.schemas import (
    Page,
    PresetCreate,
    PresetDetail,
    PresetExamplesRequest,
    PresetExamplesResponse,
    PresetPublic,
    PresetUsageReset,
)
from control_plane.services import presets, pricing
from control_plane.web.deps import (
    SUBMISSION,
    PageLimit,
    PageNumber,
    PlatformDep,
    PresetId,
    SessionDep,
    ViewerDep,
    group_id_of,
)
from control_plane.web.present import job_public, preset_example_public, preset_public

router = APIRouter(prefix="/api/presets", tags=["presets"])


@router.post("", status_code=status.HTTP_201_CREATED)
def create_preset(
    body: PresetCreate, platform: PlatformDep, session: SessionDep, viewer: ViewerDep
) -> PresetPublic:
    """A prompt and settings whose examples are made over references picked from a pool."""
    preset = presets.create_preset(session, platform.settings, body, viewer)
    return _public(session, preset)


@router.get("")
def list_presets(
    session: SessionDep, viewer: ViewerDep, page: PageNumber = 1, limit: PageLimit = 20
) -> Page[PresetPublic]:
    """The viewer's presets, newest first."""
    total, rows = presets.page_of_presets(session, page, limit, viewer)
    data = [_public(session, preset) for preset in rows]
    return Page(data=data, total=total, page=page, limit=limit)


@router.get("/{preset_id}")
def get_preset(
    preset_id: PresetId,
    request: Request,
    platform: PlatformDep,
    session: SessionDep,
    viewer: ViewerDep,
    page: PageNumber = 1,
    limit: PageLimit = 20,
) -> PresetDetail:
    """A preset with a page of its gallery (every example made, newest first)."""
    preset = presets.get_preset(session, preset_id, viewer)
    total, rows = presets.page_of_gallery(session, preset.id, page, limit)
    gallery = [preset_example_public(request, platform.storage, *row) for row in rows]
    return PresetDetail(
        **_public(session, preset).model_dump(),
        gallery=Page(data=gallery, total=total, page=page, limit=limit),
    )


@router.delete("/{preset_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_preset(preset_id: PresetId, session: SessionDep, viewer: ViewerDep) -> None:
    """Delete a preset, its usage records and gallery; its jobs and their images stay."""
    presets.delete_preset(session, preset_id, viewer)


@router.post("/{preset_id}/examples", status_code=status.HTTP_201_CREATED, dependencies=SUBMISSION)
async def request_examples(
    preset_id: PresetId,
    body: PresetExamplesRequest,
    platform: PlatformDep,
    session: SessionDep,
    viewer: ViewerDep,
) -> PresetExamplesResponse:
    """Pick `count` unused references of the pool (balanced over `balance_by`'s values) and
    submit one job of the preset's examples over them; 409 naming what remains per value
    when the pool has too few."""
    group_id_of(body.pool_group_id)
    if body.group_id is not None:
        group_id_of(body.group_id)
    job, picks = await run_in_threadpool(
        presets.request_examples, session, platform.settings, preset_id, body, viewer
    )
    return PresetExamplesResponse(
        batch_id=job.batch_id,
        jobs=[job_public(job)],
        reference_ids=picks.reference_ids,
        split=picks.split,
        estimate=pricing.of_jobs([job]),
    )


@router.delete("/{preset_id}/usage")
def reset_usage(preset_id: PresetId, session: SessionDep, viewer: ViewerDep) -> PresetUsageReset:
    """Release the preset's references so they can be picked again; those reserved by
    examples jobs still running stay reserved until their jobs end."""
    return presets.reset_usage(session, preset_id, viewer)


def _public(session: Session, preset: Preset) -> PresetPublic:
    return preset_public(
        preset,
        presets.usage_counts(session, preset.id),
        presets.example_count(session, preset.id),
    )
