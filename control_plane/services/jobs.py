"""Jobs and their images: reading them (with their links: reruns and variation sets), and
a user's cancel and retry."""

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, func, select

from control_plane import lifecycle
from control_plane.access import Viewer
from control_plane.errors import InvalidRequest
from control_plane.models import (
    ACTIVE_JOB,
    OUTPUTS,
    TERMINAL_DISPATCH,
    Dispatch,
    Job,
    Lane,
    Output,
    OutputStatus,
)
from control_plane.schemas import BatchProgress, OutputDetail
from control_plane.services.rows import fetch
from control_plane.settings import Settings
from shared.contract import BatchState, DispatchTask

IMAGE_PAGE_DEFAULT = 500  # images in one answer unless asked otherwise
IMAGE_PAGE_MAX = 1_000
_CURSOR_PREFIX = "pos:"
# What a page of images reads of each output: the columns an image's answer shows
# (`schemas.OutputDetail`), its files' keys and when it last changed, as rows rather than ORM
# objects, and without what no page shows (params, usage, two of three timestamps): reading
# and decoding the rows was most of what a page of 1,000 cost (README, Performance).
SHOWN_OUTPUT_COLUMNS = tuple(
    column
    for column in OUTPUTS.columns
    if column.name in OutputDetail.model_fields
    or column.name in ("storage_key", "thumbnail_key", "updated_at")
)
ShownOutput = sa.Row[Any]  # a row of SHOWN_OUTPUT_COLUMNS: an attribute per column


def select_shown_outputs() -> sa.Select[Any]:
    """SELECT SHOWN_OUTPUT_COLUMNS FROM outputs (to add WHERE and ORDER BY to)."""
    return sa.select(*SHOWN_OUTPUT_COLUMNS)


def get_job(session: Session, job_id: str, viewer: Viewer) -> Job:
    return fetch(session, Job, job_id, "job", viewer=viewer)


def get_output(session: Session, output_id: str, viewer: Viewer) -> Output:
    return fetch(session, Output, output_id, "image", viewer=viewer)


def outputs_of(session: Session, job_id: str) -> list[Output]:
    """The job's images, in order."""
    return list(
        session.exec(
            select(Output).where(Output.job_id == job_id).order_by(col(Output.position))
        ).all()
    )


@dataclass(frozen=True)
class ImagePage:
    """Some of a job's images in position order, the variation sets made from each (only
    images that have some are keys), and the cursor to the images after them (None at the
    end)."""

    images: Sequence[ShownOutput]
    next_cursor: str | None = None
    variations: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class JobView:
    """A job with its first page of images and its reruns."""

    job: Job
    page: ImagePage
    reruns: list[str] = field(default_factory=list)
    batch: BatchProgress | None = None  # the batch lane: its live batches at Google


def job_view(
    session: Session, job_id: str, viewer: Viewer, image_limit: int = IMAGE_PAGE_DEFAULT
) -> JobView:
    job = get_job(session, job_id, viewer)
    return JobView(
        job,
        page_of_images(session, job.id, limit=image_limit),
        reruns_of(session, [job.id]).get(job.id, []),
        batch_progress(session, job)
        if job.lane == Lane.BATCH and job.status in ACTIVE_JOB
        else None,
    )


# The stages of a batch in words, least advanced first; a job shows its least advanced.
BATCH_STAGES = ("submitting", "pending at Google", "running", "collecting")


def batch_progress(session: Session, job: Job) -> BatchProgress | None:
    """Where the job's live Gemini batches stand, with Google's counts summed (None when
    none is live). A job can end before its last batch does (a collect's progress posts end
    its images), so ended jobs show none (`job_view`)."""
    live = session.exec(
        select(Dispatch).where(
            col(Dispatch.job_id) == job.id,
            col(Dispatch.status).not_in(TERMINAL_DISPATCH),
            col(Dispatch.task).in_(
                [DispatchTask.BATCH_SUBMIT, DispatchTask.BATCH_POLL, DispatchTask.BATCH_COLLECT]
            ),
        )
    ).all()
    if not live:
        return None

    def total(name: str) -> int | None:
        counts = [getattr(d, name) for d in live if getattr(d, name) is not None]
        return sum(counts) if counts else None

    return BatchProgress(
        state=min((_stage(d) for d in live), key=BATCH_STAGES.index),
        batches=len(live),
        deadline_at=job.batch_deadline_at,
        next_poll_at=min((d.next_poll_at for d in live if d.next_poll_at), default=None),
        requests=total("batch_requests"),
        succeeded=total("batch_succeeded"),
        failed=total("batch_failed"),
        pending=total("batch_pending"),
    )


def _stage(dispatch: Dispatch) -> str:
    if dispatch.task == DispatchTask.BATCH_COLLECT:
        return "collecting"
    if dispatch.batch_name is None:
        return "submitting"
    return "running" if dispatch.batch_state == BatchState.RUNNING else "pending at Google"


def page_of_images(
    session: Session,
    job_id: str,
    *,
    cursor: str | None = None,
    limit: int = IMAGE_PAGE_DEFAULT,
    status: OutputStatus | None = None,
) -> ImagePage:
    """Up to `limit` images of the job after `cursor` (from the start without one), by
    position. The cursor is a position, so a page never repeats or skips an image whatever
    happens to the statuses in between."""
    after = position_after(cursor) if cursor else -1
    filters = [col(Output.job_id) == job_id, col(Output.position) > after]
    if status is not None:
        filters.append(col(Output.status) == status)
    rows = session.execute(
        select_shown_outputs().where(*filters).order_by(col(Output.position)).limit(limit + 1)
    ).all()
    images = rows[:limit]
    more = len(rows) > limit and images
    return ImagePage(
        images,
        image_cursor(images[-1].position) if more else None,
        variations_of_images(session, [image.id for image in images]),
    )


def cursor_before(session: Session, job_id: str, position: int, limit: int) -> str | None:
    """The cursor of the page of `limit` images that ends just before `position`; None when
    that page is the first one (it needs no cursor)."""
    earlier = session.exec(
        select(Output.position)
        .where(col(Output.job_id) == job_id, col(Output.position) < position)
        .order_by(col(Output.position).desc())
        .limit(limit)
    ).all()
    first = min(earlier, default=0)
    return image_cursor(first - 1) if first > 0 else None


def image_cursor(position: int) -> str:
    """The opaque cursor to the images after `position`."""
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{position}".encode()).decode().rstrip("=")


def position_after(cursor: str) -> int:
    """The position a cursor from `image_cursor` stands for; InvalidRequest if it is none."""
    try:
        decoded = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        decoded = ""
    number = decoded.removeprefix(_CURSOR_PREFIX)
    if not decoded.startswith(_CURSOR_PREFIX) or not number.isdigit() or len(number) > 9:
        raise InvalidRequest(
            f"cursor {cursor[:40]!r} is not one this API gave out: "
            "pass the images_next (or next) value of an earlier answer unchanged"
        )
    return int(number)


def reruns_of(session: Session, job_ids: Sequence[str]) -> dict[str, list[str]]:
    """The jobs that rerun each of `job_ids` (a page of them at most), oldest first."""
    links: dict[str, list[str]] = {}
    if job_ids:
        rows = session.exec(
            select(Job.rerun_of, Job.id)
            .where(col(Job.rerun_of).in_(list(job_ids)))
            .order_by(col(Job.id))
        ).all()
        for original, rerun in rows:
            links.setdefault(original or "", []).append(rerun)
    return links


def variations_of(session: Session, output_id: str) -> list[str]:
    """The variation sets (jobs) made from the image, oldest first."""
    return list(
        session.exec(
            select(Job.id).where(Job.parent_output_id == output_id).order_by(col(Job.id))
        ).all()
    )


def varied_since(session: Session, output_ids: Sequence[str], moment: datetime) -> set[str]:
    """Which of the images had a variation set made from them at or after `moment`."""
    if not output_ids:
        return set()
    made = select(Job.parent_output_id).where(
        col(Job.parent_output_id).in_(list(output_ids)), col(Job.created_at) >= moment
    )
    return {output_id for output_id in session.exec(made).all() if output_id}


def variations_of_images(session: Session, output_ids: Sequence[str]) -> dict[str, list[str]]:
    """The variation sets made from each of the images (a page of them: one query)."""
    if not output_ids:
        return {}
    rows = session.exec(
        select(Job.parent_output_id, Job.id)
        .where(col(Job.parent_output_id).in_(list(output_ids)))
        .order_by(col(Job.id))
    ).all()
    links: dict[str, list[str]] = {}
    for output_id, variation in rows:
        links.setdefault(output_id or "", []).append(variation)
    return links


@dataclass(frozen=True)
class JobFilters:
    """What a job list keeps: the viewer's jobs (all of them for an admin) and each filter
    matches an index led by its column (ix_jobs_status_id, ix_jobs_group_id_id,
    ix_jobs_mode_id, ix_jobs_user_id_id), so a page reads about `limit` index entries; with
    two filters together, one index is read until `limit` jobs match."""

    viewer: Viewer
    status: str | None = None
    group_id: str | None = None
    mode: str | None = None

    def clauses(self) -> list[Any]:
        wanted = (
            (self.status, col(Job.status)),
            (self.group_id, col(Job.group_id)),
            (self.mode, col(Job.mode)),
        )
        owned = self.viewer.owned(col(Job.user_id))
        return [*owned, *(column == value for value, column in wanted if value)]


@dataclass(frozen=True)
class JobsPage:
    """A page of jobs, newest first; `next` is the cursor of the page after it (None on the
    last page)."""

    rows: list[Job]
    next: str | None


def jobs_after(session: Session, limit: int, cursor: str | None, filters: JobFilters) -> JobsPage:
    """The `limit` newest jobs older than `cursor` (the last job of the page before; ids sort
    by creation time), or the first page without one: keyset pagination, whatever the depth."""
    query = select(Job).where(*filters.clauses())
    if cursor is not None:
        query = query.where(col(Job.id) < cursor)
    return _page(session, query, limit)


def newer_cursor(session: Session, limit: int, first_id: str, filters: JobFilters) -> str | None:
    """The cursor of the page of `limit` jobs just newer than job `first_id` (the first of a
    page), for a link back to it; None when that page is the first one (it needs none)."""
    newer = session.exec(
        select(Job.id)
        .where(*filters.clauses(), col(Job.id) > first_id)
        .order_by(col(Job.id))
        .limit(limit + 1)
    ).all()
    return newer[limit] if len(newer) > limit else None


def page_of_jobs(session: Session, page: int, limit: int, filters: JobFilters) -> JobsPage:
    """Page `page` (1-based) by OFFSET: kept for clients that number pages."""
    return _page(session, select(Job).where(*filters.clauses()).offset((page - 1) * limit), limit)


def count_jobs(session: Session, filters: JobFilters) -> int:
    """How many jobs match (a count over the matching index entries: only when asked)."""
    return session.exec(select(func.count()).select_from(Job).where(*filters.clauses())).one()


def _page(session: Session, query: Any, limit: int) -> JobsPage:
    rows = list(session.exec(query.order_by(col(Job.id).desc()).limit(limit + 1)).all())
    more = len(rows) > limit
    return JobsPage(rows[:limit], rows[limit - 1].id if more else None)


def cancel(session: Session, job_id: str, viewer: Viewer) -> list[str]:
    """Cancel a job and commit: its unfinished images fail as "cancelled", and its RunPod jobs
    (returned) are cancelled after the commit."""
    job_id = get_job(session, job_id, viewer).id
    runpod_job_ids = lifecycle.cancel_job(session, job_id)
    session.commit()
    return runpod_job_ids


def retry(session: Session, settings: Settings, job_id: str, viewer: Viewer) -> None:
    """Queue the job's failed images again and commit (blocked ones stay blocked)."""
    job_id = get_job(session, job_id, viewer).id
    lifecycle.retry_job(session, settings, job_id)
    session.commit()
