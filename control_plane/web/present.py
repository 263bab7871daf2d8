"""Rows → public schemas, with URLs a browser can fetch."""

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import Request

from control_plane.models import (
    Character,
    DeliveryStatus,
    Job,
    Output,
    OutputStatus,
    Persona,
    Preset,
    PresetExample,
    Upload,
    WebhookDelivery,
)
from control_plane.schemas import (
    CharacterDetail,
    CharacterPublic,
    DownloadItem,
    JobDetail,
    JobImages,
    JobPublic,
    OutputDetail,
    OutputPublic,
    PackPublic,
    PersonaDetail,
    PersonaImages,
    PersonaPublic,
    PresetExamplePublic,
    PresetPublic,
    PresetUsageCounts,
    Progress,
    UploadPublic,
    WebhookDeliveryPublic,
)
from control_plane.services import analytics, personas
from control_plane.services.jobs import SHOWN_OUTPUT_COLUMNS, ImagePage, JobView, ShownOutput
from shared.storage import Storage, StorageError

log = logging.getLogger(__name__)
_ID_SLOT = "pixelfleet-id-slot"  # stands for the id while a route's URL is looked up


def file_url(
    request: Request, storage: Storage, route: str, key: str | None, **ids: str
) -> str | None:
    """A signed URL where the backend offers one, else our own file route (which redirects
    to a signed URL when signing works again)."""
    if key is None:
        return None
    try:
        signed = storage.signed_url(key)
    except StorageError as exc:  # e.g. IAM signBlob briefly unavailable: never fail the answer
        log.warning("no signed URL for %s: %s", key, exc)
        signed = None
    return signed or route_url(request, route, **ids)


def route_url(request: Request, route: str, **ids: str) -> str:
    """`request.url_for(route, **ids)` for a route with one id, with the route looked up
    once per request: a lookup costs far more than the rest of an image's answer."""
    ((name, value),) = ids.items()
    found: dict[str, str] = request.state.__dict__.setdefault("route_urls", {})
    key = f"{route}:{name}"
    if key not in found:
        found[key] = str(request.url_for(route, **{name: _ID_SLOT}))
    return found[key].replace(_ID_SLOT, value)


def upload_public(
    request: Request, storage: Storage, upload: Upload, *, duplicate: bool = False
) -> UploadPublic:
    return UploadPublic(
        **upload.model_dump(exclude={"storage_key", "thumbnail_key"}),
        duplicate=duplicate,
        url=file_url(request, storage, "upload_file", upload.storage_key, upload_id=upload.id)
        or "",
        thumbnail_url=file_url(
            request, storage, "upload_thumbnail", upload.thumbnail_key, upload_id=upload.id
        ),
    )


def job_public(job: Job, reruns: Sequence[str] = ()) -> JobPublic:
    done = job.succeeded + job.failed + job.blocked
    progress = Progress(
        total=job.total,
        succeeded=job.succeeded,
        failed=job.failed,
        blocked=job.blocked,
        pending=job.total - done,
    )
    return JobPublic(
        **job.model_dump(),
        progress=progress,
        reruns=list(reruns),
        success_rate=analytics.success_rate(job),
        first_image_s=analytics.first_image_s(job),
    )


def output_public(
    request: Request,
    storage: Storage,
    output: Output | ShownOutput,
    variations: Sequence[str] = (),
) -> OutputPublic:
    return OutputPublic.model_validate(_output_fields(request, storage, output, variations))


def output_detail(
    request: Request,
    storage: Storage,
    output: Output | ShownOutput,
    variations: Sequence[str],
) -> OutputDetail:
    return OutputDetail.model_validate(_output_fields(request, storage, output, variations))


def _output_fields(
    request: Request,
    storage: Storage,
    output: Output | ShownOutput,
    variations: Sequence[str],
) -> dict[str, Any]:
    """An image's answer as a dict to validate: its shown columns, its variation sets and
    its files' URLs."""
    if isinstance(output, Output):
        fields = {column.name: getattr(output, column.name) for column in SHOWN_OUTPUT_COLUMNS}
    else:
        fields = output._asdict()
    succeeded = fields["status"] == OutputStatus.SUCCEEDED
    fields["variations"] = list(variations)
    fields["url"] = (
        file_url(request, storage, "output_file", fields["storage_key"], output_id=output.id)
        if succeeded
        else None
    )
    fields["thumbnail_url"] = (
        file_url(request, storage, "output_thumbnail", fields["thumbnail_key"], output_id=output.id)
        if succeeded
        else None
    )
    return fields


def job_detail(request: Request, storage: Storage, view: JobView) -> JobDetail:
    shown = job_images(request, storage, view.page)
    return JobDetail(
        **job_public(view.job, view.reruns).model_dump(exclude={"batch"}),
        batch=view.batch,
        images=shown.images,
        images_next=shown.next,
    )


def job_images(request: Request, storage: Storage, page: ImagePage) -> JobImages:
    """The page's images validated at once (one call, not one per image)."""
    images = [
        _output_fields(request, storage, output, page.variations.get(output.id, ()))
        for output in page.images
    ]
    return JobImages.model_validate({"images": images, "next": page.next_cursor})


def download_item(request: Request, storage: Storage, output: Output) -> DownloadItem:
    return DownloadItem(
        **output.model_dump(),
        url=file_url(request, storage, "output_file", output.storage_key, output_id=output.id)
        or "",
        thumbnail_url=file_url(
            request, storage, "output_thumbnail", output.thumbnail_key, output_id=output.id
        ),
    )


def persona_public(persona: Persona) -> PersonaPublic:
    return PersonaPublic(
        **persona.model_dump(),
        stage=personas.stage_of(persona),
        name=personas.name_of(persona),
    )


def persona_detail(
    request: Request,
    storage: Storage,
    persona: Persona,
    base: Output | None,
    variations: list[Output],
) -> PersonaDetail:
    images = PersonaImages(
        base=output_public(request, storage, base) if base else None,
        variations=[output_public(request, storage, output) for output in variations],
    )
    return PersonaDetail(**persona_public(persona).model_dump(), images=images)


def preset_public(preset: Preset, usage: PresetUsageCounts, examples: int) -> PresetPublic:
    return PresetPublic(**preset.model_dump(), usage=usage, examples=examples)


def preset_example_public(
    request: Request, storage: Storage, example: PresetExample, output: Output
) -> PresetExamplePublic:
    shown = output_public(request, storage, output)
    return PresetExamplePublic(
        **shown.model_dump(include={"prompt", "seed", "url", "thumbnail_url", "width", "height"}),
        output_id=output.id,
        job_id=output.job_id,
        upload_id=example.upload_id,
        added_at=example.created_at,
    )


def character_public(character: Character) -> CharacterPublic:
    return CharacterPublic(**character.model_dump(), references=character.reference_ids)


def pack_public(job: Job) -> PackPublic:
    """A character's pack: its job's progress, and in words (`7 of 8 images succeeded, 1
    failed`)."""
    progress = job_public(job).progress
    others = [
        f"{count} {what}"
        for count, what in (
            (progress.failed, "failed"),
            (progress.blocked, "blocked"),
            (progress.pending, "pending"),
        )
        if count
    ]
    summary = ", ".join([f"{progress.succeeded} of {progress.total} images succeeded", *others])
    return PackPublic(**job.model_dump(), progress=progress, summary=summary)


def character_detail(character: Character, packs: list[Job]) -> CharacterDetail:
    return CharacterDetail(
        **character_public(character).model_dump(), packs=[pack_public(job) for job in packs]
    )


def delivery_public(delivery: WebhookDelivery) -> WebhookDeliveryPublic:
    pending = delivery.status == DeliveryStatus.PENDING
    return WebhookDeliveryPublic(
        **delivery.model_dump(exclude={"next_attempt_at"}),
        next_attempt_at=delivery.next_attempt_at if pending else None,
    )
