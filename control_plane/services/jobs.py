"""Jobs and their images: reading them, and a user's cancel and retry."""

from collections.abc import Sequence

from sqlmodel import Session, col, func, select

from control_plane import lifecycle
from control_plane.errors import NotFound
from control_plane.models import Job, JobStatus, Output
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


def page_of_jobs(
    session: Session,
    page: int,
    limit: int,
    *,
    status: JobStatus | None = None,
    group_id: str | None = None,
    mode: str | None = None,
) -> tuple[int, Sequence[Job]]:
    """The number of jobs matching the filters, and page `page` (1-based), newest first."""
    filters = [
        clause
        for wanted, clause in (
            (status, Job.status == status),
            (group_id, Job.group_id == group_id),
            (mode, Job.mode == mode),
        )
        if wanted
    ]
    total = session.exec(select(func.count()).select_from(Job).where(*filters)).one()
    rows = session.exec(
        select(Job)
        .where(*filters)
        .order_by(col(Job.id).desc())
        .offset((page - 1) * limit)
        .limit(limit)
    ).all()
    return total, rows


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
