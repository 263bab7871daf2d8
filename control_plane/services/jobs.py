"""Jobs and their images: reading them (with their links: reruns and variation sets), and
a user's cancel and retry."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session, col, func, select

from control_plane import lifecycle
from control_plane.errors import NotFound
from control_plane.models import Job, Output
from control_plane.settings import Settings


def get_job(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id} does not exist")
    return job


def get_output(session: Session, output_id: str) -> Output:
    output = session.get(Output, output_id)
    if output is None:
        raise NotFound(f"image {output_id} does not exist")
    return output


def outputs_of(session: Session, job_id: str) -> list[Output]:
    """The job's images, in order."""
    return list(
        session.exec(
            select(Output).where(Output.job_id == job_id).order_by(col(Output.position))
        ).all()
    )


@dataclass(frozen=True)
class JobView:
    """A job with its images and links: the reruns of the job, and per image the variation
    sets made from it (only images that have some are keys)."""

    job: Job
    images: list[Output]
    reruns: list[str] = field(default_factory=list)
    variations: dict[str, list[str]] = field(default_factory=dict)


def job_view(session: Session, job_id: str) -> JobView:
    job = get_job(session, job_id)
    return JobView(
        job,
        outputs_of(session, job.id),
        reruns_of(session, [job.id]).get(job.id, []),
        variations_in_job(session, job.id),
    )


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


def variations_in_job(session: Session, job_id: str) -> dict[str, list[str]]:
    """The variation sets made from each image of the job (one query, whatever its size)."""
    rows = session.exec(
        select(Job.parent_output_id, Job.id)
        .join(Output, col(Output.id) == col(Job.parent_output_id))
        .where(Output.job_id == job_id)
        .order_by(col(Job.id))
    ).all()
    links: dict[str, list[str]] = {}
    for output_id, variation in rows:
        links.setdefault(output_id or "", []).append(variation)
    return links


@dataclass(frozen=True)
class JobFilters:
    """What a job list keeps: each filter matches an index led by its column (ix_jobs_status_id,
    ix_jobs_group_id_id, ix_jobs_mode_id; group and status together ix_jobs_group_id_status_id),
    so a page reads `limit` index entries, never the table."""

    status: str | None = None
    group_id: str | None = None
    mode: str | None = None

    def clauses(self) -> list[Any]:
        wanted = (
            (self.status, col(Job.status)),
            (self.group_id, col(Job.group_id)),
            (self.mode, col(Job.mode)),
        )
        return [column == value for value, column in wanted if value]


@dataclass(frozen=True)
class JobsPage:
    """A page of jobs, newest first; `next` is the cursor of the page after it (None on the
    last page)."""

    rows: list[Job]
    next: str | None


def jobs_after(
    session: Session, limit: int, cursor: str | None = None, filters: JobFilters = JobFilters()
) -> JobsPage:
    """The `limit` newest jobs older than `cursor` (the last job of the page before; ids sort
    by creation time), or the first page without one: keyset pagination, whatever the depth."""
    query = select(Job).where(*filters.clauses())
    if cursor is not None:
        query = query.where(col(Job.id) < cursor)
    return _page(session, query, limit)


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


def cancel(session: Session, job_id: str) -> list[str]:
    """Cancel a job and commit: its unfinished images fail as "cancelled", and its RunPod jobs
    (returned) are cancelled after the commit."""
    runpod_job_ids = lifecycle.cancel_job(session, job_id)
    session.commit()
    return runpod_job_ids


def retry(session: Session, settings: Settings, job_id: str) -> None:
    """Queue the job's failed images again and commit (blocked ones stay blocked)."""
    lifecycle.retry_job(session, settings, job_id)
    session.commit()
