"""Variation sets (Midjourney's V1 to V4): new images made from one succeeded image.

A variation set is one job (mode `variation`, `parent_output_id` set) in the image's group:
`count` images sent as one dispatch, like a semi-automatic set, each with the image as its
only reference and new seeds. Their prompt is the image's own (or the one given), preceded by
what the strength asks of the model (`STRENGTH_WORDING`); model, aspect ratio, size and
negative prompt are the image's.
"""

from typing import Literal

from sqlmodel import Session

from control_plane import lifecycle
from control_plane.access import Viewer
from control_plane.errors import Conflict
from control_plane.models import Job, JobMode, Output, OutputKind, OutputStatus
from control_plane.schemas import GenerationConfig, VariationCreate
from control_plane.services import references, webhooks
from control_plane.services.jobs import get_output
from control_plane.services.submissions import (
    draw_seed,
    new_output,
    resolve_params,
    write_jobs,
)
from control_plane.settings import Settings
from shared.ids import new_id

Strength = Literal["subtle", "strong"]
STRENGTH_WORDING: dict[Strength, str] = {
    "subtle": (
        "Make a subtle variation of the reference image: keep its composition, subject, "
        "colours and style; change only small details."
    ),
    "strong": (
        "Make a strong variation of the reference image: keep its subject and style, but "
        "freely change the composition, pose, framing, background and details."
    ),
}


def vary(
    session: Session,
    settings: Settings,
    output_id: str,
    request: VariationCreate,
    viewer: Viewer,
) -> Job:
    """Write and commit a variation set of the viewer's image `output_id`; returns its job.

    404 for an unknown image (or another user's), 409 for one that is not a succeeded image.
    """
    output = get_output(session, output_id, viewer)
    [job] = write_jobs(
        session,
        output.group_id,
        lambda: [
            add_variation_set(
                session,
                settings,
                output,
                request.count,
                request.strength,
                request.prompt,
                viewer=viewer,
            )
        ],
        webhooks.check(settings, request.webhook),
    )
    return job


def add_variation_set(
    session: Session,
    settings: Settings,
    output: Output,
    count: int,
    strength: Strength,
    prompt: str | None = None,
    *,
    viewer: Viewer,
    batch_id: str | None = None,
) -> Job:
    """Add (without committing) a variation set of `output` to the session: for workflows
    whose stages make variations (a consumer writes it in its own transaction)."""
    if output.kind != OutputKind.IMAGE:
        raise Conflict(f"{output.id} is a text answer, not an image; only images can be varied")
    if output.status != OutputStatus.SUCCEEDED:
        raise Conflict(
            f"image {output.id} has not succeeded (status {output.status}); only a succeeded "
            "image can be varied"
        )
    params = _params_of(output, settings)
    references.check(session, output.group_id, [[output.id]], params["model"], viewer)
    base_prompt = prompt or _base_prompt(session, output)
    seed = draw_seed(GenerationConfig())
    job = Job(
        group_id=output.group_id,
        batch_id=batch_id or new_id("bat"),
        mode=JobMode.VARIATION,
        prompt=base_prompt,
        parent_output_id=output.id,
        config={**params, "seed": seed, "count": count, "strength": strength},
    )
    sent = variation_prompt(base_prompt, strength)
    outputs = [
        new_output(job, position, sent, [output.id], seed + position, params)
        for position in range(count)
    ]
    lifecycle.add_job(session, job, outputs, chunk_size=count)
    return job


def variation_prompt(prompt: str, strength: Strength) -> str:
    """What a variation's image is asked for: the strength's wording, then the prompt."""
    return f"{STRENGTH_WORDING[strength]}\n\n{prompt}"


def _base_prompt(session: Session, output: Output) -> str:
    """The image's prompt; for an image of a variation set, the set's own prompt (without
    the wording its strength added), so variations of variations do not pile it up."""
    job = session.get(Job, output.job_id)
    if job is not None and job.mode == JobMode.VARIATION:
        return job.prompt
    return output.prompt


def _params_of(output: Output, settings: Settings) -> dict[str, str | None]:
    """The image's model, ratio, size and negative prompt, checked against the model table
    as at submit (the table may have changed since)."""
    params = output.params
    config = GenerationConfig(
        model=params.get("model") or output.model,
        aspect_ratio=params.get("aspect_ratio"),
        image_size=params.get("image_size"),
        negative_prompt=params.get("negative_prompt"),
    )
    return resolve_params(config, settings)
