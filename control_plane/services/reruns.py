"""Reruns (Midjourney's 🔄): a job made again, with new seeds.

The new job (`rerun_of` set) has the original's mode, prompt, set and settings, and one
image per original image with the same prompt, references and parameters (a catalog job's
picked prompts, an import's rows, a variation set's parent), at `config.seed` (a new random
base seed) plus its position. It is sent as the original was: a set as one dispatch. A
rerun is a plain job: it is no stage of the preset, character or persona the original
worked for, and a persona's stages are not rerun (its pipeline runs them).
"""

from sqlmodel import Session

from control_plane import lifecycle
from control_plane.access import Viewer
from control_plane.errors import Conflict
from control_plane.models import Job, JobMode, Output
from control_plane.schemas import GenerationConfig, WebhookRequest
from control_plane.services import references, webhooks
from control_plane.services.jobs import get_job, outputs_of
from control_plane.services.submissions import draw_seed, new_output, write_jobs
from control_plane.settings import Settings
from shared.ids import new_id

PIPELINE_MODES = (JobMode.PERSONA_DATA, JobMode.PERSONA_IMAGES)


def rerun(
    session: Session,
    settings: Settings,
    job_id: str,
    viewer: Viewer,
    webhook: WebhookRequest | None = None,
) -> Job:
    """Write and commit a rerun of the viewer's job `job_id` (telling `webhook`, if given;
    the original's is not copied); returns the new job (404 unknown or another user's, 409
    when it cannot be rerun: a persona's stage, or references deleted since)."""
    original = get_job(session, job_id, viewer)
    [job] = write_jobs(
        session,
        original.group_id,
        lambda: [add_rerun(session, settings, original, viewer)],
        webhooks.check(settings, webhook),
    )
    return job


def add_rerun(session: Session, settings: Settings, original: Job, viewer: Viewer) -> Job:
    """Add (without committing) a rerun of `original` to the session."""
    if original.mode in PIPELINE_MODES:
        raise Conflict(
            f"job {original.id} is a stage of a persona ({original.mode}); its pipeline runs "
            "its stages: create a new persona instead"
        )
    images = outputs_of(session, original.id)
    _check_references(session, original.id, images, viewer)
    seed = draw_seed(GenerationConfig())
    job = Job(
        group_id=original.group_id,
        batch_id=new_id("bat"),
        mode=original.mode,
        prompt=original.prompt,
        set_index=original.set_index,
        config={**original.config, "seed": seed},
        parent_output_id=original.parent_output_id,
        rerun_of=original.id,
    )
    copies = [_copy(job, image, seed + image.position) for image in images]
    chunk = (
        len(copies)
        if original.mode in lifecycle.SET_MODES
        else lifecycle.dispatch_chunk(settings, copies, job.config.get("lane"))
    )
    lifecycle.add_job(session, job, copies, max(chunk, 1))
    return job


def _copy(job: Job, image: Output, seed: int) -> lifecycle.OutputRow:
    """`image` asked for again in `job`: same prompt, references and parameters."""
    copy = new_output(job, image.position, image.prompt, image.reference_ids, seed, image.params)
    tags = list(image.tags) if image.tags is not None else None
    return copy | {"kind": image.kind, "prompt_id": image.prompt_id, "tags": tags}


def _check_references(session: Session, job_id: str, images: list[Output], viewer: Viewer) -> None:
    """409 naming the references of the job's images that are gone (deleted since): they
    were checked when the job was made, in its group (or across groups, for characters)."""
    gone = references.problems(
        session, None, {ref for image in images for ref in image.reference_ids}, viewer
    )
    if gone:
        reasons = [gone[image_id] for image_id in sorted(gone)]
        raise Conflict(
            f"job {job_id} cannot be rerun: {len(gone)} of its reference images can no longer "
            f"be used: {'; '.join(reasons[: references.SHOWN])}"
            + (" …" if len(reasons) > references.SHOWN else "")
        )
