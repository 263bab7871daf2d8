"""A group's gallery (every image of every job, filtered, in keyset pages), one image with
its references, and a semi-automatic submission's sets."""

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, col, func, or_, select

from control_plane.access import Viewer
from control_plane.errors import InvalidRequest, NotFound
from control_plane.models import Job, JobMode, Output, OutputKind, OutputStatus, Upload
from control_plane.services.jobs import ShownOutput, select_shown_outputs

GALLERY_PAGE_DEFAULT = 60
GALLERY_PAGE_MAX = 500
PROMPT_SEARCH_MAX = 200  # characters of a prompt search
_CURSOR_PREFIX = "gal:"


@dataclass(frozen=True)
class GalleryFilters:
    """Which of a group's images a gallery shows: one job's, one status's, and those whose
    prompt contains `prompt` (case as the database compares it)."""

    job_id: str | None = None
    status: OutputStatus | None = None
    prompt: str | None = None


@dataclass(frozen=True)
class GalleryPage:
    """Some of a group's images, newest job first and a job's last image first, and the
    cursor to the images after them (None at the end)."""

    images: Sequence[ShownOutput]
    next_cursor: str | None


def gallery_query(group_id: str, filters: GalleryFilters, cursor: str | None, limit: int) -> Any:
    """The SELECT of a gallery page: it walks ix_outputs_group_id_job_id_position backwards
    from the cursor, so a page reads about `limit` index entries at any depth (more when a
    status or prompt filter skips some)."""
    clauses = [col(Output.group_id) == group_id, col(Output.kind) == OutputKind.IMAGE]
    if filters.job_id:
        clauses.append(col(Output.job_id) == filters.job_id)
    if filters.status:
        clauses.append(col(Output.status) == filters.status)
    if filters.prompt:
        clauses.append(col(Output.prompt).contains(filters.prompt, autoescape=True))
    if cursor is not None:
        clauses.extend(_after(cursor, filters.job_id))
    # one job's images: by position alone, so that the job's index serves the order as it is
    order: list[Any] = [col(Output.position).desc()]
    if not filters.job_id:
        order.insert(0, col(Output.job_id).desc())
    return select_shown_outputs().where(*clauses).order_by(*order).limit(limit + 1)


def _after(cursor: str, only_job: str | None) -> list[Any]:
    """The clauses keeping the images after the cursor's: within one job, by position alone
    (an equality on the job leaves the position as the index's range)."""
    job_id, position = position_of(cursor)
    if only_job:
        return [col(Output.job_id) == job_id, col(Output.position) < position]
    # the first clause bounds the index range; the second only sorts out the cursor's job
    return [
        col(Output.job_id) <= job_id,
        or_(col(Output.job_id) < job_id, col(Output.position) < position),
    ]


def page_of_gallery(
    session: Session,
    group_id: str,
    filters: GalleryFilters,
    cursor: str | None = None,
    limit: int = GALLERY_PAGE_DEFAULT,
) -> GalleryPage:
    """Up to `limit` of the group's images after `cursor` (the group's group: check that the
    viewer sees it first)."""
    rows = session.execute(gallery_query(group_id, filters, cursor, limit)).all()
    images = rows[:limit]
    more = len(rows) > limit and images
    return GalleryPage(images, gallery_cursor(images[-1]) if more else None)


def gallery_cursor(output: ShownOutput) -> str:
    """The opaque cursor to the images after `output` in a gallery."""
    text = f"{_CURSOR_PREFIX}{output.job_id}:{output.position}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def position_of(cursor: str) -> tuple[str, int]:
    """The (job id, position) a gallery cursor stands for; InvalidRequest if it is none."""
    try:
        decoded = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        decoded = ""
    job_id, _, position = decoded.removeprefix(_CURSOR_PREFIX).rpartition(":")
    if (
        not decoded.startswith(_CURSOR_PREFIX)
        or not job_id
        or not position.isdigit()
        or len(position) > 9
    ):
        raise InvalidRequest(
            f"cursor {cursor[:40]!r} is not one this gallery gave out: "
            "pass the next value of an earlier answer unchanged"
        )
    return job_id, int(position)


@dataclass(frozen=True)
class Reference:
    """An image a generated image was made from: an upload, or another generated image."""

    id: str
    kind: str  # "upload" or "output"
    label: str
    storage_key: str | None
    thumbnail_key: str | None


def references_of(session: Session, output: Output) -> list[Reference]:
    """The output's references that still exist, in the order it lists them."""
    ids = list(output.reference_ids)
    found: dict[str, Reference] = {}
    for upload in session.exec(select(Upload).where(col(Upload.id).in_(ids))).all():
        found[upload.id] = Reference(
            upload.id, "upload", upload.filename, upload.storage_key, upload.thumbnail_key
        )
    for parent in session.exec(select(Output).where(col(Output.id).in_(ids))).all():
        label = f"generated image #{parent.position}"
        found[parent.id] = Reference(
            parent.id, "output", label, parent.storage_key, parent.thumbnail_key
        )
    return [found[reference_id] for reference_id in ids if reference_id in found]


@dataclass(frozen=True)
class BatchSet:
    """One set of a semi-automatic submission: its job and its images by position."""

    job: Job
    images: list[ShownOutput]


@dataclass(frozen=True)
class BatchPage:
    """Some sets of a submission, by set, and how many sets it has in all."""

    sets: list[BatchSet]
    total: int


def batch_sets(
    session: Session, batch_id: str, viewer: Viewer, page: int, per_page: int
) -> BatchPage:
    """Page `page` (1-based) of a submission's sets with their images (NotFound when the
    viewer sees none of its jobs)."""
    owned = [col(Job.batch_id) == batch_id, *viewer.owned(col(Job.user_id))]
    total = session.exec(select(func.count()).select_from(Job).where(*owned)).one()
    if not total:
        raise NotFound(f"batch {batch_id} does not exist")
    jobs = session.exec(
        select(Job)
        .where(*owned)
        .order_by(col(Job.set_index), col(Job.id))
        .offset((page - 1) * per_page)
        .limit(per_page)
    ).all()
    images = images_of_jobs(session, [job.id for job in jobs])
    return BatchPage([BatchSet(job, images.get(job.id, [])) for job in jobs], total)


def images_of_jobs(session: Session, job_ids: Sequence[str]) -> dict[str, list[ShownOutput]]:
    """Each job's images by position (one query)."""
    rows = session.execute(
        select_shown_outputs()
        .where(col(Output.job_id).in_(list(job_ids)))
        .order_by(col(Output.job_id), col(Output.position))
    ).all()
    by_job: dict[str, list[ShownOutput]] = {}
    for output in rows:
        by_job.setdefault(output.job_id, []).append(output)
    return by_job


def is_set_batch(job: Job) -> bool:
    """Whether the job belongs to a submission of sets (a batch page shows it)."""
    return job.mode == JobMode.SEMI_AUTOMATIC
